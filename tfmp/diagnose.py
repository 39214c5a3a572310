"""Which layer overflows float16: one batch through per-layer probes.

    result = diagnose(model, train_ds)          # a dict, JSON-ready
    print(summary(result))                      # "Pin to float32: ..."
    precision.pin_float32(model, result["suggested_float32_layers"])

For every leaf layer the diagnosis records, against float16's largest finite value
(65504): the largest absolute activation, the largest absolute gradient of the
(scaled) loss with respect to that activation, and the share of non-zero values that
fall below float16's smallest subnormal (2**-24) and so flush to zero. Magnitudes
come from a float32 copy of the model (the values float16 would have to hold); the
first non-finite layer comes from the model as it is. Which layers to pin is
precision's rule (`precision.needs_float32_pin`); `precision.pin_float32` (or
`tfmp train --float32-layers`) applies pins without touching model code. This module
only measures; the `tfmp diagnose` command is in `tfmp.cli`.
"""

import contextlib

import keras
import numpy as np

from tfmp import models, precision
from tfmp.config import TrainConfig
from tfmp.precision import DEFAULT_MARGIN, FLOAT16_MAX, FLOAT16_TINY


def _leaf_layers(model):
    """[(path, layer)] of the layers that hold no other layers."""
    return [(p, l) for p, l in precision.layer_paths(model)
            if not l._flatten_layers(include_self=False, recursive=False)]


def _batches(model, data, count=1):
    """Up to `count` preprocessed (x, y) batches of a `tf.data.Dataset`, or an (x, y) pair."""
    if hasattr(data, "take"):
        raw = list(data.take(count))
    else:
        raw = [data]
    out = []
    for batch in raw:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(tuple(batch) if isinstance(batch, list)
                                                         else batch)
        if getattr(model, "preprocessor", None) is not None:
            x, y, _ = keras.utils.unpack_x_y_sample_weight(model.preprocess_samples(x, y))
        if isinstance(y, dict):  # a distilled student's targets (tfmp.compress.distil)
            y = y["label"]
        out.append((x, y))
    return out


def _loss_fn(model):
    loss = getattr(model, "loss", None)
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def _loss_scale(model, policy_name):
    opt = getattr(model, "optimizer", None)
    if opt is not None and hasattr(opt, "dynamic_scale"):
        return float(keras.ops.convert_to_numpy(opt.dynamic_scale)) if opt.built \
            else float(opt.initial_scale)
    # What tfmp's LossScaleOptimizer starts at; nothing is scaled otherwise. Whether a
    # policy scales its loss is precision's decision.
    if precision.needs_loss_scaling(policy_name):
        return TrainConfig().initial_loss_scale
    return 1.0


def _run_probed(model, x, y, loss_fn, scale):
    """Per leaf layer (execution order): the statistics of its outputs and of their
    gradients, each (peak, underflow share, non-finite) or None when it has none."""
    import tensorflow as tf

    leaves = [l for _, l in _leaf_layers(model)]
    records = []  # (leaf index, output tensor)
    index = {id(l): i for i, l in enumerate(leaves)}

    def probe(layer, call):
        def probed(*args, **kwargs):
            outputs = call(*args, **kwargs)
            for t in tf.nest.flatten(outputs):
                if tf.is_tensor(t) and t.dtype.is_floating:
                    records.append((index[id(layer)], t))
            return outputs
        return probed

    for layer in leaves:
        # An instance attribute shadows the class's `call` for this layer only;
        # object.__setattr__ keeps Keras' attribute tracking out of it.
        object.__setattr__(layer, "call", probe(layer, layer.call))
    try:
        with tf.GradientTape() as tape:
            logits = model(x, training=False)
            # A loss function (not a Loss object) returns one value per example.
            loss = tf.reduce_mean(loss_fn(y, tf.cast(logits, "float32"))) * scale
        grads = tape.gradient(loss, [t for _, t in records],
                              unconnected_gradients=tf.UnconnectedGradients.NONE)
    finally:
        for layer in leaves:
            object.__delattr__(layer, "call")
    # Counted in TensorFlow, one transfer at the end: copying every activation out to
    # numpy took a quarter of a calibration pass on MiniLM.
    counts = [_counts(t) for _, t in records] + [_counts(g) for g in grads if g is not None]
    counts = iter(tf.stack(counts).numpy().tolist() if counts else [])
    per_layer = [([], []) for _ in leaves]
    values = [next(counts) for _ in records]
    for (i, _), c in zip(records, values):
        per_layer[i][0].append(c)
    for (i, _), g in zip(records, grads):
        if g is not None:
            per_layer[i][1].append(next(counts))
    stats = [(_stats(acts), _stats(grads)) for acts, grads in per_layer]
    return leaves, stats, [bool(acts) for acts, _ in per_layer], float(loss)


