"""`tfmp bench`: runs the suite in the repository's `benchmarks/` on this machine.

    tfmp bench            # the full measurement (about 12 minutes on 2 cores)
    tfmp bench --quick    # smoke run: a few steps, a subset of configurations

The measurement code lives in `benchmarks/` (not part of the installed package: it
imports PyTorch and transformers' PyTorch models, which tfmp itself never needs); this
module finds it beside the package and hands it the parsed flags. Install the peer with
`pip install -e '.[bench]'` (torch==2.13.0).
"""

import importlib.util
import os
import sys

from tfmp.errors import UserError

BENCHMARKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "benchmarks")


def _load_runner():
    path = os.path.join(BENCHMARKS_DIR, "run.py")
    if not os.path.isfile(path):
        raise UserError(
            f"'{path}' not found: `tfmp bench` runs the benchmarks/ folder of a source "
            "checkout. Install tfmp from the repository with `pip install -e .` and run it there.")
    if BENCHMARKS_DIR not in sys.path:
        sys.path.insert(0, BENCHMARKS_DIR)
    spec = importlib.util.spec_from_file_location("tfmp_benchmarks_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_bench(args):
    runner = _load_runner()
    try:
        runner.run(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    return 0


def add_cli(subparsers):
    parser = subparsers.add_parser(
        "bench", help="measure training, inference and input throughput on this machine",
        description="Benchmarks tfmp on this machine; writes benchmarks/results/<host>-<date>"
                    ".json and .md. Comparisons alternate in one run; ratios are medians.")
    if os.path.isfile(os.path.join(BENCHMARKS_DIR, "run.py")):
        _load_runner().add_arguments(parser)
    parser.set_defaults(func=_run_bench)
    return parser
