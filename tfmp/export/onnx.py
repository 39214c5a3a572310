"""ONNX variants for ONNX Runtime and Triton: `onnx_fp32` and `onnx_int8`.

    onnx/model_fp32.onnx   Keras `model.export(format="onnx")` (tf2onnx) of the float32 model
    onnx/model_int8.onnx   the same, ONNX Runtime dynamic quantization (int8 weights)
    onnx/vocab.txt, onnx/tokenizer.json, onnx/labels.txt

Inputs are the family's token inputs (int32 [batch, seq_len], as the TFLite files:
tokenize with the tokenizer's files, `tfmp.serve.tokenizers` does it without
TensorFlow); the output is the float32 logits [batch, num_classes] (softmax outside,
in float64 by the runner). Needs `tf2onnx`, `onnx` and `onnxruntime` (pinned in
setup.cfg): tf2onnx 1.17.0 runs with TensorFlow 2.21 and protobuf 7.
"""

import contextlib
import logging
import os
import warnings

from tfmp import fused_matmul
from tfmp.errors import UserError
from tfmp.export.gate import Gate
from tfmp.export.savedmodel import features_of, token_specs
from tfmp.export.tflite import check_label_names, write_tokenizer
from tfmp.export.variant import Variant
from tfmp.serve import onnx as onnx_runner

QUANTIZATIONS = ("fp32", "int8")


def _need(module):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"The ONNX variants need {module}: `pip install tf2onnx==1.17.0 "
                        "onnx==1.23.2 onnxruntime==1.31.1`, or export without them "
                        "(--variants without onnx_fp32,onnx_int8).") from None


def _write(ctx):
    """Writes both ONNX files at the first ONNX variant's turn (one conversion)."""
    if os.path.exists(ctx.path):
        return
    _need("tf2onnx")
    quantization = _need("onnxruntime.quantization")
    directory = os.path.dirname(ctx.path)
    fp32 = os.path.join(directory, "model_fp32.onnx")
    length = int(ctx.float32.preprocessor.sequence_length)
    wanted = {v.name for v in ctx.variants}
    # Keras' Dense calls, not tfmp.fused_matmul's: faster in ONNX Runtime.
    with _quiet(), _erf_gelu(ctx.float32), fused_matmul.keras_products(ctx.float32):
        # One dict of int32 [batch, seq_len] specs: the classifier's own inputs.
        ctx.float32.export(fp32, format="onnx", verbose=False,
                           input_signature=[token_specs(length, features_of(ctx.float32))])
        if "onnx_int8" in wanted:
            # Per channel, as TFLite's int8: per-tensor scales (the default) flipped 4.6%
            # of the demo's test answers and cost class "positive" 5.1 recall points
            # (refused by the per-class gate); per channel: 1.2% and under 0.5 points.
            quantization.quantize_dynamic(fp32, os.path.join(directory, "model_int8.onnx"),
                                          weight_type=quantization.QuantType.QInt8,
                                          per_channel=True)
    if "onnx_fp32" not in wanted:
        os.remove(fp32)
    write_tokenizer(ctx, directory)


def _gelu_erf(x):
    import tensorflow as tf

    # Exact GELU through erf: TF's own lowers to Erfc, which tf2onnx 1.17 cannot convert.
    return 0.5 * x * (1.0 + tf.math.erf(x * 0.7071067811865476))


@contextlib.contextmanager
def _erf_gelu(classifier):
    """Exact-GELU layers (DistilBERT, RoBERTa, XLM-R) compute it through erf while traced."""
    import keras

    swapped = [layer for layer in classifier._flatten_layers()
               if getattr(layer, "activation", None) is keras.activations.gelu]
    for layer in swapped:
        layer.activation = _gelu_erf
    try:
        yield
    finally:
        for layer in swapped:
            layer.activation = keras.activations.gelu


@contextlib.contextmanager
def _quiet():
    """Keras' tf2onnx patch warns about np.object and ONNX Runtime's quantizer suggests
    pre-processing on the root logger: advice for their developers, not for tfmp's users."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        root.setLevel(level)


def read(path):
    """Predictor of the .onnx file at `path`: token arrays -> probabilities."""
    return onnx_runner.OnnxClassifier(path)


def _variant(quantization, gate):
    return Variant(name=f"onnx_{quantization}", path=f"onnx/model_{quantization}.onnx",
                   write=_write, read=read, gate=gate, inputs="tokens",
                   check=check_label_names)


# Same float32 graph as TFLite fp32's; int8 as TFLite int8's gate.
FP32 = _variant("fp32", Gate(min_agreement=0.999))
INT8 = _variant("int8", Gate(min_agreement=0.98, max_accuracy_drop=0.01))
