"""`tfmp bench`: runs the suite in the repository's `benchmarks/` on this machine.

    tfmp bench            # the full measurement (about 12 minutes on 2 cores)
    tfmp bench --quick    # smoke run: a few steps, a subset of configurations
    tfmp bench --help     # the suite's own flags

The measurement code lives in `benchmarks/` (not part of the installed package: it
imports PyTorch and transformers' PyTorch models, which tfmp itself never needs). It
is loaded only when `tfmp bench` runs, never while another command parses its flags,
so no other command executes it or sees its modules. Install the peer with
`pip install -e '.[bench]'` (torch==2.13.0).
"""

import argparse
import importlib.util
import os

from tfmp.errors import UserError

BENCHMARKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "benchmarks")
DESCRIPTION = ("Benchmarks tfmp on this machine; writes benchmarks/results/<host>-<date>"
               ".json and .md. Comparisons alternate in one run; ratios are medians.")


def load_runner():
    """benchmarks/run.py as a module (it puts benchmarks/ on sys.path for its siblings)."""
    path = os.path.join(BENCHMARKS_DIR, "run.py")
    if not os.path.isfile(path):
        raise UserError(
            f"'{path}' not found: `tfmp bench` runs the benchmarks/ folder of a source "
            "checkout. Install tfmp from the repository with `pip install -e .` and run it there.")
    spec = importlib.util.spec_from_file_location("tfmp_benchmarks_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(argv):
    """(runner, parsed flags) of `tfmp bench ARGV`; --help prints the suite's flags."""
    runner = load_runner()
    parser = argparse.ArgumentParser(prog="tfmp bench", description=DESCRIPTION)
    runner.add_arguments(parser)
    return runner, parser.parse_args(argv)


def main(argv):
    """Runs `tfmp bench ARGV`; returns the exit status."""
    runner, args = parse(argv)
    try:
        runner.run(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    return 0
