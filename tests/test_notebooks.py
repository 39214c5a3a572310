"""Runs every notebook in notebooks/ with a real Jupyter kernel, at the small size.

Each notebook reads TFMP_NOTEBOOK_SIZE ("small" here, "full" by default) and
TFMP_NOTEBOOK_OUT (where it writes runs and exports) in its `parameters` cell.
Each notebook also reads TFMP_NOTEBOOK_MODEL and fine-tunes a tiny random BERT here
instead of the bundled MiniLM: what the test checks is that every cell runs and draws,
not what MiniLM scores (the real MiniLM is loaded, trained and exported by test_export
and test_tokenizer_parity). Its depth is the least each notebook needs, since tracing
and exporting cost grows with the layers: the session's 2-layer BERT, and 4 layers for
compression (whose "drop 3 layers" must keep one). The kernel is ipykernel's "python3"
from this interpreter's environment; the test checks that the kernel really runs this
environment's Python.
"""

import os
import pathlib
import signal
import sys

import pytest
from conftest import write_tiny_checkpoint

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tools"))
from strip_notebook_outputs import dirty_cells  # noqa: E402

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600


def _read(name):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def test_the_three_notebooks_exist():
    assert {"quickstart.ipynb", "precision_tradeoffs.ipynb", "custom_data.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert dirty_cells(nb) == [], (
        f"{name} is stored with outputs; run `python tools/strip_notebook_outputs.py "
        f"notebooks/{name}`")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_a_size_parameter(name):
    tagged = [c for c in _read(name).cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "TFMP_NOTEBOOK_SIZE" in tagged[0].source


def _outputs_text(cell):
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.extend(str(v) for v in output.get("data", {}).values())
    return "".join(parts)


def _stop_tensorboards(root):
    """Stops the TensorBoard servers the notebook started (their logdir is under `root`)."""
    from tensorboard import manager

    for info in manager.get_all():
        if os.path.abspath(info.logdir).startswith(str(root)):
            try:
                os.kill(info.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# Depth of the tiny BERT where a notebook needs more than the session's 2 layers: the
# compression notebook drops 3 layers and must keep one.
DEEPER = {"compression.ipynb": 4}


@pytest.fixture
def notebook_model(name, tiny_bert_dir, tmp_path_factory):
    """TFMP_NOTEBOOK_MODEL for the notebook `name`."""
    if name not in DEEPER:
        return tiny_bert_dir
    return write_tiny_checkpoint(tmp_path_factory.mktemp("notebook_model"),
                                 num_layers=DEEPER[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_small_size(name, tmp_path, monkeypatch, notebook_model):
    monkeypatch.setenv("TFMP_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("TFMP_NOTEBOOK_MODEL", notebook_model)
    monkeypatch.setenv("TFMP_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # The `tensorboard` and `tfmp` commands the notebooks start are this environment's.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    nb = _read(name)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    finally:
        _stop_tensorboards(tmp_path)
    assert _outputs_text(nb.cells[0]).strip() == sys.prefix, "kernel runs another Python"
    for cell in nb.cells:
        if "%tensorboard" in cell.source:
            shown = _outputs_text(cell)
            assert "tensorboard-frame" in shown and "ERROR" not in shown, shown
