"""Unstructured magnitude pruning, held through fine-tuning.

    masks = prune_by_magnitude(student, 0.8)     # 80% of each matrix set to zero
    callbacks = [HoldSparsity(masks)]            # re-zeroed after every optimizer step

Every weight matrix of the encoder layers and the pooler (not the embeddings, whose
rows are looked up, not multiplied; not biases or layer norms) loses its smallest
`sparsity` share of entries by absolute value. The optimizer still updates them; the
callback sets them back to zero after each step, so the saved model is exactly as
sparse as asked.

What it buys here: the zeros compress. Dense kernels do the same arithmetic on zeros,
so there is no speed-up in TensorFlow or in TFLite's CPU kernels; the file is as large
as ever until it is zipped (`gzip`ped size is reported), and the TFLite converter's
sparsity optimisation is measured, not assumed (README).
"""

import keras
import numpy as np


def prunable(classifier):
    """The kernels magnitude pruning applies to: every encoder and pooler matrix."""
    out = []
    for layer in classifier.backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            out.append(layer.kernel)
    unique = {id(v): v for v in out}  # a shared layer's kernels once
    return list(unique.values())


def prune_by_magnitude(classifier, sparsity):
    """Zeroes the smallest `sparsity` share of each prunable kernel; returns [(variable, mask)]."""
    masks = []
    for variable in prunable(classifier):
        weights = keras.ops.convert_to_numpy(variable)
        k = int(round(sparsity * weights.size))
        if k == 0:
            continue
        threshold = np.partition(np.abs(weights).reshape(-1), k - 1)[k - 1]
        mask = (np.abs(weights) > threshold).astype(weights.dtype)
        variable.assign(weights * mask)
        masks.append((variable, mask))
    return masks


def measured_sparsity(classifier):
    """Share of zeros in the prunable kernels."""
    arrays = [keras.ops.convert_to_numpy(v) for v in prunable(classifier)]
    return float(sum((a == 0).sum() for a in arrays) / max(sum(a.size for a in arrays), 1))


class HoldSparsity(keras.callbacks.Callback):
    """Sets the pruned entries back to zero after every training step."""

    def __init__(self, masks):
        super().__init__()
        self.masks = [(variable, keras.ops.convert_to_tensor(mask)) for variable, mask in masks]

    def on_train_batch_end(self, batch, logs=None):
        for variable, mask in self.masks:
            variable.assign(variable * mask)
