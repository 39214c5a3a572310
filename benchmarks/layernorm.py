"""Layer norm, forward + backward: Keras' ops against two fused versions (issue 14, target 2).

    python benchmarks/layernorm.py [--shape 32,48,384] [--policy mixed_bfloat16]

A MiniLM training step runs 13 layer norms (embeddings + 2 per layer). Keras computes each
as moments, rsqrt, multiply, add (in float32) and autodiff adds a dozen more ops; the
question is whether fusing them the way tfmp fuses the GELU (`tfmp.layers`) pays here.
Three versions of the same function, timed alternately in one process (50 calls per
round, 3 rounds):

- keras: `keras.layers.LayerNormalization` as keras-hub's BERT uses it;
- xla: forward and backward each one `tf.function(jit_compile=True)` kernel (float32
  inside, as Keras computes), joined by a `tf.custom_gradient`;
- fused_batch_norm: the normalisation as `FusedBatchNormV3` over (1, rows, hidden, 1)
  in NCHW (one oneDNN kernel each way), then the scale and shift.

Measured on the 2-core EPYC under mixed_bfloat16, shape (32, 48, 384), 2026-11-29 (other
jobs sharing the cores, so ratios only): keras 4.1-4.5 ms, xla 8.9-9.0 ms (2.1x slower:
XLA's CPU reductions are single-threaded loops), fused_batch_norm 4.3-4.5 ms (no gain).
Neither replaces Keras' version.
"""

import argparse
import os
import time

EPS = 1e-12


def versions(tf, ln):
    @tf.function(jit_compile=True)
    def forward(x, g, b):
        y = tf.cast(x, tf.float32)
        c = y - tf.reduce_mean(y, -1, keepdims=True)
        inv = tf.math.rsqrt(tf.reduce_mean(c * c, -1, keepdims=True) + EPS)
        return tf.cast(c * inv * g + b, x.dtype)

    @tf.function(jit_compile=True)
    def backward(x, g, dy):
        y, dy = tf.cast(x, tf.float32), tf.cast(dy, tf.float32)
        c = y - tf.reduce_mean(y, -1, keepdims=True)
        inv = tf.math.rsqrt(tf.reduce_mean(c * c, -1, keepdims=True) + EPS)
        xhat = c * inv
        dxhat = dy * g
        dx = inv * (dxhat - tf.reduce_mean(dxhat, -1, keepdims=True)
                    - xhat * tf.reduce_mean(dxhat * xhat, -1, keepdims=True))
        axes = list(range(len(x.shape) - 1))
        return tf.cast(dx, x.dtype), tf.reduce_sum(dy * xhat, axes), tf.reduce_sum(dy, axes)

    def xla(x, g, b):
        @tf.custom_gradient
        def f(x, g, b):
            return forward(x, g, b), lambda dy: backward(x, g, dy)
        return f(x, g, b)

    def fused_batch_norm(x, g, b):
        shape = tf.shape(x)
        y = tf.reshape(tf.cast(x, tf.float32), [1, -1, shape[-1], 1])
        rows = tf.shape(y)[1]
        out = tf.raw_ops.FusedBatchNormV3(
            x=y, scale=tf.ones([rows]), offset=tf.zeros([rows]), mean=tf.zeros([0]),
            variance=tf.zeros([0]), epsilon=EPS, data_format="NCHW", is_training=True)[0]
        return tf.cast(tf.reshape(out, shape) * g + b, x.dtype)

    return {"keras": lambda x, g, b: ln(x), "xla": xla, "fused_batch_norm": fused_batch_norm}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="32,48,384")
    parser.add_argument("--policy", default="mixed_bfloat16")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(args.policy)
    shape = tuple(int(v) for v in args.shape.split(","))
    ln = keras.layers.LayerNormalization(epsilon=EPS)
    ln.build(shape)
    x = tf.Variable(tf.cast(tf.random.normal(shape), ln.compute_dtype))
    steps = {}
    for name, fn in versions(tf, ln).items():
        @tf.function
        def step(fn=fn):
            with tf.GradientTape() as tape:
                y = fn(x, ln.gamma, ln.beta)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            return tape.gradient(loss, [x, ln.gamma, ln.beta])
        steps[name] = step
    reference = steps["keras"]()
    for name, step in steps.items():
        diff = max(float(tf.reduce_max(tf.abs(tf.cast(a, tf.float32) - tf.cast(b, tf.float32))))
                   for a, b in zip(reference, step()))
        print(f"{name}: largest gradient difference from keras {diff:.3g}")
    for r in range(3):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.calls):
                step()[0].numpy()
            print(f"round {r} {name}: {(time.perf_counter() - start) / args.calls * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
