"""Every exported variant as one kind of object: a function from texts to probabilities.

    runner = open_variant("saved_models/demo", "tflite_int8", report)
    runner(["@united lost my bag again"])    # float32 [n, classes]; runner.labels

How a variant runs is chosen by its name's kind (`KINDS`: the part before the first
underscore). TFLite, ONNX and cascade runners import neither TensorFlow nor Keras:
they tokenize with `tokenizers.from_directory` (WordPiece, byte-level BPE or
SentencePiece, as the family's graph does). SavedModels tokenize in-graph (tensorflow
and tensorflow_text); `hf/` is read with keras-hub, as `tfmp export` measures it, and a
`.keras` file (`keras_fp16w`) with Keras.
"""

import os

import numpy as np

from tfmp.errors import InputError
from tfmp.serve import tokenizers
from tfmp.serve.litert import TFLiteClassifier

# Kinds that answer without TensorFlow or Keras.
TF_FREE = ("tflite", "onnx", "cascade")


class Runner:
    """Texts in, float32 probabilities [n, classes] out; `labels` names the classes."""

    def __init__(self, name, labels, predict, tensorflow):
        self.name, self.labels, self._predict = name, tuple(labels), predict
        self.tensorflow = tensorflow  # whether it imported TensorFlow

    def __call__(self, texts):
        return np.asarray(self._predict(list(texts)), np.float32)


def _tokenized(model, tokenizer):
    return lambda texts: model(tokenizer(texts))


def _savedmodel(path):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer's ops)

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda texts: serve(text=tf.constant(texts))["probabilities"].numpy()


def _tflite(path):
    model = TFLiteClassifier(path)
    tokenizer = tokenizers.from_directory(os.path.dirname(path))
    return _tokenized(lambda f: model.predict(f, batch_size=len(f["token_ids"])), tokenizer)


def _hf(path):
    from tfmp import families, models
    from tfmp.export import huggingface

    # hf/ is read with keras-hub (as export measured it), so it tokenizes in-graph with
    # the checkpoint's own tokenizer files, as `tfmp train --model hf/` would.
    import tensorflow as tf

    length = families._tokenizer_config(path).get("model_max_length", 512)
    preprocessor = models.load_preprocessor(path, int(length))
    features = families.family_of(path).features

    def tokenizer(texts):
        tokens = preprocessor(tf.constant(list(texts)))
        return {k: tokens[k].numpy() for k in features}

    return _tokenized(huggingface.read(path), tokenizer)


def _onnx(path):
    from tfmp.serve import onnx

    return _tokenized(onnx.OnnxClassifier(path), tokenizers.from_directory(
        os.path.dirname(path)))


def _keras(path):
    from tfmp.export import halfweights  # a .keras file (keras_fp16w): Keras reads it

    return halfweights.read_keras(path)


def _cascade(path):
    from tfmp.serve import cascade

    return cascade.open_cascade(path, open_path)


# {kind: open(path) -> predict(texts)}
KINDS = {"savedmodel": _savedmodel, "tflite": _tflite, "hf": _hf, "onnx": _onnx,
         "cascade": _cascade, "keras": _keras}


def kind_of(name):
    return name.split("_")[0]


def open_path(name, path):
    """predict(texts) of variant `name` whose files are at `path`."""
    kind = kind_of(name)
    if kind not in KINDS:
        raise InputError(f"tfmp predict cannot run variant {name!r} (no runner for "
                         f"{kind!r}); choose one of {sorted(KINDS)}' variants.")
    return KINDS[kind](path)


def open_variant(export_dir, name, report):
    """The `Runner` of variant `name` of the export at `export_dir` (its report given)."""
    row = report["variants"].get(name)
    if row is None:
        raise InputError(f"'{export_dir}' has no variant {name!r}; it has "
                         f"{sorted(report['variants'])}. Pass one of them to --variant.")
    if not row.get("passed", True):
        raise InputError(f"Variant {name!r} of '{export_dir}' failed its gate.")
    predict = open_path(name, os.path.join(export_dir, row["path"]))
    return Runner(name, report["labels"], predict, kind_of(name) not in TF_FREE)
