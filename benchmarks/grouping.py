"""Length grouping vs accuracy: real `tfmp train` runs, several seeds per batching.

Each variant is the same run (airline tweets, --max-train-examples, --epochs, --policy)
with random batches (tfmp's default: each batch trimmed to its longest tweet) or with
`--length-grouping --length-pool P` for each P. Every seed changes the split, the
initialisation of the head, the batch order and dropout alike for all variants, so
the comparison is paired: the per-seed accuracy difference is what is reported, with
its mean and standard deviation, next to the training examples/s ratio and the mean
padded width of the batches.

Run alone: `python benchmarks/grouping.py --seeds 0,1,2 --pools 8,50`
(`tfmp bench --parts grouping`). Each run takes 1-2 minutes on a 2-core CPU.
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def int_list(text, minimum=0):
    """`--seeds` / `--pools`: comma-separated integers >= `minimum`, or a usage error."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = None
    if not values or min(values) < minimum:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= {minimum} (e.g. 8,50), got {text!r}")
    return values


def mean_width(lengths, batch_size, seed, epochs, pool):
    """Mean padded width of the training batches tfmp builds (pool None: random)."""
    import numpy as np

    from tfmp import data

    widths = []
    for epoch in range(epochs):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])  # as data.epoch_dataset
        order = (rng.permutation(len(lengths)) if pool is None
                 else data.length_grouped_order(lengths, batch_size, rng, pool))
        widths += [int(lengths[order[i:i + batch_size]].max())
                   for i in range(0, len(order), batch_size)]
    return float(np.mean(widths))


def measure(model_dir=None, seeds=(0, 1, 2), pools=(8, 50), examples=3000, epochs=2,
            policy="mixed_bfloat16", log=print):
    import numpy as np

    from tfmp import models
    from tfmp.config import TrainConfig
    from tfmp.data import prepare_data
    from tfmp.train import train

    variants = [("random", None)] + [(f"pool{p}", p) for p in pools]
    runs = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            base = TrainConfig(data="airline", model=model_dir, policy=policy, epochs=epochs,
                               max_train_examples=examples, seed=seed, checkpoint_every=0)
            _, _, splits = prepare_data(base)
            preprocessor = models.load_preprocessor(model_dir or models.default_model_dir(),
                                                    base.seq_len)
            from tfmp import data

            lengths = np.minimum(data.token_lengths(splits.train.texts, preprocessor),
                                 base.seq_len)
            order = variants if seed % 2 == 0 else variants[::-1]  # alternate: drift cancels
            for name, pool in order:
                config = dataclasses.replace(
                    base, out=os.path.join(tmp, name), overwrite=True,
                    length_grouping=pool is not None, length_pool=pool or base.length_pool)
                result = train(config, verbose=0)
                m = result.metrics
                runs[name].append({
                    "seed": seed, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                    "examples_per_second": m["train_examples_per_second"],
                    "mean_width": mean_width(lengths, base.batch_size, seed, epochs, pool)})
                log(f"  seed {seed} {name}: accuracy {m['accuracy']:.4f}, "
                    f"{m['train_examples_per_second']:.1f} ex/s, "
                    f"width {runs[name][-1]['mean_width']:.1f}")
    out = {"settings": dict(seeds=list(seeds), examples=examples, epochs=epochs,
                            policy=policy), "variants": {}}
    for name, _ in variants:
        rs = runs[name]
        acc = [r["accuracy"] for r in rs]
        diff = [r["accuracy"] - b["accuracy"] for r, b in zip(rs, runs["random"])]
        speed = [r["examples_per_second"] / b["examples_per_second"]
                 for r, b in zip(rs, runs["random"])]
        out["variants"][name] = {
            "runs": rs,
            "accuracy_mean": statistics.mean(acc),
            "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else None,
            "accuracy_diff_mean": statistics.mean(diff),
            "accuracy_diff_sd": statistics.stdev(diff) if len(diff) > 1 else None,
            "speed_ratio_median": statistics.median(speed),
            "mean_width": statistics.mean(r["mean_width"] for r in rs),
        }
    return out


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2])
    parser.add_argument("--pools", type=lambda t: int_list(t, minimum=1), default=[8, 50],
                        help="batches per length-sorted pool, one variant each")
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--policy", default="mixed_bfloat16")
    a = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure(a.model, a.seeds, a.pools, a.examples, a.epochs, a.policy),
                     indent=1))
