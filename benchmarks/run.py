"""The whole benchmark suite: `python benchmarks/run.py [--quick]` or `tfmp bench`.

Writes `benchmarks/results/<host>-<YYYY-MM-DD>.json` (every round of every measurement)
and `.md` (the tables the README links to). `--quick` is a smoke run (2 rounds of 2
steps, a subset of configurations, no subprocess parts) written as `...-quick.*`.
"""

import datetime
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common
import report

PARTS = ("pipeline", "training", "peer", "onednn", "inference", "memory", "endtoend",
         "accuracy", "grouping")
# "accuracy" (three short fine-tuning runs, ~5 min) only when asked for with --parts, and
# "memory" (8 fresh processes at 512 tokens, twice, then side by side: ~40 min on 2 cores).
DEFAULT_PARTS = tuple(p for p in PARTS if p not in ("accuracy", "grouping", "memory"))


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 2 steps, fewer configurations")
    parser.add_argument("--model", default=None,
                        help="BERT checkpoint dir (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--export-dir", default="saved_models/demo",
                        help="a `tfmp export` directory whose SavedModel/TFLite files to time")
    parser.add_argument("--out-dir", default=os.path.join(HERE, "results"),
                        help="where the .json and .md go (default: benchmarks/results)")
    parser.add_argument("--parts", default=None,
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all but "
                             "accuracy; --quick: pipeline,training)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="alternating rounds per comparison (default 3; --quick 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per configuration per round (default 6; --quick 2)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated training configurations to run (default: all)")
    parser.add_argument("--torch-threads", type=int, default=2,
                        help="torch.set_num_threads for the PyTorch peer")
    return parser


def _versions():
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tensorflow", "keras", "keras-hub", "tensorflow-text", "transformers", "torch",
                "tokenizers", "ai-edge-litert"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run(args, log=print):
    """Runs the selected parts; returns (results dict, json path, markdown path)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmp import models

    quick = args.quick
    parts = args.parts.split(",") if args.parts else (
        ["pipeline", "training"] if quick else list(DEFAULT_PARTS))
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}.")
    repeats = args.repeats or (2 if quick else 3)
    steps = args.steps or (2 if quick else 6)
    model_dir = args.model or models.default_model_dir()
    models.check_checkpoint_dir(model_dir)
    if "torch" not in sys.modules:
        try:
            import torch  # noqa: F401  (imported before TensorFlow touches its threads)
        except ImportError:
            log("torch is not installed: the PyTorch peer is skipped "
                "(pip install -e '.[bench]' installs torch==2.13.0).")
    started = time.time()
    results = {
        "command": " ".join(["tfmp bench"] + sys.argv[2:] if sys.argv[1:2] == ["bench"]
                            else ["python benchmarks/run.py"] + sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": common.machine(),
        "versions": _versions(),
        "model_dir": model_dir,
        "quick": quick,
        "env": {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS",
                                               "TFMP_AUTO_PROBE")},
    }
    if "pipeline" in parts:
        log("input pipeline: tokenization, alternating in-graph / HF tokenizers")
        import pipeline
        from training import _training_split

        texts, _ = _training_split(1024 if quick else 4096)
        results["pipeline"] = pipeline.measure(model_dir, texts, repeats=repeats, log=log)
    if "training" in parts:
        log("training throughput, alternating configurations")
        import training

        results["training"] = training.measure(
            model_dir, quick=quick, repeats=repeats, steps=steps,
            torch_threads=args.torch_threads,
            only=args.configs.split(",") if args.configs else None, log=log)
    if "peer" in parts:
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            log("tfmp / PyTorch with each engine alone in its process, alternating")
            import training

            results["peer"] = training.solo_ratios(model_dir, rounds=min(repeats, 2),
                                                   steps=steps, log=log)
    if "onednn" in parts:
        log("oneDNN on/off (float32, fixed-64), alternating subprocesses")
        import training

        results["onednn"] = training.onednn_ratio(model_dir, rounds=1 if repeats < 4 else 2,
                                                  steps=steps, log=log)
    if "memory" in parts:
        log("peak training memory per policy and --remat, each in a fresh process")
        import memory

        results["train_memory"] = memory.measure(
            model_dir, quick=quick, rounds=1 if quick else 2, steps=steps if quick else 3,
            seq_len=128 if quick else memory.SEQ_LEN, log=log)
    if "inference" in parts or "memory" in parts:
        import inference

        if not os.path.isdir(args.export_dir):
            log(f"no export at '{args.export_dir}': inference skipped (make one with "
                "`tfmp export RUN_DIR`, or pass --export-dir)")
        else:
            if "inference" in parts:
                log("inference, alternating engines")
                results["inference"] = inference.measure(args.export_dir, model_dir,
                                                         repeats=repeats, log=log)
            if "memory" in parts or not args.parts:  # the default run keeps this one
                log("peak memory, one subprocess per engine")
                results.setdefault("inference", {})["peak_rss_mb"] = inference.peak_memory(
                    args.export_dir, model_dir, log=log)
    if "endtoend" in parts:
        import endtoend

        missing = endtoend.missing_peer()
        if missing:
            log(f"{' and '.join(missing)} not installed: the end-to-end comparison with the "
                "Hugging Face Trainer is skipped (`make setup`, or pip install -e '.[bench]').")
        else:
            log("end to end: tfmp train against the Hugging Face Trainer, alternating processes")
            results["endtoend"] = endtoend.measure(
                None if model_dir == models.default_model_dir() else model_dir,
                seeds=(0,) if quick else (0, 1), rounds=1,
                examples=256 if quick else 3000, epochs=1 if quick else 2, log=log)
    if "accuracy" in parts:
        log("accuracy: one epoch on 3,000 tweets per input pipeline")
        import accuracy

        results["accuracy"] = accuracy.measure(model_dir, examples=256 if quick else 3000,
                                               log=log)
    if "grouping" in parts:
        log("length grouping vs accuracy: tfmp train runs, paired by seed")
        import grouping

        results["grouping"] = grouping.measure(
            None if model_dir == models.default_model_dir() else model_dir,
            seeds=(0,) if quick else (0, 1, 2), examples=256 if quick else 3000,
            epochs=1 if quick else 2, log=log)
    results["wall_seconds"] = time.time() - started
    results["targets"] = report.targets(results)

    os.makedirs(args.out_dir, exist_ok=True)
    stem = f"{results['machine']['host']}-{results['date']}" + ("-quick" if quick else "")
    json_path = os.path.join(args.out_dir, stem + ".json")
    md_path = os.path.join(args.out_dir, stem + ".md")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=str)
        f.write("\n")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(report.markdown(results))
    log(f"wrote {json_path} and {md_path} ({results['wall_seconds']:.0f} s)")
    return results, json_path, md_path


if __name__ == "__main__":
    import argparse

    run(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args())