def _counts(t):
    """[largest finite |value|, finite values, non-zero finite values, those below 2**-24,
    values] of a tensor, as float64."""
    import tensorflow as tf

    a = tf.cast(t, tf.float32)
    finite = tf.math.is_finite(a)
    magnitude = tf.where(finite, tf.abs(a), 0.0)
    nonzero = magnitude > 0
    return tf.cast(tf.stack([
        tf.reduce_max(magnitude) if a.shape.num_elements() != 0 else 0.0,
        tf.reduce_sum(tf.cast(finite, tf.float32)),
        tf.reduce_sum(tf.cast(nonzero, tf.float32)),
        tf.reduce_sum(tf.cast(nonzero & (magnitude < FLOAT16_TINY), tf.float32)),
        tf.cast(tf.size(a), tf.float32)]), tf.float64)


def _stats(counts):
    """(peak, underflow share, non-finite) over the `_counts` of a layer's tensors."""
    if not counts:
        return None, 0.0, False
    peak, finite, nonzero, under, size = (np.asarray(counts).reshape(-1, 5).sum(axis=0))
    peak = max(c[0] for c in counts) if finite else float("inf")
    return float(peak), float(under / nonzero) if nonzero else 0.0, bool(finite < size)


def _float32_copy(model):
    if isinstance(model, models.BertClassifier):
        return models.rebuild_float32(model)

    def clone_layer(layer):
        return layer.__class__.from_config(dict(layer.get_config(), dtype="float32"))

    with precision.policy_scope("float32"):
        clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def _reference_model(model, reference, actual):
    """What measures magnitudes: None (the model as it is), `model` itself (computing in
    float32 for the pass, when only the reference runs) or a float32 copy."""
    if not reference or model.compute_dtype == "float32":
        return None
    # The model itself in float32 (`precision.computing_in_float32`) is the copy's
    # arithmetic without building one; int8 layers need the copy's merged kernels.
    return model if not actual and not precision.quantized(model) else _float32_copy(model)


def _merge(x, y, n):
    """One layer's statistics over n batches, given those over n - 1 (`x`) and the nth
    (`y`): the larger peak, the mean underflow share, non-finite in either."""
    peak = None if x[0] is None and y[0] is None else max(x[0] or 0.0, y[0] or 0.0)
    return peak, x[1] + (y[1] - x[1]) / n, x[2] or y[2]


def _measure(model, copy, batches, loss_fn, scale, actual=True):
    """(leaves, per leaf [act, grad, actual act, actual grad] statistics over `batches`
    (each (peak, underflow share, non-finite)), whether each leaf was called, mean loss).

    Without `actual` only the float32 copy runs, and a value past 65504 there counts
    as non-finite in the model (float16 matmuls are Eigen's emulation on most CPUs: the
    model's own pass took three quarters of a calibration).
    """
    merged, loss = None, 0.0
    leaves = [l for _, l in _leaf_layers(model)]
    # Training-only transforms change a layer's class in place (a subclass).
    same = copy is not None and len(_leaf_layers(copy)) == len(leaves) and all(
        isinstance(a, type(b)) or isinstance(b, type(a))
        for a, (_, b) in zip(leaves, _leaf_layers(copy)))
    actual = actual or not same
    for n, (x, y) in enumerate(batches, 1):
        if actual:
            leaves, real, called, batch_loss = _run_probed(model, x, y, loss_fn, scale)
        reference = real if actual else None
        if same:
            _, reference, ref_called, ref_loss = _run_probed(copy, x, y, loss_fn, scale)
            if not actual:
                real = [(_past_float16(a), _past_float16(g)) for a, g in reference]
                called, batch_loss = ref_called, ref_loss
        stats = [[ref_act, ref_grad, act, grad] for (act, grad), (ref_act, ref_grad)
                 in zip(real, reference)]
        merged = stats if merged is None else [
            [_merge(p, q, n) for p, q in zip(m, st)] for m, st in zip(merged, stats)]
        loss += batch_loss / len(batches)
    return leaves, merged, called, loss


def _past_float16(stat):
    """A float32 statistic as float16 would have it: non-finite past 65504."""
    peak, under, nonfinite = stat
    return peak, under, nonfinite or (peak is not None and peak > FLOAT16_MAX)


