"""A float32 classifier as TFLite flatbuffers, and a runner for them.

    write_tflite(classifier, {"fp32": "tflite/model_fp32.tflite", "int8": "tflite/model_int8.tflite"})
    probabilities = TFLiteClassifier("tflite/model_int8.tflite").predict(features)  # serve.litert

Inputs are the family's `token_ids`, `padding_mask` (and `segment_ids` for BERT and
ALBERT) (int32 [batch, seq_len], the preprocessor's output: TFLite has no
tensorflow-text ops, so the app tokenizes with the tokenizer's files beside the
model: vocab.txt, vocab.json + merges.txt, or the SentencePiece model); the output is `probabilities` (float32
[batch, num_classes]). The batch dimension is dynamic; the sequence length is fixed
to the one the model was trained with.

Four export variants, `tflite_fp32`, `tflite_fp16`, `tflite_int8` and
`tflite_sparse`, written together into `tflite/` with the tokenizer's files, `labels.txt` and
`tokenizer.json` (the tokenizer's settings, so `tfmp predict` tokenizes as the graph
does without TensorFlow). `tflite_sparse` (float32 weights, the converter's
`EXPERIMENTAL_SPARSITY`) is for models pruned by `tfmp compress --sparsity`; on a model
without such zeros it is skipped, with the reason in the report (`sparse_reason`).
"""

import os
import shutil

import tensorflow as tf

from tfmp import families, files, fused_matmul
from tfmp.errors import UserError
from tfmp.export.gate import SIZE_REFERENCE, Gate
from tfmp.export.savedmodel import features_of, token_specs
from tfmp.export.variant import Variant
from tfmp.serve import tokenizers
from tfmp.serve.litert import TFLiteClassifier  # noqa: F401  (re-exported)

# Every character str.splitlines() ends a line at: a label name holding one would
# shift every later class by a line in labels.txt.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"

# Weight storage of each TFLite variant. Compute stays float32 in all of them on CPU:
# float16 weights are dequantized on load, int8 weights (dynamic range) are
# dequantized per op, with activations quantized on the fly where a kernel allows;
# "sparse" stores float32 matrices with enough zeros in a sparse encoding (values
# and indices), densified by the interpreter: smaller file, same arithmetic.
# No int8 + sparsity variant: the converter writes one (0.89x tflite_int8's bytes on
# the 80%-sparse MiniLM student), but ai-edge-litert's default interpreter cannot
# load it (XNNPACK fails to prepare its sparse hybrid FULLY_CONNECTED nodes).
QUANTIZATIONS = ("fp32", "fp16", "int8", "sparse")
# The share of zeros in the encoder and pooler matrices under which `tflite_sparse`
# is skipped: the converter's own threshold (TFLite's DenseToSparse pass keeps a
# tensor dense below kMinSparsityLevel = 0.3), so the file would equal tflite_fp32's.
MIN_SPARSITY = 0.3


def _concrete_function(classifier):
    sequence_length = classifier.preprocessor.sequence_length

    @tf.function(input_signature=[token_specs(sequence_length, features_of(classifier))])
    def probabilities(features):
        logits = classifier(features, training=False)
        # precision.FLOAT32_ISLANDS["served softmax"]: float32 whatever the compute dtype.
        return {"probabilities": tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)}

    # Keras' Dense calls, not tfmp.fused_matmul's: faster in the TFLite interpreter.
    with fused_matmul.keras_products(classifier):
        return probabilities.get_concrete_function()


def write_tflite(classifier, paths):
    """Writes `{quantization: path}` .tflite files of `classifier` (built under float32)."""
    unknown = sorted(set(paths) - set(QUANTIZATIONS))
    if unknown:
        raise ValueError(f"quantizations must be in {QUANTIZATIONS}, got {unknown}")
    concrete = _concrete_function(classifier)
    # The converter freezes the variables its trackable object holds. These must be
    # the tf.Variables the function reads, not the Keras 3 variables wrapping them:
    # with the wrappers (or the model) as the trackable, TF 2.21 leaves
    # VAR_HANDLE/READ_VARIABLE ops without values and the interpreter returns NaN.
    variables = tf.Module()
    variables.captured = list(concrete.variables)
    for quantization, path in paths.items():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], variables)
        if quantization == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantization == "int8":
            # Dynamic range: int8 weights, no representative dataset needed.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantization == "sparse":
            converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        with open(path, "wb") as f:
            f.write(converter.convert())
    return paths


