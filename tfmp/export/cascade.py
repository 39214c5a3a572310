"""The `cascade_int8_fp32` export variant: TFLite int8 first, float32 for unsure inputs.

    cascade/cascade.json   {"fast": "../tflite/model_int8.tflite",
                            "slow": "../tflite/model_fp32.tflite", "margin": ...}

Writes no model of its own: it points at the two TFLite files (so it requires both)
and stores the answer margin below which an input is re-run in float32, chosen on
the run's validation split (`precision.cascade_margin`). Its gate asks for 99.9%
argmax agreement with the float32 Keras model on the test split.
"""

import os

import numpy as np

from tfmp import files, precision
from tfmp.export.gate import Gate
from tfmp.export.variant import Variant
from tfmp.serve import cascade

FAST, SLOW = "tflite_int8", "tflite_fp32"


def _write(ctx):
    from tfmp.serve.litert import TFLiteClassifier

    paths = {v.name: ctx.where(v) for v in ctx.variants if v.name in (FAST, SLOW)}
    texts = list(ctx.calibration) or []
    record = {"fast": os.path.relpath(paths[FAST], os.path.dirname(ctx.path)),
              "slow": os.path.relpath(paths[SLOW], os.path.dirname(ctx.path))}
    if texts:
        import tensorflow as tf

        features = {k: np.asarray(v, np.int32) for k, v in
                    ctx.float32.preprocessor(tf.constant(texts)).items()}
        fast = TFLiteClassifier(paths[FAST]).predict(features)
        slow = TFLiteClassifier(paths[SLOW]).predict(features)
        margin = precision.cascade_margin(fast, slow)
        fast_share = float(np.mean(precision.answer_margin(fast) >= margin))
        record.update(margin=margin, calibration={
            "split": "validation", "examples": len(texts), "fast_share": fast_share,
            "int8_agreement": float(np.mean(fast.argmax(-1) == slow.argmax(-1)))})
    else:  # nothing to calibrate on: every input goes to float32
        record.update(margin=2.0, calibration={"split": None, "examples": 0})  # > any margin
    files.write_json(ctx.path, record)


def read(path):
    """Predictor of the cascade at `path`: token arrays -> probabilities."""
    return cascade.from_config(path).predict


CASCADE = Variant(
    name="cascade_int8_fp32", path="cascade/cascade.json", write=_write, read=read,
    gate=Gate(min_agreement=0.999), inputs="tokens", requires=(SLOW, FAST),
    measured_with="the int8 and float32 TFLite files, margin from the validation split")
