"""End to end: a whole `tfmp train` against a whole Hugging Face Trainer run on the same job.

The job is the README's demo: 3,000 airline tweets (tfmp's own split, so both engines see
the same training, validation and test tweets), 2 epochs, batch 32, maximum length 64,
validation each epoch, all-MiniLM-L6-v2. Each run is its own process, one at a time, and
the runs alternate (tfmp float32, HF fp32, tfmp best mixed, HF bf16; the next round in
reverse), so drift in the machine's load hits both engines alike. Per round the ratio is
HF `train_runtime` / tfmp `train_seconds` (both: the training loop with its per-epoch
validation, without loading the model or the test evaluation); reported is the median
over rounds and seeds, next to each engine's test accuracy and CPU use (user + system CPU
seconds of the process over its wall time: 200% is both cores busy).

tfmp runs with its defaults (what a user gets), which include what the Trainer is told not
to do here (`save_strategy="no"`): one resumable checkpoint per epoch.

Run alone: `python benchmarks/endtoend.py --seeds 0,1 --rounds 1` (`tfmp bench --parts
endtoend`); each round of four runs takes about 5 minutes on a 2-core CPU.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
JOBS = (("tfmp", "float32"), ("hf_trainer", "fp32"),
        ("tfmp", "mixed_bfloat16"), ("hf_trainer", "bf16"))
PAIRS = {"float32": ("float32", "fp32"), "best mixed": ("mixed_bfloat16", "bf16")}


def missing_peer():
    """The packages the Trainer side needs that are not installed (torch, accelerate)."""
    import importlib.util

    return [m for m in ("torch", "accelerate") if importlib.util.find_spec(m) is None]


def write_split(path, seed, examples):
    """tfmp's split of the airline tweets for `seed`, as JSON the HF job reads."""
    from tfmp.config import TrainConfig
    from tfmp.data import prepare_data

    _, label_map, splits = prepare_data(
        TrainConfig(data="airline", max_train_examples=examples, seed=seed))
    out = {"num_classes": label_map.num_classes, "labels": list(label_map.names)}
    for part in ("train", "validation", "test"):
        s = getattr(splits, part)
        out[part] = {"texts": list(s.texts), "labels": [int(i) for i in s.label_ids]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f)


def _child(command, env=None):
    """Runs `command`; returns (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run_job(engine, precision, seed, split, model_dir, tmp, examples, epochs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if engine == "tfmp":
        out = os.path.join(tmp, f"tfmp-{precision}-{seed}")
        command = [sys.executable, "-m", "tfmp", "train", "--data", "airline",
                   "--max-train-examples", str(examples), "--epochs", str(epochs),
                   "--policy", precision, "--seed", str(seed), "--out", out, "--overwrite"]
        if model_dir:
            command += ["--model", model_dir]
        wall, cpu = _child(command, env)
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
            m = json.load(f)
        result = {"seconds": m["train_seconds"], "accuracy": m["accuracy"],
                  "macro_f1": m["macro_f1"], "timings": m.get("timings")}
    else:
        from tfmp import models

        path = os.path.join(tmp, f"hf-{precision}-{seed}.json")
        command = [sys.executable, os.path.join(HERE, "hf_trainer_job.py"), split,
                   model_dir or models.default_model_dir(), path, "--precision", precision,
                   "--seed", str(seed), "--epochs", str(epochs)]
        wall, cpu = _child(command, env)
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
        result = {"seconds": m["train_runtime"], "accuracy": m["accuracy"],
                  "macro_f1": m["macro_f1"]}
    result.update(engine=engine, precision=precision, seed=seed, process_seconds=wall,
                  cpu_percent=100 * cpu / wall)
    return result


def _print_now(*args):
    print(*args, flush=True)  # each run takes a minute or two: say so as it ends


def measure(model_dir=None, seeds=(0,), rounds=1, examples=3000, epochs=2, log=_print_now):
    """Runs every job `rounds` times per seed, alternating; returns the results dict."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            split = os.path.join(tmp, f"split-{seed}.json")
            write_split(split, seed, examples)
            for r in range(rounds):
                order = JOBS if (seed + r) % 2 == 0 else JOBS[::-1]
                for engine, precision in order:
                    res = run_job(engine, precision, seed, split, model_dir, tmp, examples,
                                  epochs)
                    res["round"] = r
                    runs.append(res)
                    log(f"  seed {seed} round {r} {engine} {precision}: {res['seconds']:.1f} s "
                        f"training, accuracy {res['accuracy']:.4f}, "
                        f"CPU {res['cpu_percent']:.0f}%")
    return {"settings": {"seeds": list(seeds), "rounds": rounds, "examples": examples,
                         "epochs": epochs, "batch_size": 32, "seq_len": 64},
            "runs": runs, "pairs": summarise(runs)}


def summarise(runs):
    """Per pair of jobs: the median speed ratio (HF seconds / tfmp seconds) and accuracies."""
    out = {}
    for name, (tf_precision, hf_precision) in PAIRS.items():
        def pick(engine, precision):
            return {(r["seed"], r["round"]): r for r in runs
                    if r["engine"] == engine and r["precision"] == precision}

        tfmp, hf = pick("tfmp", tf_precision), pick("hf_trainer", hf_precision)
        keys = sorted(set(tfmp) & set(hf))
        if not keys:
            continue
        ratios = [hf[k]["seconds"] / tfmp[k]["seconds"] for k in keys]
        out[name] = {
            "tfmp_policy": tf_precision, "hf_precision": hf_precision,
            "speed_ratio_median": statistics.median(ratios), "speed_ratios": ratios,
            "tfmp_seconds": [tfmp[k]["seconds"] for k in keys],
            "hf_seconds": [hf[k]["seconds"] for k in keys],
            "tfmp_accuracy": [tfmp[k]["accuracy"] for k in keys],
            "hf_accuracy": [hf[k]["accuracy"] for k in keys],
            "tfmp_cpu_percent": [tfmp[k]["cpu_percent"] for k in keys],
            "hf_cpu_percent": [hf[k]["cpu_percent"] for k in keys],
        }
    return out


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    from grouping import int_list

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--seeds", type=int_list, default=[0, 1])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the results JSON here")
    a = parser.parse_args()
    missing = missing_peer()
    if missing:  # before the first (minutes-long) tfmp run, not a traceback after it
        sys.exit(f"{' and '.join(missing)} not installed: the Hugging Face Trainer side needs "
                 "them (`make setup`, or pip install -e '.[bench]').")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = measure(a.model, a.seeds, a.rounds, a.examples, a.epochs)
    text = json.dumps(results, indent=1)
    if a.out:
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(json.dumps(results["pairs"], indent=1))
