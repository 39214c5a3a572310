"""The training step's XLA-compiled kernels: the fused GELU and the weight decay.

    forward, backward = gelu_kernels()   # keras-hub's tanh GELU, one fused loop each way
    decay_kernel()                        # var - var * alpha, one fused loop

Each is a `tf.function(jit_compile=True)` made once a process, so every model shares
them. TensorFlow compiles such a function at its first call for each input shape and
caches the result by function and shapes; `tfmp.xla_warmup` compiles the shapes a run
will meet on a spare core, through these same functions. Their inputs are tensors, not
variables: a tensor's trace key is its shape and dtype alone, so the warm-up, which
has no handle on the step's variables, traces the very concrete functions the step
calls.
"""

# keras-hub's BERT feed-forward activation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_GELU_K = 0.7978845608028654  # sqrt(2 / pi)
_GELU_C = 0.044715

_KERNELS = {}


def _gelu_kernels():
    """The forward and backward GELU, each one XLA-fused loop, computed in float32."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def forward(x):
        y = tf.cast(x, "float32")
        t = tf.tanh(_GELU_K * y * (1.0 + _GELU_C * y * y))
        return tf.cast(0.5 * y * (1.0 + t), x.dtype)

    @tf.function(jit_compile=True)
    def backward(x, dy):
        y = tf.cast(x, "float32")
        y2 = y * y
        t = tf.tanh(_GELU_K * y * (1.0 + _GELU_C * y2))
        d = 0.5 * (1.0 + t) + 0.5 * _GELU_K * y * (1.0 - t * t) * (1.0 + 3.0 * _GELU_C * y2)
        return tf.cast(tf.cast(dy, "float32") * d, x.dtype)

    return forward, backward


def gelu_kernels():
    """(forward, backward): the fused GELU's two XLA `tf.function`s, made once a process."""
    if "gelu" not in _KERNELS:
        _KERNELS["gelu"] = _gelu_kernels()
    return _KERNELS["gelu"]


def decay_kernel():
    """`f(value, alpha) = value - value * alpha`, one XLA-fused loop (read once, write
    once), made once a process; `alpha` is a scalar of `value`'s dtype."""
    if "decay" not in _KERNELS:
        import tensorflow as tf

        _KERNELS["decay"] = tf.function(lambda v, a: v - v * a, jit_compile=True)
    return _KERNELS["decay"]
