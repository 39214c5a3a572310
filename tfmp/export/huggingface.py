"""Write a keras-hub BERT in Hugging Face format (the inverse of keras-hub's loader).

    save_checkpoint(backbone, vocabulary, "hf", classifier=classifier, label_names=names)

keras-hub reads Hugging Face BERT checkpoints (`convert_bert.py`) but has no BERT
exporter, so this module holds the reverse mapping, once: the tests use it to write
tiny random checkpoints, and export uses it to hand a fine-tuned classifier to
PyTorch users (`BertForSequenceClassification` loads it).

The `hf` export variant writes `hf/` with the tokenizer files `AutoTokenizer` reads
as they are, and is measured by reading `hf/` back with keras-hub (no PyTorch here).
"""

import os

import numpy as np

from tfmp import files, precision
from tfmp.errors import UserError
from tfmp.export.gate import Gate
from tfmp.export.variant import Variant, softmax


def backbone_config(backbone):
    """`config.json` content for a `keras_hub.models.BertBackbone`."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": backbone.vocabulary_size,
        "hidden_size": backbone.hidden_dim,
        "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim,
        "max_position_embeddings": backbone.max_sequence_length,
        "type_vocab_size": backbone.num_segments,
        "hidden_act": "gelu",
        "hidden_dropout_prob": backbone.dropout,
        "attention_probs_dropout_prob": backbone.dropout,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
    }


def backbone_tensors(backbone, prefix=""):
    """{Hugging Face name: float32 array} for every weight of a `BertBackbone`."""
    hidden = backbone.hidden_dim

    def get(layer, attr):
        return np.asarray(getattr(backbone.get_layer(layer), attr).numpy(), np.float32)

    def numpy(variable):
        return np.asarray(variable.numpy(), np.float32)

    t = {
        "embeddings.word_embeddings.weight": get("token_embedding", "embeddings"),
        "embeddings.position_embeddings.weight": get(
            "position_embedding", "position_embeddings"
        ),
        "embeddings.token_type_embeddings.weight": get("segment_embedding", "embeddings"),
        "embeddings.LayerNorm.weight": get("embeddings_layer_norm", "gamma"),
        "embeddings.LayerNorm.bias": get("embeddings_layer_norm", "beta"),
    }
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attn = block._self_attention_layer
        p = f"encoder.layer.{i}."
        for name, dense in (("query", attn.query_dense), ("key", attn.key_dense),
                            ("value", attn.value_dense)):
            # kernel (hidden, heads, head_dim) -> torch Linear weight (out, in)
            t[p + f"attention.self.{name}.weight"] = numpy(dense.kernel).reshape(
                hidden, hidden
            ).T
            t[p + f"attention.self.{name}.bias"] = numpy(dense.bias).reshape(hidden)
        # kernel (heads, head_dim, hidden) -> (out=hidden, in=hidden)
        t[p + "attention.output.dense.weight"] = numpy(attn.output_dense.kernel).reshape(
            hidden, hidden
        ).T
        t[p + "attention.output.dense.bias"] = numpy(attn.output_dense.bias)
        t[p + "attention.output.LayerNorm.weight"] = numpy(
            block._self_attention_layer_norm.gamma
        )
        t[p + "attention.output.LayerNorm.bias"] = numpy(block._self_attention_layer_norm.beta)
        t[p + "intermediate.dense.weight"] = numpy(
            block._feedforward_intermediate_dense.kernel
        ).T
        t[p + "intermediate.dense.bias"] = numpy(block._feedforward_intermediate_dense.bias)
        t[p + "output.dense.weight"] = numpy(block._feedforward_output_dense.kernel).T
        t[p + "output.dense.bias"] = numpy(block._feedforward_output_dense.bias)
        t[p + "output.LayerNorm.weight"] = numpy(block._feedforward_layer_norm.gamma)
        t[p + "output.LayerNorm.bias"] = numpy(block._feedforward_layer_norm.beta)
    t["pooler.dense.weight"] = get("pooled_dense", "kernel").T
    t["pooler.dense.bias"] = get("pooled_dense", "bias")
    return {prefix + k: np.ascontiguousarray(v) for k, v in t.items()}


def save_checkpoint(backbone, vocabulary, path, lowercase=True, classifier=None,
                    label_names=None, model_max_length=None):
    """Writes config.json, model.safetensors, vocab.txt and tokenizer_config.json.

    Args:
        backbone: `keras_hub.models.BertBackbone`.
        vocabulary: list of str (one token per line of vocab.txt) or a vocab.txt path.
        path: directory to write into (created).
        lowercase: bool. Written as the tokenizer's `do_lower_case`.
        classifier: optional `BertClassifier`; adds `classifier.weight/bias` and
            writes a `BertForSequenceClassification` config.
        label_names: names of the classes, for `id2label` / `label2id`.
        model_max_length: int or None. The tokenizer's truncation length (None: the
            backbone's `max_sequence_length`).
    """
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    config = backbone_config(backbone)
    if classifier is None:
        tensors = backbone_tensors(backbone)
    else:
        tensors = backbone_tensors(backbone, prefix="bert.")
        dense = classifier.output_dense
        tensors["classifier.weight"] = np.ascontiguousarray(
            np.asarray(dense.kernel.numpy(), np.float32).T
        )
        tensors["classifier.bias"] = np.asarray(dense.bias.numpy(), np.float32)
        names = list(label_names or [f"LABEL_{i}" for i in range(classifier.num_classes)])
        config["architectures"] = ["BertForSequenceClassification"]
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    files.write_json(os.path.join(path, "config.json"), config)
    if isinstance(vocabulary, (str, os.PathLike)):
        with open(vocabulary, encoding="utf-8") as f:
            vocabulary = f.read().splitlines()
    files.write_atomic(os.path.join(path, "vocab.txt"), "\n".join(vocabulary) + "\n")
    files.write_json(os.path.join(path, "tokenizer_config.json"), {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "model_max_length": model_max_length or backbone.max_sequence_length,
    })
    return path


def write(ctx):
    """The `hf` variant: `ctx.float32` as a `BertForSequenceClassification` checkpoint."""
    classifier = ctx.float32
    if getattr(classifier.backbone, "head_dim", None):  # tfmp.compress's CompactBertBackbone
        raise UserError(
            "This run's backbone has pruned attention heads or tied layers (tfmp compress), "
            "which a Hugging Face BertModel config cannot express. Export it without the "
            "hf variant: --variants savedmodel_fp32,savedmodel_fp16,savedmodel_bf16,"
            "tflite_fp32,tflite_fp16,tflite_int8,tflite_sparse,"
            "savedmodel_fp16w,keras_fp16w")
    tokenizer = classifier.preprocessor.tokenizer
    # The run trained on texts cut at its --seq-len, not the backbone's 512 positions:
    # a tokenizer that truncates later gives PyTorch users inputs the head never saw.
    length = int(classifier.preprocessor.sequence_length)
    save_checkpoint(classifier.backbone, list(tokenizer.vocabulary), ctx.path,
                    lowercase=bool(tokenizer.lowercase), classifier=classifier,
                    label_names=ctx.label_names, model_max_length=length)
    # tokenizer.json and special_tokens_map.json, so AutoTokenizer needs no conversion.
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=os.path.join(ctx.path, "vocab.txt"),
                      do_lower_case=bool(tokenizer.lowercase),
                      model_max_length=length).save_pretrained(ctx.path)


def read(path):
    """Reads `hf/` back with keras-hub's Hugging Face loader (transformers would need PyTorch)."""
    import keras_hub
    import tensorflow as tf
    from safetensors.numpy import load_file

    with precision.policy_scope(precision.serving_policy("fp32")):
        backbone = keras_hub.models.BertBackbone.from_preset(path)
    head = load_file(os.path.join(path, "model.safetensors"))
    weight, bias = head["classifier.weight"], head["classifier.bias"]

    def predict(features):
        pooled = backbone({k: tf.constant(v) for k, v in features.items()})["pooled_output"]
        return softmax(np.asarray(pooled) @ weight.T + bias)

    return predict


# A weight copy read back with keras-hub: lossless.
HF = Variant(name="hf", path="hf", write=write, read=read,
             gate=Gate(min_agreement=1.0, max_probability_difference=1e-5), inputs="tokens",
             measured_with="keras-hub reading hf/ back (no PyTorch here)")
