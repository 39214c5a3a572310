"""Gradient accumulation: one optimizer step from a batch run as micro-batches.

    accumulate.install(model, steps=4)   # after compile: a batch of 32 runs as 4 x 8

`--grad-accum N` keeps `--batch-size` the batch of one optimizer step (as under a
`tf.distribute` strategy, where it is the global batch) and computes it in N
micro-batches, one after another, so only one micro-batch's activations are alive at a
time. The gradients of the micro-batches are summed inside the one `train_step` of the
batch, each micro-batch's mean loss weighted by its share of the batch (rows / batch
rows), so the sum is the gradient of the batch's mean loss, also for a last batch that
does not split evenly. The optimizer then sees one batch, as without accumulation:

- under a loss scale, every micro-batch's loss is scaled by the same scale, and the
  summed, still scaled gradients reach `LossScaleOptimizer.apply` once: one finite
  check and one unscale per optimizer step. An overflow in any micro-batch makes the
  sum non-finite (inf + x = inf, inf - inf = NaN), so the whole step is skipped and the
  scale moves once;
- the iteration count, learning-rate schedule, global step, checkpoints (taken
  between batches, so never in the middle of an accumulation), TensorBoard steps and
  `fit`'s progress count optimizer steps, and the data order is the batch order.

Why not Keras' own `gradient_accumulation_steps` (Keras 3.15) on the inner AdamW:
there each micro-batch is a `fit` step and the `LossScaleOptimizer` around it checks,
unscales and moves the scale per micro-batch. A micro-batch that overflows is dropped
alone (the scale halves) while the accumulation goes on, so the step applies the sum of
the other micro-batches and one of the next batch; the growth counter counts
micro-batches; the schedule reads the micro-step count (`_iterations`), so warmup and
decay run N times too fast; and tfmp's skipped-step count would mix the two units.
`tests/test_accumulate.py` shows the first of these on Keras' optimizer.
"""

import keras

from tfmp.errors import UserError


def micro_bounds(rows, steps):
    """(start, stop) rows of each micro-batch: `min(steps, rows)` slices whose sizes
    differ by at most one, none empty. Plain integers or TensorFlow scalars."""
    import tensorflow as tf

    count = tf.minimum(tf.cast(steps, rows.dtype), rows) if tf.is_tensor(rows) else min(steps, rows)
    return count, lambda i: ((i * rows) // count, ((i + 1) * rows) // count)


def install(model, steps):
    """Makes `model.fit` accumulate `steps` micro-batches per optimizer step.

    Call after `compile`. `steps` <= 1 leaves the model as it is. A model with its own
    `train_step` (e.g. `tfmp compress`'s distillation) is refused: its step would be
    replaced. Returns `model`.
    """
    if steps <= 1:
        return model
    if type(model).train_step is not _keras_train_step():
        raise UserError(
            f"--grad-accum {steps}: {type(model).__name__} has its own train_step, which "
            "gradient accumulation would replace. Run it without --grad-accum (lower "
            "--batch-size instead).")
    model.train_step = accumulating_train_step(model, steps)
    # Micro-batch bounds depend on the batch's rows, which XLA cannot compile as slice
    # sizes; Keras' "auto" would turn XLA on where a GPU is present.
    model.jit_compile = False
    model.train_function = None  # traced again, with this step
    return model


def _keras_train_step():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    return TensorFlowTrainer.train_step


def accumulating_train_step(model, steps):
    """Keras' TensorFlow `train_step`, run as `steps` micro-batches in a loop."""
    import tensorflow as tf
    from keras.src import tree
    from keras.src.losses import loss as loss_module

    def train_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        rows = tf.shape(next(t for t in tree.flatten(x) if t is not None))[0]
        count, bounds = micro_bounds(rows, steps)
        weights = model.trainable_weights

        def micro(part, start, stop):
            return tree.map_structure(
                lambda t: None if t is None else t[start:stop], part)

        def body(i, loss_sum, sums, predictions):
            start, stop = bounds(i)
            xs, ys, ws = micro(x, start, stop), micro(y, start, stop), micro(
                sample_weight, start, stop)
            share = tf.cast(stop - start, "float32") / tf.cast(rows, "float32")
            with tf.GradientTape() as tape:
                y_pred = model(xs, training=True) if model._call_has_training_arg else model(xs)
                # The micro-batch's mean loss times its share of the batch: the shares
                # sum to one, so the sum over micro-batches is the batch's mean loss.
                loss = model._compute_loss(x=xs, y=ys, y_pred=y_pred, sample_weight=ws,
                                           training=True) * share
                scaled = model.optimizer.scale_loss(loss) if model.optimizer else loss
            grads = tape.gradient(scaled, weights)
            # precision.FLOAT32_ISLANDS["accumulated gradients"]; dense:
            # an embedding's IndexedSlices would not keep one shape across iterations.
            sums = [s + tf.cast(tf.convert_to_tensor(g), s.dtype) if g is not None else s
                    for s, g in zip(sums, grads)]
            predictions = [p.write(i, tf.cast(t, "float32"))
                           for p, t in zip(predictions, tree.flatten(y_pred))]
            return i + 1, loss_sum + loss, sums, predictions

        sums = [tf.zeros(w.shape, "float32") for w in weights]
        # Each output, in float32 for the metrics (tfmp's logits are float32 anyway).
        predictions = [tf.TensorArray(tf.float32, size=count, infer_shape=False,
                                      element_shape=(None, *out.shape[1:]))
                       for out in tree.flatten(model.outputs)]
        # One micro-batch at a time (parallel_iterations=1): their activations are not
        # alive together, which is the point.
        _, loss, sums, predictions = tf.while_loop(
            lambda i, *_: i < count, body,
            (tf.constant(0, count.dtype), tf.constant(0.0), sums, predictions),
            parallel_iterations=1)
        model._loss_tracker.update_state(
            loss_module.unscale_loss_for_distribution(loss), sample_weight=rows)
        if weights:
            grads = [tf.cast(s, w.dtype) for s, w in zip(sums, weights)]
            model.optimizer.apply_gradients(zip(grads, weights))
        y_pred = [p.concat() for p in predictions]
        y_pred = y_pred[0] if len(y_pred) == 1 else tree.pack_sequence_as(model.outputs, y_pred)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    return train_step
