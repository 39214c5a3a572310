"""Serving SavedModels with and without `tfmp.fused_matmul` (issue 14, target 4).

    python benchmarks/fused_matmul.py [--rounds 8] [--examples 384] [--json FILE]

Exports MiniLM (random head, seed 0) four times with `tfmp.export.savedmodel.save_serving`:
float32 and mixed_bfloat16 compute, each with tfmp's fused 2-D matmuls (what `tfmp export`
writes) and with Keras' own Dense/EinsumDense calls (what it wrote before), then calls the
four in one process, in alternating rounds (A B C D, then D C B A), batch 32, on the first
`--examples` airline test tweets: through the `tokens` signature (token ids padded to 64)
and through `serving_default` (raw strings, tokenized in the graph). Prints examples/s per
round and the medians' ratios, and every round as JSON (also to `--json FILE`).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common
import inference

NAMES = ("float32_keras", "float32_fused", "mixed_bfloat16_keras", "mixed_bfloat16_fused")


def export_all(root):
    import keras

    from tfmp import fused_matmul, models
    from tfmp.export.savedmodel import save_serving

    keras.utils.set_random_seed(0)
    float32 = models.load_classifier(models.default_model_dir(), num_classes=3,
                                     sequence_length=64, policy="float32")
    for policy in ("float32", "mixed_bfloat16"):
        model = float32 if policy == "float32" else models.rebuild(float32, policy)
        for fused in (True, False):
            fused_matmul.use_fused_matmuls(model, on=fused)
            save_serving(model, ("negative", "neutral", "positive"),
                         os.path.join(root, f"{policy}_{'fused' if fused else 'keras'}", "1"))


def _rounds(calls, rounds, examples, log):
    import numpy as np

    for call in calls.values():
        call()
    per_round = {n: [] for n in calls}
    for r in range(rounds):
        for name in (NAMES if r % 2 == 0 else NAMES[::-1]):
            start = time.perf_counter()
            calls[name]()
            per_round[name].append(examples / (time.perf_counter() - start))
    medians = {n: float(np.median(v)) for n, v in per_round.items()}
    for name in NAMES:
        log(f"  {name:22s} {medians[name]:6.1f} ex/s  {[round(v) for v in per_round[name]]}")
    ratios = {
        "bf16 / float32, fused": medians["mixed_bfloat16_fused"] / medians["float32_fused"],
        "bf16 / float32, keras": medians["mixed_bfloat16_keras"] / medians["float32_keras"],
        "fused / keras, float32": medians["float32_fused"] / medians["float32_keras"],
        "fused / keras, bf16": medians["mixed_bfloat16_fused"] / medians["mixed_bfloat16_keras"],
    }
    for name, value in ratios.items():
        log(f"  {name}: {value:.2f}x")
    return {"examples_per_second": per_round, "medians": medians, "ratios": ratios}


def measure(rounds=8, examples=384, log=print):
    import tensorflow as tf

    from tfmp import data, models
    from tfmp.export.savedmodel import SERVING_SIGNATURE, TOKENS_SIGNATURE

    split = data.split_examples(*_airline(data), seed=0).test  # checked before exporting
    if examples > len(split.texts):
        raise SystemExit(f"--examples {examples}: the airline test split has "
                         f"{len(split.texts)} tweets; pass --examples {len(split.texts)} "
                         "or fewer.")
    with tempfile.TemporaryDirectory() as root:
        export_all(root)
        loaded = {n: tf.saved_model.load(os.path.join(root, n, "1")) for n in NAMES}
        tokens = inference.tokens(models.default_model_dir(), examples)
        token_batches = [{k: tf.constant(v[i:i + 32]) for k, v in tokens.items()}
                         for i in range(0, examples, 32)]
        text_batches = [tf.constant(split.texts[i:i + 32]) for i in range(0, examples, 32)]

        def by_tokens(name):
            serve = loaded[name].signatures[TOKENS_SIGNATURE]
            return lambda: [serve(**b)["probabilities"].numpy() for b in token_batches]

        def by_text(name):
            serve = loaded[name].signatures[SERVING_SIGNATURE]
            return lambda: [serve(text=b)["probabilities"].numpy() for b in text_batches]

        log("token ids, batch 32:")
        result = {"tokens": _rounds({n: by_tokens(n) for n in NAMES}, rounds, examples, log)}
        log("raw strings, batch 32:")
        result["texts"] = _rounds({n: by_text(n) for n in NAMES}, rounds, examples, log)
    return result


def _airline(data):
    examples = data.load_examples("airline")
    labels = data.LabelMap.from_labels(examples.labels)
    return examples.texts, labels.ids(examples.labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--examples", type=int, default=384)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: need at least 1 round")
    if args.examples < 1:
        parser.error(f"--examples {args.examples}: need at least 1 test tweet")
    result = {"machine": common.machine(), "rounds": args.rounds, "examples": args.examples,
              **measure(args.rounds, args.examples)}
    common.print_result(result, args.json)


if __name__ == "__main__":
    main()
