"""The training step's XLA kernels, compiled on the spare core before training meets them.

    callbacks = [XlaWarmup(train, config, lengths, (validation, test)), ...]  # for model.fit

TensorFlow compiles an XLA function at its first call for each input shape. The
training step's GELU (`tfmp.layers.fused_gelu_approximate`: a forward and a backward
XLA function) meets a new shape at every new batch width, and each cost the step
76-95 ms (MiniLM, float32, batch 32, widths 34-60; 1-7 ms with Keras' unfused GELU,
whose step is ~30 ms slower at those widths). A demo run meets about 30 widths.

`XlaWarmup` computes the run's batch shapes up front (the batch order is a fixed
function of seed and epoch: `tfmp.grouping.epoch_order`; each batch is cut as
`tfmp.data.trim_padding` cuts it) and, when the first `fit` starts, a thread compiles
the two kernels for each shape in the order training meets them. It starts while the
main thread traces the step (Python, one core, ~1.5 s) and runs the first call
(Grappler, ~1.5 s), so most of it costs the run nothing: the step then finds each
shape compiled. TensorFlow's compile cache is keyed by the function and the shapes;
the thread calls the very concrete functions the step calls (traced for (None, None,
units) inputs, the step's own signature), from a graph as the step does (an eager
call is cached under another key).

The weight decay (`tfmp.xla_kernels.decay_kernel`) is compiled once per variable shape
(MiniLM: 13), all at the step's first call: ~0.5 s of compiling, first in the thread.

Validation and the test scores run the forward GELU at their own shapes (batches of
`data.EVAL_BATCH_SIZE` sorted by length: `data.by_length`), none of them a training
shape; the thread compiles those forward kernels after the training ones.

Best effort: where a shape is not warmed (a signature the step traced differently, a
strategy with several replicas, `--grad-accum` micro-batches), the step compiles it
itself, as without this.
"""

import threading

import keras
import numpy as np

from tfmp import data, grouping, hardware, layers, optimizer, xla_kernels


