"""The two memory-bound passes of tfmp's AdamW step besides Adam itself (issue 14, target 2).

    python benchmarks/optimizer_update.py

The TensorFlow profiler on a mixed_bfloat16 MiniLM step (batch 32, width 40) put the
optimizer at 14% of all op time: ResourceApplyAdam 19 ms, weight decay 18 ms, the global
gradient norm 15 ms (Square + Sum per variable) a step. This times, on MiniLM's matrix
shapes (22.6M float32 values, 20 rounds per call, 3 alternating rounds):

- decay `ResourceApplyGradientDescent(var, lr*wd, identity(var))` (tfmp before), Keras'
  `assign_sub(var * lr*wd)`, and one XLA-fused `var - var * lr*wd` then `assign` (tfmp now);
- the sum of squares as `reduce_sum(square(g))` (before) and as one `L2Loss` (now).

Measured 2026-11-29 on the 2-core EPYC with other jobs sharing the cores: decay 11.6-12.2
(gradient descent), 11.2-13.1 (assign_sub), 7.0-7.6 ms (XLA); norm 9.1-10.2 (square, sum)
vs 4.5-5.2 ms (L2Loss).
"""

import os
import time


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    shapes = [(30522, 384)] + [(384, 384)] * 24 + [(384, 1536), (1536, 384)] * 6 + [(512, 384)]
    variables = [tf.Variable(tf.random.normal(s)) for s in shapes]
    alpha = tf.constant(5e-7)
    decayed = tf.function(lambda v, a: v - v * a, jit_compile=True)

    def gradient_descent():
        for v in variables:
            tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=alpha,
                                                    delta=tf.identity(v))

    def assign_sub():
        for v in variables:
            v.assign_sub(v * alpha)

    def xla():
        for v in variables:
            v.assign(decayed(v, alpha))

    def square_sum():
        return tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])

    def l2_loss():
        return tf.add_n([tf.nn.l2_loss(v) for v in variables])

    cases = {name: tf.function(fn) for name, fn in (
        ("decay: ResourceApplyGradientDescent", gradient_descent),
        ("decay: assign_sub", assign_sub), ("decay: XLA-fused", xla),
        ("norm: square, sum", square_sum), ("norm: L2Loss", l2_loss))}
    for r in range(3):
        for name, fn in cases.items():
            fn()
            start = time.perf_counter()
            for _ in range(20):
                fn()
            variables[0].numpy()
            print(f"round {r} {name}: {(time.perf_counter() - start) / 20 * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
