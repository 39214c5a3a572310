"""Half-precision saved versions: a SavedModel and a `.keras` whose variables are float16.

    fp16_weights/serving/1/       SavedModel, the serving signatures of `savedmodel_fp32`
    fp16_weights/model.keras      the classifier, loadable with `tfmp.models` / Keras

`savedmodel_fp16` computes in float16 but stores float32 variables, so its file is
as large as float32's. These two store every variable in float16
(`precision.HALF_WEIGHTS_POLICY`), about half the bytes, and compute in float16 too
(Keras has no float16-variables, float32-compute policy). Each is its own row, so
the report gives each its own size, and each is read back and gated like every
variant: argmax agreement with the float32 Keras model on the test split.
"""

import keras
import numpy as np

from tfmp import models, precision
from tfmp.export.gate import Gate
from tfmp.export.savedmodel import read as read_savedmodel
from tfmp.export.savedmodel import features_of, save_serving
from tfmp.export.variant import Variant, softmax


def _half(ctx):
    return models.rebuild(ctx.classifier, precision.HALF_WEIGHTS_POLICY)


def _write_savedmodel(ctx):
    save_serving(_half(ctx), ctx.label_names, ctx.path, ctx.tokenizer_files)


def _write_keras(ctx):
    models.save_inference_model(_half(ctx), ctx.path)


def read_keras(path):
    """Predictor of the `.keras` at `path`: raw strings -> probabilities."""
    import tensorflow as tf

    model = keras.saving.load_model(path, safe_mode=True,
                                    custom_objects={"BertClassifier": models.BertClassifier})

    def predict(texts):
        features = model.preprocessor(tf.constant(list(texts)))
        return softmax(np.asarray(model({k: features[k] for k in features_of(model)},
                                        training=False), np.float32))

    return predict


# float16 weights round each value to 11 significant bits; the argmax must agree as
# often as the float16-compute SavedModel's does.
SAVEDMODEL = Variant(name="savedmodel_fp16w", path="fp16_weights/serving/1",
                     write=_write_savedmodel, read=read_savedmodel,
                     gate=Gate(min_agreement=0.995), inputs="texts")
KERAS = Variant(name="keras_fp16w", path="fp16_weights/model.keras", write=_write_keras,
                read=read_keras, gate=Gate(min_agreement=0.995), inputs="texts")