def diagnose(model, data, loss_fn=None, loss_scale=None, margin=DEFAULT_MARGIN, batches=1,
             reference=True, actual=True):
    """Runs `batches` batches of `data` through `model` with per-layer probes.

    Args:
        model: a built `keras.Model` (a tfmp `BertClassifier` or any functional model).
        data: a `tf.data.Dataset` of (x, y) batches (its first `batches` are used) or an
            (x, y) pair; raw strings are fine when the model has a preprocessor.
        loss_fn: loss(y, logits); default the compiled loss, else sparse CE on logits.
        loss_scale: float. Gradients are of the loss times this (default: the
            optimizer's current scale under float16, else 1), as in training.
        margin: float. Suggest a float32 pin when a value comes within this factor
            of 65504.
        batches: int. Batches of a dataset measured (peaks: the largest over them;
            underflow shares: their mean).
        reference: bool. Measure magnitudes on a float32 copy (what float16 would have
            to hold); False: on the model as it is (inf where it overflows), cheaper.
        actual: bool. Also run the model as it is, for where its values become
            non-finite; False: only the float32 reference runs (`_reference_model`),
            and a value past 65504 there counts as non-finite (calibration's choice).

    Returns:
        A dict: "policy", "loss_scale", "loss", "layers" (per leaf layer, in
        execution order: path, class, compute_dtype, max_abs_activation,
        max_abs_gradient, activation_underflow_share, gradient_underflow_share,
        headroom, nonfinite_activation, nonfinite_gradient), "first_nonfinite_layer",
        "suggested_float32_layers".
    """
    policy_name = model.dtype_policy.name
    loss_fn = loss_fn or _loss_fn(model)
    scale = float(loss_scale) if loss_scale is not None else _loss_scale(model, policy_name)
    paths = {id(l): p for p, l in _leaf_layers(model)}
    copy = _reference_model(model, reference, actual)
    measured = _batches(model, data, batches)
    with precision.computing_in_float32(model) if copy is model else contextlib.nullcontext():
        leaves, stats, called, loss = _measure(model, copy, measured, loss_fn, scale, actual)
    layers, first_nonfinite, suggested = [], None, []
    for layer, (act, grad, real_act, real_grad), seen in zip(leaves, stats, called):
        if not seen:
            continue  # not called on this path (e.g. the preprocessor's layers)
        (max_act, act_under, _), (max_grad, grad_under, _) = act, grad
        nonfinite_act, nonfinite_grad = real_act[2], real_grad[2]
        # Gradients are rescued by a smaller loss scale; only their unscaled size is
        # the layer's problem.
        unscaled_grad = (max_grad or 0.0) / scale
        peak = max(max_act or 0.0, unscaled_grad)
        entry = {
            "path": paths[id(layer)],
            "class": type(layer).__name__,
            "compute_dtype": layer.compute_dtype,
            "max_abs_activation": max_act,
            "max_abs_gradient": max_grad,
            "activation_underflow_share": act_under,
            "gradient_underflow_share": grad_under,
            "headroom": FLOAT16_MAX / peak if peak else None,
            "nonfinite_activation": nonfinite_act,
            "nonfinite_gradient": nonfinite_grad,
        }
        layers.append(entry)
    # Forward first: an overflowing activation makes every gradient before it
    # non-finite too. Gradients alone go wrong from the loss backwards.
    forward = [e for e in layers if e["nonfinite_activation"]]
    backward = [e for e in reversed(layers) if e["nonfinite_gradient"]]
    first_nonfinite = (forward or backward or [{"path": None}])[0]["path"]
    for e in layers:
        culprit = e["nonfinite_activation"] or (not forward and e["path"] == first_nonfinite)
        if precision.needs_float32_pin(e, scale, margin, culprit):
            suggested.append(e["path"])
    return {
        "policy": policy_name,
        "loss_scale": scale,
        "loss": loss / scale if scale else loss,
        "batches": len(measured),
        "float16_max": FLOAT16_MAX,
        "margin": margin,
        "layers": layers,
        "first_nonfinite_layer": first_nonfinite,
        "suggested_float32_layers": suggested,
    }


def summary(result):
    """One paragraph: where values became non-finite and what to pin."""
    parts = []
    if result["first_nonfinite_layer"]:
        parts.append(f"Values first became non-finite in {result['first_nonfinite_layer']}.")
    if result["suggested_float32_layers"]:
        parts.append(
            "Pin to float32 (less than "
            f"{result['margin']:g}x headroom below 65504): "
            + ", ".join(result["suggested_float32_layers"]) + ".")
    else:
        parts.append("Every float16 layer has headroom; no float32 pins needed.")
    return " ".join(parts)


def format_table(result):
    w = max([len(e["path"]) for e in result["layers"]] + [5])
    rows = [(f"{'layer':<{w}} {'max|act|':>10} {'max|grad|':>10} {'act<2^-24':>9} "
            f"{'headroom':>9} nonfinite")]
    for e in result["layers"]:
        fmt = lambda v: "-" if v is None else f"{v:10.3g}"
        rows.append(f"{e['path']:<{w}} {fmt(e['max_abs_activation'])} "
                    f"{fmt(e['max_abs_gradient'])} {e['activation_underflow_share']:9.2%} "
                    f"{'-' if e['headroom'] is None else format(e['headroom'], '9.3g'):>9} "
                    f"{'activation ' if e['nonfinite_activation'] else ''}"
                    f"{'gradient' if e['nonfinite_gradient'] else ''}")
    return "\n".join(rows)