def batch_shapes(split, batch_size, seed, epochs, start_step=0, lengths=None,
                 pool_batches=8, seq_len=None):
    """(batch, width) of each training batch from `start_step` on, each shape once, in
    the order training meets them; [] where the widths cannot be known up front.

    Args:
        split: `tfmp.data.Split`: its token features give the widths exactly; without
            them, `lengths` capped at `seq_len` do.
        lengths: token lengths of `split` for length grouping (None: shuffled batches).
    """
    n = len(split)
    if split.features is not None:
        mask = np.asarray(split.features["padding_mask"])
        real, cap = mask.sum(axis=1), mask.shape[1]
    elif lengths is not None and seq_len:
        real, cap = np.minimum(lengths, seq_len), seq_len
    else:
        return []
    steps_per_epoch = -(-n // batch_size)
    shapes = {}
    for epoch in range(start_step // steps_per_epoch, epochs):
        order = grouping.epoch_order(n, batch_size, seed, epoch, lengths, pool_batches)
        first = start_step % steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for start in range(first * batch_size, n, batch_size):
            batch = order[start:start + batch_size]
            shapes.setdefault((len(batch), int(min(data.even_width(real[batch].max()), cap))), None)
    return list(shapes)


def eval_shapes(splits, batch_size, skip=()):
    """(batch, width) of each batch of `splits` scored shortest first (`data.by_length`),
    each shape once, leaving out `skip`; splits without token features give none."""
    shapes = {}
    for split in splits:
        if split.features is None or not len(split):
            continue
        real = np.sort(np.asarray(split.features["padding_mask"]).sum(axis=1))
        cap = split.features["padding_mask"].shape[1]
        for start in range(0, len(real), batch_size):
            batch = real[start:start + batch_size]
            shapes.setdefault((len(batch), int(min(data.even_width(batch[-1]), cap))), None)
    return [s for s in shapes if s not in set(skip)]


def gelu_signatures(model):
    """(units, dtype) of the inputs of every Dense in `model` with the fused GELU."""
    found = {(int(layer.units), layer.compute_dtype)
             for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.Dense)
             and layer.activation is layers.fused_gelu_approximate}
    return sorted(found)


class _Compiler(threading.Thread):
    """Compiles the weight decay for each of `decays` ((shape, dtype) of the decayed
    variables: the first step needs them all), then the fused GELU for each of `shapes`
    (both passes) and of `forward_shapes` (the forward alone); stops early on `stop` or
    a finished main thread (an interpreter exiting does not wait for the rest)."""

    def __init__(self, signatures, shapes, forward_shapes=(), decays=()):
        super().__init__(name="xla-warmup")
        self.signatures, self.shapes = signatures, shapes
        self.forward_shapes, self.decays = list(forward_shapes), list(decays)
        self.compiled, self.error = 0, None
        self.stopping = threading.Event()

    def run(self):
        import tensorflow as tf

        hardware.yield_to_training()
        try:
            self._compile_decays()
            forward, backward = xla_kernels.gelu_kernels()
            calls = []  # (units, dtype, both passes, the forward alone)
            for units, dtype in self.signatures:
                spec = tf.TensorSpec([None, None, units], dtype)
                f = forward.get_concrete_function(spec)
                b = backward.get_concrete_function(spec, spec)
                calls.append((units, dtype,
                              tf.function(lambda x, f=f, b=b: (f(x), b(x, x)), input_signature=[spec]),
                              tf.function(lambda x, f=f: f(x), input_signature=[spec])))
            work = [(shape, True) for shape in self.shapes]
            work += [(shape, False) for shape in self.forward_shapes]
            for (batch, width), both in work:
                for units, dtype, both_passes, forward_only in calls:
                    if self._stopped():
                        return
                    (both_passes if both else forward_only)(tf.zeros([batch, width, units], dtype))
                    self.compiled += 1
        except Exception as e:  # best effort: the step compiles what is missing itself
            self.error = e

    def _stopped(self):
        return self.stopping.is_set() or not threading.main_thread().is_alive()

    def _compile_decays(self):
        import tensorflow as tf

        for shape, dtype in self.decays:
            if self._stopped():
                return
            specs = tf.TensorSpec(shape, dtype), tf.TensorSpec([], dtype)
            kernel = xla_kernels.decay_kernel()

            # As AdamW calls it: from a graph, in cross-replica context (a merge_call).
            def call(v, a):
                return tf.distribute.get_replica_context().merge_call(
                    lambda _, v, a: kernel(v, a), args=(v, a))

            function = tf.function(call, input_signature=specs)
            # One function per shape on purpose: TensorFlow's "N out of the last N calls
            # ... triggered tf.function retracing" warning (printed to every user) is noise.
            function._omit_frequent_tracing_warning = True
            function(tf.zeros(shape, dtype), tf.zeros([], dtype))
            self.compiled += 1


class XlaWarmup(keras.callbacks.Callback):
    """Starts the compile thread at the first `fit`'s start (module docstring).

    Args:
        split: the training `tfmp.data.Split`.
        config: the run's `TrainConfig` (batch size, seed, epochs, pools, --seq-len).
        lengths: the split's token lengths where batches are grouped by length, or None.
        scored: the splits validated and tested at `data.EVAL_BATCH_SIZE`, by length.
    """

    def __init__(self, split, config, lengths, scored=()):
        super().__init__()
        self.split, self.config, self.lengths, self.scored = split, config, lengths, scored
        self.thread = None

    def on_train_begin(self, logs=None):
        if self.thread is not None or keras.backend.backend() != "tensorflow":
            return
        model, config = self.model, self.config
        signatures = gelu_signatures(model)
        shapes = batch_shapes(self.split, config.batch_size, config.seed, config.epochs,
                              optimizer.global_step(model.optimizer), self.lengths,
                              config.length_pool, config.seq_len)
        forward = eval_shapes(self.scored, data.EVAL_BATCH_SIZE, skip=shapes)
        decays = []
        if not signatures:
            shapes, forward = [], []
        if model.distribute_strategy.num_replicas_in_sync > 1:
            # Each replica's batch is a part of these shapes, and its decay runs in the
            # strategy's update context, which this thread cannot enter.
            shapes, forward = [], []
        else:
            decays = optimizer.decay_signatures(model.optimizer, model.trainable_variables)
            if config.grad_accum > 1:
                shapes = []  # micro-batches are parts of these
        self.thread = _Compiler(signatures, shapes, forward, decays)
        self.thread.start()

    def stop(self):
        """Stops compiling after the kernel in progress and waits for it."""
        if self.thread is not None:
            self.thread.stopping.set()
            self.thread.join()
