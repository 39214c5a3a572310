"""Training and SavedModel inference examples/s of a teacher run and its students, paired.

    python -m benchmarks.compression runs/full runs/half runs/half-ffn50 \
        --exports saved_models --rounds 3 --json benchmarks/results/compression.json

    python -m benchmarks.compression --accuracy runs/L_s1 runs/L_s2 runs/D_s1 runs/D_s2

With --accuracy nothing is timed: each run's test accuracy, macro-F1 and last-epoch
validation accuracy, then the mean and sample standard deviation of each condition
(runs named CONDITION_sSEED, e.g. one student trained with --seed 1, 2, 3).

The first run is the reference. Training: each run's model (its `model.keras`, under
the policy it was trained with) is compiled with tfmp's optimizer and trained
`--steps` steps on the same batches of 32 raw training tweets, after one untimed
pass over them (each batch width traced and compiled). Inference: each run's exported float32 SavedModel (`serving/1`,
raw strings in) answers the same `--examples` test tweets in batches of 32, after one
untimed pass. Rounds alternate the runs, so load from other jobs falls on all alike;
a ratio is the median of the per-round ratios to the reference.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

import common  # benchmarks/common.py


def _config(run_dir):
    from tfmp.config import TrainConfig

    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        return TrainConfig.from_json(json.load(f)["config"])


def _trainer(run_dir, texts, label_ids, steps):
    """A function that trains `steps` steps of the run's model and returns examples/s."""
    from tfmp import data, models, precision
    from tfmp.train import compile_classifier

    config = _config(run_dir)
    model = models.load_model(run_dir)
    policy = precision.resolve(model.backbone.dtype_policy.name)
    compile_classifier(model, policy, total_steps=10_000, config=config)
    split = data.Split(list(texts), label_ids)
    batches = data.make_dataset(split, None, 32).take(steps).cache()
    # One untimed pass over the very batches: every batch width traced and compiled.
    model.fit(batches, epochs=1, verbose=0)

    def run():
        start = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0)
        return steps * 32 / (time.perf_counter() - start)

    return run


def _server(export_dir, texts):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  the tokenizer ops of the SavedModel

    serve = tf.saved_model.load(os.path.join(export_dir, "serving", "1")).signatures[
        "serving_default"]
    batches = [tf.constant(list(texts[i:i + 32])) for i in range(0, len(texts), 32)]
    for batch in batches:
        serve(text=batch)

    def run():
        start = time.perf_counter()
        for batch in batches:
            serve(text=batch)
        return len(texts) / (time.perf_counter() - start)

    return run


def _paired(functions, rounds):
    """{name: [examples/s per round]} with the functions alternated in each round."""
    out = {name: [] for name in functions}
    for r in range(rounds):
        names = list(functions) if r % 2 == 0 else list(reversed(list(functions)))
        for name in names:
            out[name].append(functions[name]())
    return out


def _summary(measured, reference):
    rows = {}
    for name, values in measured.items():
        ratios = [a / b for a, b in zip(values, measured[reference])]
        rows[name] = {"median_examples_per_second": float(np.median(values)),
                      "per_round": values, "ratio_to_reference": float(np.median(ratios))}
    return rows


def _accuracy(runs):
    """{"runs": {name: scores}, "conditions": {condition: mean and sd of each score}}."""
    import re

    scores, groups = {}, {}
    for run_dir in runs:
        name = os.path.basename(os.path.normpath(run_dir))
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as f:
            history = json.load(f)
        scores[name] = {"test_accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                        "val_accuracy": history["val_accuracy"][-1]}
        groups.setdefault(re.sub(r"_s\d+$", "", name), []).append(scores[name])
    conditions = {
        group: {key: {"mean": float(np.mean([r[key] for r in rows])),
                      "sd": float(np.std([r[key] for r in rows], ddof=1)) if len(rows) > 1
                      else None, "n": len(rows)} for key in rows[0]}
        for group, rows in groups.items()}
    return {"runs": scores, "conditions": conditions}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories; the first is the reference")
    parser.add_argument("--exports", default="saved_models",
                        help="directory holding each run's export under the run's name")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--accuracy", action="store_true",
                        help="no timing: the runs' scores and each condition's mean and sd")
    args = parser.parse_args(argv)
    if args.accuracy:
        common.print_result(_accuracy(args.runs), args.json)
        return 0
    from tfmp import data

    config = _config(args.runs[0])
    _, _, splits = data.prepare_data(config)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(splits.train), size=args.steps * 32, replace=False)
    train_texts = [splits.train.texts[i] for i in pick]
    train_labels = splits.train.label_ids[pick]
    test_texts = splits.test.texts[:args.examples]
    names = [os.path.basename(os.path.normpath(r)) for r in args.runs]
    trainers = {n: _trainer(r, train_texts, train_labels, args.steps)
                for n, r in zip(names, args.runs)}
    training = _summary(_paired(trainers, args.rounds), names[0])
    servers = {n: _server(os.path.join(args.exports, n), test_texts) for n in names
               if os.path.isdir(os.path.join(args.exports, n, "serving", "1"))}
    inference = _summary(_paired(servers, args.rounds), names[0]) if servers else {}
    result = {"training": training, "inference": inference, "rounds": args.rounds,
              "steps": args.steps, "examples": len(test_texts),
              "load_average": os.getloadavg()}
    common.print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
