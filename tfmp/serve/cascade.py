"""The confidence cascade: int8 answers, float32 re-answers the inputs int8 is unsure of.

    cascade = Cascade("tflite/model_int8.tflite", "tflite/model_fp32.tflite", margin=0.31)
    probabilities = cascade.predict(features)       # token arrays in
    cascade.fast_share                               # share answered by int8 alone

Every input runs through the int8 model; those whose answer margin (top-1 minus top-2
probability, `precision.answer_margin`) is below `margin` run again through the
float32 model, whose answer replaces int8's. The margin is chosen at export on the
validation split (`precision.cascade_margin`) and stored in `cascade/cascade.json`.
"""

import os

import numpy as np

from tfmp import files, precision
from tfmp.serve.litert import TFLiteClassifier

CONFIG = "cascade.json"


class Cascade:
    """int8 first, float32 below `margin`; counts how many inputs stayed on int8."""

    def __init__(self, fast_path, slow_path, margin):
        self.fast, self.slow = TFLiteClassifier(fast_path), TFLiteClassifier(slow_path)
        self.margin = float(margin)
        self.answered = self.on_fast_path = 0

    @property
    def fast_share(self):
        return self.on_fast_path / self.answered if self.answered else float("nan")

    def predict(self, features, batch_size=32):
        """float32 [n, classes] probabilities of int32 token arrays [n, seq_len]."""
        probabilities = self.fast.predict(features, batch_size=batch_size)
        unsure = np.flatnonzero(precision.answer_margin(probabilities) < self.margin)
        if len(unsure):
            again = {k: np.asarray(v)[unsure] for k, v in features.items()}
            # One at a time: the float32 interpreter stays allocated at batch 1, where a
            # new batch size each call (as many as were unsure) would re-plan its tensors
            # and re-pack XNNPACK's weights every time.
            probabilities[unsure] = self.slow.predict(again, batch_size=1)
        self.answered += len(probabilities)
        self.on_fast_path += len(probabilities) - len(unsure)
        return probabilities


def read_config(path):
    """cascade.json at `path`, with the model paths made absolute."""
    config = files.read_json(path, "Export the run again (cascade.json is its cascade "
                             "configuration).")
    here = os.path.dirname(path)
    return dict(config, fast=os.path.join(here, config["fast"]),
                slow=os.path.join(here, config["slow"]))


def from_config(path):
    config = read_config(path)
    return Cascade(config["fast"], config["slow"], config["margin"])


def open_cascade(path, open_path):
    """predict(texts) of the cascade at `path` (`open_path` is runners.open_path)."""
    from tfmp.serve import tokenizers

    cascade = from_config(path)
    tokenizer = tokenizers.from_directory(os.path.dirname(read_config(path)["fast"]))

    def predict(texts):
        features = tokenizer(texts)
        return cascade.predict(features, batch_size=len(texts))

    predict.cascade = cascade
    return predict