def check_label_names(label_names):
    """Refuses (`UserError`, a `ValueError`) names labels.txt cannot hold, one name per line."""
    for class_id, name in enumerate(label_names):
        if any(c in LINE_BREAKS for c in name):
            raise UserError(
                f"Label name {name!r} (class {class_id}) holds a line break: in "
                "tflite/labels.txt line i+1 names class i, and this name would shift every "
                "class after it. Rename the label in the data (or --labels) and train again, "
                "or export without the TFLite variants (--variants "
                "savedmodel_fp32,savedmodel_fp16,hf).")


def labels_text(label_names):
    """labels.txt: the name of class i on line i+1."""
    check_label_names(label_names)
    return "".join(f"{name}\n" for name in label_names)


def read(path):
    """Predictor of the .tflite file at `path`: token arrays -> probabilities."""
    return TFLiteClassifier(path).predict


def _write(ctx):
    """Writes every TFLite file of the export, at the first TFLite variant's turn.

    All files come from one traced function, so they hold the same graph and the
    model is traced once.
    """
    if os.path.exists(ctx.path):  # written at an earlier TFLite variant's turn
        return
    paths = {q: ctx.where(v) for v in ctx.variants for q in QUANTIZATIONS
             if v.name == f"tflite_{q}"}
    write_tflite(ctx.float32, paths)
    # The app tokenizes itself (no tensorflow-text ops in TFLite) and names the class.
    write_tokenizer(ctx, os.path.dirname(ctx.path))


def write_tokenizer(ctx, directory):
    """The tokenizer's files, labels.txt and tfmp's tokenizer.json (how to tokenize as
    the graph does, for `tfmp predict` without TensorFlow) into `directory`."""
    for path in ctx.tokenizer_files:
        shutil.copy(path, directory)
    files.write_atomic(os.path.join(directory, "labels.txt"), labels_text(ctx.label_names))
    family = families.by_backbone(ctx.float32.backbone)
    files.write_json(os.path.join(directory, tokenizers.SETTINGS),
                     families.tokenizer_settings(family, ctx.float32.preprocessor))


def sparse_reason(classifier):
    """Why `tflite_sparse` does not apply to `classifier` (None: it does)."""
    # (`tfmp.compress` is also the function `tfmp.compress`: import the name itself.)
    from tfmp.compress.sparsity import measured_sparsity

    zeros = measured_sparsity(classifier)
    if zeros < MIN_SPARSITY:
        return (f"{zeros:.1%} of the encoder and pooler matrices are zero, under the "
                f"{MIN_SPARSITY:.0%} the converter encodes sparsely: the file would be "
                "tflite_fp32's. Compress the run with --sparsity to use it.")
    return None


def _variant(quantization, gate, skip=None):
    return Variant(
        name=f"tflite_{quantization}", path=f"tflite/model_{quantization}.tflite",
        write=_write, read=read, gate=gate, inputs="tokens", check=check_label_names,
        # Size ratios are against tflite_fp32, so it comes with any other TFLite file.
        requires=() if quantization == "fp32" else (SIZE_REFERENCE,), skip=skip)


FP32 = _variant("fp32", Gate(min_agreement=0.999))
FP16 = _variant("fp16", Gate(min_agreement=0.995, max_size_ratio=0.52))
INT8 = _variant("int8", Gate(min_agreement=0.98, max_accuracy_drop=0.01,
                             max_size_ratio=0.30))
# A lossless re-encoding of tflite_fp32's weights: its gate, and never a larger file.
SPARSE = _variant("sparse", Gate(min_agreement=0.999, max_size_ratio=1.0),
                  skip=sparse_reason)
