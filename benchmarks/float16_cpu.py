"""mixed_float16 on a CPU without float16 arithmetic: tfmp's emulation (float16 in and out,
float32 products, `tfmp.float16_cpu`) against TensorFlow's native float16 kernels and float32.

One MiniLM training step (Keras `train_step` under tf.function, batch 32, length 64, fixed
random tokens), the three models in alternating rounds in one process; median per config.

    python benchmarks/float16_cpu.py [--rounds 5] [--steps 4]
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _model(policy_name, emulate, seq_len):
    from tfmp import float16_cpu, models, precision
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    policy = precision.resolve(policy_name)
    model = models.load_classifier(None, num_classes=3, sequence_length=seq_len, policy=policy)
    compile_classifier(model, policy, total_steps=100_000, config=TrainConfig())
    if not emulate:
        float16_cpu.use_float16_cpu(model, on=False)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args(argv)
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    b, n = args.batch, args.seq_len
    x = {"token_ids": tf.constant(rng.integers(1000, 20000, (b, n)), tf.int32),
         "segment_ids": tf.zeros((b, n), tf.int32), "padding_mask": tf.ones((b, n), tf.bool)}
    y = tf.constant(rng.integers(0, 3, (b,)), tf.int32)
    configs = {"float32": ("float32", True), "mixed_float16_emulated": ("mixed_float16", True),
               "mixed_float16_native": ("mixed_float16", False)}
    steps = {}
    for name, (policy, emulate) in configs.items():
        model = _model(policy, emulate, n)
        model.train_step((x, y))  # eagerly: optimizer slots and metrics
        fn = tf.function(lambda x, y, m=model: m.train_step((x, y)))
        for _ in range(3):  # trace, then warm up
            logs = fn(x, y)
        float(logs["loss"])
        steps[name] = fn
    times = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                logs = fn(x, y)
            float(logs["loss"])
            times[name].append((time.perf_counter() - start) / args.steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {"step_s": medians, "rounds": times, "load": os.getloadavg(),
              "ratio_to_float32": {k: medians["float32"] / v for k, v in medians.items()}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
