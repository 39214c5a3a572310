"""A picture of float16 headroom: layers x steps, in TensorBoard's Images tab.

    HeadroomImage(log_dir, data, every=200)     # a keras callback

Every `every` steps one training batch runs through `tfmp.diagnose`'s probes on the
model as it trains (no float32 copy: an overflow shows as inf), and each leaf layer's
larger of max |activation| and max |gradient of the unscaled loss| is set against
float16's 65504 as log2(value / 65504): 0 is the limit, -10 is 1024x below it. The
columns so far are drawn as one image, `precision/headroom`, at that step.
"""

import io
import math
import os
import re

import keras
import numpy as np

from tfmp import diagnose
from tfmp.precision import FLOAT16_MAX

TAG = "precision/headroom"
# Colour range, log2 of value / 65504: below -24 everything reads as "far".
_LOW, _HIGH = -24.0, 2.0


def headroom_column(result):
    """{path: log2(peak / 65504)} of one diagnosis (peak over activation and the
    unscaled gradient; +inf where a value is not finite)."""
    out = {}
    for e in result["layers"]:
        # keras names a second model's softmax "softmax_4": one row per layer all the same.
        path = re.sub(r"/(softmax|dropout)_\d+$", r"/\1", e["path"])
        grad = (e["max_abs_gradient"] or 0.0) / (result["loss_scale"] or 1.0)
        peak = max(e["max_abs_activation"] or 0.0, grad)
        if e["nonfinite_activation"] or e["nonfinite_gradient"] or not math.isfinite(peak):
            out[path] = math.inf
        else:
            out[path] = math.log2(max(peak, 1e-30) / FLOAT16_MAX)
    return out


def render(columns):
    """PNG bytes of `columns` ([(step, {path: log2 headroom})]) as a layers x steps map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(p for _, col in columns for p in col))
    grid = np.array([[col.get(p, np.nan) for _, col in columns] for p in paths], dtype=float)
    shown = np.clip(np.where(np.isinf(grid), _HIGH, grid), _LOW, _HIGH)
    fig = plt.figure(figsize=(7 + 0.25 * len(columns), 1.5 + 0.16 * len(paths)), dpi=100)
    try:
        ax = fig.add_subplot(1, 1, 1)
        image = ax.imshow(shown, aspect="auto", cmap="magma", vmin=_LOW, vmax=_HIGH,
                          interpolation="nearest")
        ax.set_yticks(range(len(paths)))
        ax.set_yticklabels([p.replace("bert_backbone/", "") for p in paths], fontsize=6)
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels([str(s) for s, _ in columns], fontsize=7, rotation=90)
        ax.set_xlabel("step")
        ax.set_title("float16 headroom per layer (yellow: at or past 65504)", fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.04)
        bar.set_label("log2(max(|activation|, |unscaled gradient|) / 65504)", fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


class HeadroomImage(keras.callbacks.Callback):
    """Adds a column every `every` steps and writes the image to `<log_dir>/train`.

    Args:
        log_dir: str. TensorBoard log directory.
        data: a `tf.data.Dataset` of training batches (its first is probed).
        every: int. Steps between columns.
    """

    def __init__(self, log_dir, data, every=200):
        super().__init__()
        self.log_dir, self.data, self.every = log_dir, data, max(int(every), 1)
        self.columns = []
        self._writer = None

    def on_train_batch_end(self, batch, logs=None):
        from tfmp.optimizer import global_step

        step = global_step(self.model.optimizer)
        if step % self.every == 0 and (not self.columns or self.columns[-1][0] != step):
            self.add_column(step)

    def add_column(self, step):
        import tensorflow as tf

        result = diagnose.diagnose(self.model, self.data, reference=False)
        self.columns.append((step, headroom_column(result)))
        png = tf.image.decode_png(render(self.columns), channels=4)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        with self._writer.as_default(), tf.summary.record_if(True):
            tf.summary.image(TAG, png[tf.newaxis], step=step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
