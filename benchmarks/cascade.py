"""The confidence cascade side by side with float32 (issue 17, item 5).

    python benchmarks/cascade.py saved_models/demo [--rounds 4]

In one process, alternating A B C D then D C B A each round: the test split at batch
32 through `tflite_fp32`, `tflite_int8`, `cascade_int8_fp32` and `savedmodel_fp32`
(tokenization included, as `tfmp predict` runs them). Prints the median examples/s of
each, the cascade's median ratio against the float32 ones, its agreement with float32
and the share of texts that stayed on int8.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np

VARIANTS = ("tflite_fp32", "tflite_int8", "cascade_int8_fp32", "savedmodel_fp32")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    from tfmp.export import testsplit
    from tfmp.serve import predict, runners

    report = predict.read_report(args.export_dir)
    with open(os.path.join(report["run_dir"], "config.json"), encoding="utf-8") as f:
        split, _ = testsplit.rebuild(report["run_dir"], json.load(f), report["labels"])
    texts = list(split.texts)
    run = {v: runners.open_variant(args.export_dir, v, report) for v in VARIANTS}
    answers, speeds = {}, {v: [] for v in VARIANTS}
    for v in VARIANTS:
        run[v](texts[:32])  # warm-up
    cascade = run["cascade_int8_fp32"]._predict.cascade
    for r in range(args.rounds):
        for v in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            if v == "cascade_int8_fp32":
                cascade.answered = cascade.on_fast_path = 0
            start = time.perf_counter()
            answers[v] = np.concatenate([run[v](texts[i:i + 32])
                                         for i in range(0, len(texts), 32)])
            speeds[v].append(len(texts) / (time.perf_counter() - start))
    ratio = {ref: statistics.median(c / f for c, f in zip(speeds["cascade_int8_fp32"],
                                                          speeds[ref]))
             for ref in ("tflite_fp32", "savedmodel_fp32", "tflite_int8")}
    fp32 = answers["tflite_fp32"].argmax(-1)
    print(f"{len(texts)} test texts, {args.rounds} rounds, load {os.getloadavg()}")
    for v in VARIANTS:
        agree = np.mean(answers[v].argmax(-1) == fp32)
        print(f"{v:20s} {statistics.median(speeds[v]):7.1f} examples/s  (rounds: "
              f"{', '.join(f'{s:.0f}' for s in speeds[v])}), agreement with tflite_fp32 "
              f"{agree:.4f}, with savedmodel_fp32 "
              f"{np.mean(answers[v].argmax(-1) == answers['savedmodel_fp32'].argmax(-1)):.4f}")
    print(f"cascade: {cascade.fast_share:.4f} of texts stayed on int8 (margin "
          f"{cascade.margin:.4f}); median speed ratio " + ", ".join(
              f"{ratio[k]:.2f}x {k}" for k in ratio))


if __name__ == "__main__":
    main()
