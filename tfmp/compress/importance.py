"""Which layers, neurons and heads matter, measured on training batches.

    batches = probe_batches(teacher, splits.train, examples=512, seed=0)
    keep = choose_layers(teacher, batches, drop=3)             # greedy, by measured loss
    ffn, heads = unit_scores(teacher, batches, keep)          # first-order Taylor

Neurons and heads are scored by the first-order Taylor estimate of the loss change
when the unit is removed (Molchanov et al., 2019): removing a unit zeroes its weights
w, which changes the loss by about -sum(w * dL/dw); the score is that sum squared,
averaged over batches. It is chosen over plain weight magnitude because it sees the
data (a neuron with large weights that never fires on tweets scores low) and over
masking each unit in turn because it costs one backward pass per batch for every
unit at once. Layers are few, so they are measured directly: drop the layer whose
removal raises the training loss least, then repeat on what is left (greedy), each
candidate run on the same batches.

`tfmp.compress.run` gives it the teacher rebuilt under `precision.TEACHER_POLICY` (float32).
"""

import numpy as np

from tfmp import data
from tfmp.compress.prune import depth_layers, forward


def probe_batches(classifier, split, examples=512, batch_size=32, seed=0):
    """Token batches `(x, y)` of a seeded sample of `split` (a `data.Split`)."""
    rng = np.random.default_rng(seed)
    n = min(examples, len(split))
    pick = np.sort(rng.choice(len(split), size=n, replace=False))
    sample = data.Split([split.texts[i] for i in pick], split.label_ids[pick])
    return list(data.make_dataset(sample, classifier.preprocessor, batch_size))


def _loss(logits, y):
    import keras

    return float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, logits, from_logits=True)))


def depth_loss(classifier, batches, depths):
    """Mean training cross-entropy of `classifier` applying only encoder `depths`."""
    return float(np.mean([_loss(forward(classifier, x, depths), y) for x, y in batches]))


def choose_layers(classifier, batches, drop):
    """Teacher depths to keep after greedily dropping `drop` of them; and each step's loss."""
    keep = list(range(len(depth_layers(classifier.backbone))))
    steps = []
    for _ in range(drop):
        losses = {d: depth_loss(classifier, batches, [k for k in keep if k != d]) for d in keep}
        dropped = min(losses, key=losses.get)
        keep.remove(dropped)
        steps.append({"dropped": dropped, "loss": losses[dropped]})
    return tuple(keep), steps


def _unit_weights(layer):
    """{"ffn": [(variable, axis)], "heads": [(variable, axis)]}: which axis indexes units."""
    attention = layer._self_attention_layer
    heads = []
    for name in ("_query_dense", "_key_dense", "_value_dense"):
        dense = getattr(attention, name)
        heads += [(dense.kernel, 1), (dense.bias, 0)]  # (hidden, heads, dim), (heads, dim)
    heads.append((attention._output_dense.kernel, 0))  # (heads, dim, hidden)
    inter, out = layer._feedforward_intermediate_dense, layer._feedforward_output_dense
    ffn = [(inter.kernel, 1), (inter.bias, 0), (out.kernel, 0)]  # (hidden, n), (n,), (n, hidden)
    return {"ffn": ffn, "heads": heads}


def unit_scores(classifier, batches, depths):
    """First-order Taylor scores: {"ffn": [array per depth], "heads": [array per depth]}."""
    import keras
    import tensorflow as tf

    layers = depth_layers(classifier.backbone)
    weights = [_unit_weights(layers[d]) for d in depths]
    flat = [v for w in weights for kind in ("ffn", "heads") for v, _ in w[kind]]
    totals = None
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                y, forward(classifier, x, depths), from_logits=True))
        grads = dict(zip([id(v) for v in flat], tape.gradient(loss, [v.value for v in flat])))
        batch = []
        for w in weights:
            for kind in ("ffn", "heads"):
                # sum over every axis but the unit's of w * dL/dw, per unit
                terms = [np.moveaxis(v.numpy() * grads[id(v)].numpy(), axis, 0)
                         .reshape(v.shape[axis], -1).sum(axis=1) for v, axis in w[kind]]
                batch.append(np.square(np.sum(terms, axis=0)))
        totals = batch if totals is None else [a + b for a, b in zip(totals, batch)]
    n = len(batches)
    return {"ffn": [t / n for t in totals[0::2]], "heads": [t / n for t in totals[1::2]]}


def top_units(scores, fraction):
    """Indices (ascending) of the highest-scoring `fraction` of units, in each layer."""
    out = []
    for s in scores:
        k = max(1, int(round(fraction * len(s))))
        out.append(tuple(int(i) for i in np.sort(np.argsort(-s, kind="stable")[:k])))
    return tuple(out)
