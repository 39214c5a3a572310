"""Strips outputs, execution counts and run metadata from notebooks, in place.

    python tools/strip_notebook_outputs.py notebooks/*.ipynb           # strip
    python tools/strip_notebook_outputs.py --check notebooks/*.ipynb   # exit 1 if any has outputs

Notebooks are stored without outputs so that diffs show code and prose only; the
tests (`tests/test_notebooks.py`) run them and check they are stored stripped.
"""

import argparse
import sys

import nbformat

# Cell metadata a run adds (nbclient timings, Jupyter's collapsed/scrolled state).
_RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def dirty_cells(nb):
    """Indices of code cells that carry outputs, an execution count or run metadata."""
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and (
        cell.get("outputs") or cell.get("execution_count") is not None
        or any(k in cell.metadata for k in _RUN_METADATA))]


def strip(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in _RUN_METADATA:
            cell.metadata.pop(key, None)
    nb.metadata.pop("widgets", None)
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if dirty")
    args = parser.parse_args(argv)
    dirty = 0
    for path in args.paths:
        nb = nbformat.read(path, as_version=4)
        cells = dirty_cells(nb)
        if not cells:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: outputs or execution counts in cells {cells}; "
                  f"run `python tools/strip_notebook_outputs.py {path}`")
        else:
            nbformat.write(strip(nb), path)
            print(f"{path}: stripped cells {cells}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
