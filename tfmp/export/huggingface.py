"""Write a keras-hub classifier in Hugging Face format (the inverse of keras-hub's loader).

    save_checkpoint(backbone, vocabulary, "hf", classifier=classifier, label_names=names)

keras-hub reads Hugging Face checkpoints (`utils/transformers/convert_<family>.py`) but
writes none: `hfweights` holds each family's reverse mapping, and this module writes
the checkpoint (config.json, model.safetensors, the tokenizer's files and the
`tokenizer.json` that `AutoTokenizer` reads as it is). The tests use it to write tiny
random checkpoints, and export uses it to hand a fine-tuned classifier to PyTorch
users (`AutoModelForSequenceClassification` loads it, as the family's
`...ForSequenceClassification`, head included).

The `hf` export variant is measured by reading `hf/` back with keras-hub (no PyTorch
needed); the tests also run it in transformers/PyTorch where those are installed.
"""

import os

import numpy as np

from tfmp import families, files, precision
from tfmp.errors import UserError
import tfmp.export.hfweights as hfweights
from tfmp.export.gate import Gate
from tfmp.export.variant import Variant, softmax


def backbone_config(backbone):
    """`config.json` content for a keras-hub backbone of any `tfmp.families` family."""
    return hfweights.hf_backbone(backbone)[0]


def backbone_tensors(backbone, prefix=""):
    """{Hugging Face name: float32 array} for every weight of a backbone."""
    return {prefix + k: v for k, v in hfweights.hf_backbone(backbone)[1].items()}


def _write_tokenizer_config(family, path, lowercase, model_max_length, strip_accents=None):
    config = {"model_max_length": model_max_length}
    if family.tokenizer_kind == "wordpiece":
        config.update(tokenizer_class=family.hf_tokenizer.replace("Fast", ""),
                      do_lower_case=lowercase, strip_accents=strip_accents, unk_token="[UNK]",
                      sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                      mask_token="[MASK]")
    elif family.model_type == "albert":
        config.update(do_lower_case=lowercase, keep_accents=not (
            lowercase if strip_accents is None else strip_accents))
    files.write_json(os.path.join(path, "tokenizer_config.json"), config)


def save_checkpoint(backbone, vocabulary, path, lowercase=True, classifier=None,
                    label_names=None, model_max_length=None, tokenizer=None):
    """Writes config.json, model.safetensors and the tokenizer's files to `path`.

    Args:
        backbone: a keras-hub backbone of a `tfmp.families` family.
        vocabulary: BERT/DistilBERT: list of str (one token per line of vocab.txt) or a
            vocab.txt path; None with `tokenizer`.
        path: directory to write into (created).
        lowercase: bool. Written as the tokenizer's `do_lower_case`.
        classifier: optional `tfmp.models.BertClassifier`; adds its head and writes a
            `...ForSequenceClassification` config.
        label_names: names of the classes, for `id2label` / `label2id`.
        model_max_length: int or None. The tokenizer's truncation length (None: the
            backbone's `max_sequence_length`).
        tokenizer: the keras-hub tokenizer whose files to write (any family).
    """
    from safetensors.numpy import save_file

    family = families.by_backbone(backbone)
    os.makedirs(path, exist_ok=True)
    config, tensors = hfweights.hf_backbone(backbone, prefix=classifier is not None)
    if classifier is not None:
        tensors.update(hfweights.hf_head(classifier))
        names = list(label_names or [f"LABEL_{i}" for i in range(classifier.num_classes)])
        config["architectures"] = [family.hf_class]
        config["id2label"] = {str(i): n for i, n in enumerate(names)}
        config["label2id"] = {n: i for i, n in enumerate(names)}
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    files.write_json(os.path.join(path, "config.json"), config)
    if tokenizer is not None:
        families.write_tokenizer_files(family, tokenizer, path)
    else:
        if isinstance(vocabulary, (str, os.PathLike)):
            with open(vocabulary, encoding="utf-8") as f:
                vocabulary = f.read().splitlines()
        files.write_atomic(os.path.join(path, "vocab.txt"), "\n".join(vocabulary) + "\n")
    # How the tokenizer strips accents: tfmp.normalize's own setting, or a keras-hub
    # WordPiece's (which strips only when told, while HF's default follows lowercase).
    strip = getattr(tokenizer, "normalize_strip_accents", getattr(tokenizer, "strip_accents",
                                                                  None))
    _write_tokenizer_config(family, path, lowercase,
                            model_max_length or backbone.max_sequence_length,
                            None if strip is None else bool(strip))
    return path


def write(ctx):
    """The `hf` variant: `ctx.float32` as a `...ForSequenceClassification` checkpoint."""
    classifier = ctx.float32
    if getattr(classifier.backbone, "head_dim", None):  # tfmp.compress's CompactBertBackbone
        raise UserError(
            "This run's backbone has pruned attention heads or tied layers (tfmp compress), "
            "which a Hugging Face BertModel config cannot express. Export it without the "
            "hf variant: --variants savedmodel_fp32,savedmodel_fp16,savedmodel_bf16,"
            "tflite_fp32,tflite_fp16,tflite_int8,tflite_sparse,"
            "savedmodel_fp16w,keras_fp16w")
    family = families.by_backbone(classifier.backbone)
    tokenizer = classifier.preprocessor.tokenizer
    # The run trained on texts cut at its --seq-len, not the backbone's 512 positions:
    # a tokenizer that truncates later gives PyTorch users inputs the head never saw.
    length = int(classifier.preprocessor.sequence_length)
    lowercase = bool(getattr(tokenizer, "normalize_lowercase",
                             getattr(tokenizer, "lowercase", False)))
    save_checkpoint(classifier.backbone, None, ctx.path, lowercase=lowercase,
                    classifier=classifier, label_names=ctx.label_names,
                    model_max_length=length, tokenizer=tokenizer)
    # tokenizer.json and special_tokens_map.json, so AutoTokenizer needs no conversion.
    import transformers

    getattr(transformers, family.hf_tokenizer).from_pretrained(
        ctx.path, model_max_length=length).save_pretrained(ctx.path)


def read(path):
    """Reads `hf/` back with keras-hub's Hugging Face loader (transformers would need PyTorch)."""
    import tensorflow as tf
    from safetensors.numpy import load_file

    family = families.family_of(path)
    with precision.policy_scope(precision.serving_policy("fp32")):
        backbone = family.backbone_class().from_preset(path)
    t = load_file(os.path.join(path, "model.safetensors"))

    def linear(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    def predict(features):
        outputs = backbone({k: tf.constant(v) for k, v in features.items()
                            if k in family.features})
        if family.head == "pooled":  # the backbone's pooler, then the classifier
            return softmax(linear(np.asarray(outputs["pooled_output"]), "classifier"))
        first = np.asarray(outputs)[:, 0, :]  # (batch, hidden)
        if family.head == "first_token_tanh":  # RobertaClassificationHead
            return softmax(linear(np.tanh(linear(first, "classifier.dense")),
                                  "classifier.out_proj"))
        return softmax(linear(np.maximum(linear(first, "pre_classifier"), 0), "classifier"))

    return predict


# A weight copy read back with keras-hub: lossless.
HF = Variant(name="hf", path="hf", write=write, read=read,
             gate=Gate(min_agreement=1.0, max_probability_difference=1e-5), inputs="tokens",
             measured_with="keras-hub reading hf/ back (no PyTorch here)")
