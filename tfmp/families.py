"""Checkpoint families: what differs between BERT, DistilBERT, RoBERTa, XLM-R and ALBERT.

    family = family_of(model_dir)          # from config.json's model_type; InputError if unknown
    family.backbone_class().from_preset(model_dir)
    tokenizer = build_tokenizer(family, model_dir)
    FAMILIES["roberta"].features           # ("token_ids", "padding_mask")

One `Family` row per Hugging Face `model_type` keras-hub converts. Everything that
depends on the family reads it here: the backbone and preprocessor classes, the
tokenizer files of a checkpoint (and how to write them back out), the model's
inputs, the classification head, the Hugging Face class an export is loaded with,
and the TensorFlow-free tokenizer that serves TFLite/ONNX (`tfmp.serve.tokenizers`).
A new family is one row here, one weight mapping in `tfmp.export.hfweights` and,
if its tokenizer is of a new kind, one class in `tfmp.serve.tokenizers`.

keras-hub is imported where it is used: the rows are plain data.
"""

import dataclasses
import json
import os

from tfmp.errors import InputError

HEADS = {
    # backbone's own pooler (dense + tanh on the first token) -> dropout -> logits
    "pooled": "pooled_output -> dropout -> logits",
    # RoBERTa's classification head: first token -> dropout -> dense+tanh -> dropout -> logits
    "first_token_tanh": "sequence_output[:, 0] -> dropout -> pooled_dense (tanh) -> dropout -> logits",
    # DistilBERT's: first token -> pre_classifier dense+ReLU -> dropout -> logits
    "first_token_relu": "sequence_output[:, 0] -> pooled_dense (relu) -> dropout -> logits",
}


@dataclasses.dataclass(frozen=True)
class Family:
    """One checkpoint family (a Hugging Face `model_type` keras-hub converts)."""

    model_type: str  # config.json's model_type
    backbone: str  # keras_hub.models class names
    tokenizer: str
    preprocessor: str
    tokenizer_kind: str  # "wordpiece", "bpe" or "sentencepiece" (tfmp.serve.tokenizers)
    tokenizer_files: tuple  # read from the checkpoint dir, written by export
    features: tuple  # the backbone's inputs, int [batch, sequence_length] each
    head: str  # a key of HEADS
    hf_class: str  # transformers' ...ForSequenceClassification
    hf_tokenizer: str  # transformers' tokenizer class, for the hf export
    # The prefix of the backbone's weights in a ...ForSequenceClassification (or
    # ...ForMaskedLM) checkpoint; keras-hub's DistilBERT, RoBERTa and ALBERT converters
    # need it ("distilbert.embeddings..."), BERT's and XLM-R's do not.
    weights_prefix: str = ""
    # HF position rows before the first token's (RoBERTa's padding_idx + 1 = 2).
    position_offset: int = 0
    # The sentencepiece ids are shifted by the fairseq offset (XLM-R: <s> <pad> </s> <unk>).
    fairseq_offset: bool = False
    # Why `tfmp compress` refuses it (None: it compresses this family).
    compress_refusal: str | None = (
        "tfmp compress rewrites a BertBackbone (head pruning, layer dropping, vocabulary "
        "pruning and layer sharing address BERT's weights by name); this family's backbone "
        "is not one. Fine-tune and export it without compressing.")

    def backbone_class(self):
        import keras_hub

        return getattr(keras_hub.models, self.backbone)

    def preprocessor_class(self):
        import keras_hub

        return getattr(keras_hub.models, self.preprocessor)

    def tokenizer_class(self):
        if ":" in self.tokenizer:  # tfmp's own, "module:Class"
            import importlib

            module, name = self.tokenizer.split(":")
            return getattr(importlib.import_module(module), name)
        import keras_hub

        return getattr(keras_hub.models, self.tokenizer)


_WORDPIECE = dict(tokenizer_kind="wordpiece", tokenizer_files=("vocab.txt",),
                  hf_tokenizer="BertTokenizerFast")
_ROBERTA_SPECIALS = dict(position_offset=2, features=("token_ids", "padding_mask"),
                         head="first_token_tanh")

FAMILIES = {f.model_type: f for f in (
    # keras-hub's WordPiece lowercases with NFKC: tfmp.normalize runs HF's BertNormalizer.
    Family("bert", "BertBackbone", "tfmp.normalize:NormalizingBertTokenizer",
           "BertTextClassifierPreprocessor",
           features=("token_ids", "padding_mask", "segment_ids"), head="pooled",
           hf_class="BertForSequenceClassification", compress_refusal=None,
           weights_prefix="bert.", **_WORDPIECE),
    Family("distilbert", "DistilBertBackbone", "tfmp.normalize:NormalizingDistilBertTokenizer",
           "DistilBertTextClassifierPreprocessor", features=("token_ids", "padding_mask"),
           head="first_token_relu", hf_class="DistilBertForSequenceClassification",
           weights_prefix="distilbert.",
           **dict(_WORDPIECE, hf_tokenizer="DistilBertTokenizerFast")),
    Family("roberta", "RobertaBackbone", "RobertaTokenizer",
           "RobertaTextClassifierPreprocessor", tokenizer_kind="bpe",
           tokenizer_files=("vocab.json", "merges.txt"),
           hf_class="RobertaForSequenceClassification", hf_tokenizer="RobertaTokenizerFast",
           weights_prefix="roberta.",
           **_ROBERTA_SPECIALS),
    Family("xlm-roberta", "XLMRobertaBackbone", "tfmp.normalize:NormalizingXLMRobertaTokenizer",
           "XLMRobertaTextClassifierPreprocessor", tokenizer_kind="sentencepiece",
           tokenizer_files=("sentencepiece.bpe.model",), fairseq_offset=True,
           hf_class="XLMRobertaForSequenceClassification",
           hf_tokenizer="XLMRobertaTokenizerFast", weights_prefix="roberta.",
           **_ROBERTA_SPECIALS),
    # keras-hub's AlbertTokenizer skips HF's lowercasing and accent stripping.
    Family("albert", "AlbertBackbone", "tfmp.normalize:NormalizingAlbertTokenizer",
           "AlbertTextClassifierPreprocessor",
           tokenizer_kind="sentencepiece", tokenizer_files=("spiece.model",),
           features=("token_ids", "padding_mask", "segment_ids"), head="pooled",
           hf_class="AlbertForSequenceClassification", hf_tokenizer="AlbertTokenizerFast",
           weights_prefix="albert."),
)}
SUPPORTED = ", ".join(FAMILIES)


def by_backbone(backbone):
    """The `Family` of a built keras-hub backbone (a subclass counts as its parent's)."""
    for cls in type(backbone).__mro__:
        for family in FAMILIES.values():
            if family.backbone == cls.__name__:
                return family
    raise ValueError(f"No tfmp family for backbone class {type(backbone).__name__}")


def read_config(model_dir):
    """The parsed config.json of `model_dir` (InputError naming the file if unreadable)."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read '{path}' as JSON: {e}") from None
    if not isinstance(config, dict):
        raise InputError(f"'{path}' holds {type(config).__name__}, not a JSON object.")
    return config


def family_of(model_dir, config=None):
    """The `Family` of the checkpoint at `model_dir`, from its config.json's model_type."""
    config = read_config(model_dir) if config is None else config
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(
            f"'{os.path.join(model_dir, 'config.json')}' has model_type={model_type!r}; "
            f"tfmp fine-tunes checkpoints of model_type {SUPPORTED}. Pass --model with "
            "one of those.")
    return FAMILIES[model_type]


def max_positions(family, config):
    """Tokens the checkpoint can take: HF's position rows less RoBERTa's reserved ones."""
    return int(config.get("max_position_embeddings", 512)) - family.position_offset


def _tokenizer_config(model_dir):
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except ValueError as e:
            raise InputError(f"Cannot read '{path}' as JSON: {e}") from None
    return {}


def _lowercase(model_dir):
    # BERT checkpoints without a tokenizer config are almost all uncased.
    return bool(_tokenizer_config(model_dir).get("do_lower_case", True))


def build_tokenizer(family, model_dir):
    """The keras-hub (in-graph) tokenizer of the checkpoint at `model_dir`, normalising
    as the checkpoint's Hugging Face tokenizer does."""
    cls = family.tokenizer_class()
    paths = [os.path.join(model_dir, f) for f in family.tokenizer_files]
    settings = _tokenizer_config(model_dir)
    lowercase = bool(settings.get("do_lower_case", True))
    if family.tokenizer_kind == "wordpiece":
        # HF's BertTokenizer strips accents when it lowercases, unless told otherwise.
        strip = settings.get("strip_accents")
        return cls(vocabulary=paths[0], normalize_lowercase=lowercase,
                   normalize_strip_accents=lowercase if strip is None else bool(strip))
    if family.tokenizer_kind == "bpe":
        return cls(vocabulary=paths[0], merges=paths[1])
    if family.model_type == "albert":
        return cls(proto=paths[0], normalize_lowercase=lowercase,
                   normalize_strip_accents=not settings.get("keep_accents", False))
    return cls(proto=paths[0])


def write_tokenizer_files(family, tokenizer, directory):
    """Writes `family.tokenizer_files` of a keras-hub tokenizer into `directory`."""
    from tfmp import files

    paths = [os.path.join(directory, f) for f in family.tokenizer_files]
    if family.tokenizer_kind == "wordpiece":
        files.write_atomic(paths[0], "\n".join(tokenizer.vocabulary) + "\n")
    elif family.tokenizer_kind == "bpe":
        files.write_json(paths[0], dict(tokenizer.vocabulary))
        files.write_atomic(paths[1], "#version: 0.2\n" + "".join(
            f"{m}\n" for m in tokenizer.merges))
    else:
        proto = tokenizer.proto
        if not isinstance(proto, bytes):  # a path
            with open(proto, "rb") as f:
                proto = f.read()
        with open(paths[0], "wb") as f:
            f.write(proto)
    return paths


def tokenizer_settings(family, preprocessor):
    """`tokenizer.json` (tfmp's) for serving without TensorFlow: what `tfmp.serve.tokenizers`
    needs to tokenize and pack as the graph does."""
    tokenizer = preprocessor.tokenizer
    settings = {"kind": family.tokenizer_kind, "family": family.model_type,
                "files": list(family.tokenizer_files), "features": list(family.features),
                "sequence_length": int(preprocessor.sequence_length)}
    if family.tokenizer_kind == "wordpiece":
        settings.update(lowercase=bool(tokenizer.lowercase),
                        strip_accents=bool(tokenizer.strip_accents),
                        split_on_cjk=bool(tokenizer.split_on_cjk),
                        oov_token=tokenizer.oov_token,
                        suffix_indicator=tokenizer.suffix_indicator)
    if family.tokenizer_kind == "wordpiece":
        ids = [tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
    else:
        ids = [tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id]
    settings.update(zip(("start", "end", "pad"), map(int, ids)),
                    fairseq_offset=family.fairseq_offset)
    if hasattr(tokenizer, "normalize_lowercase"):
        # tfmp.normalize's tokenizers: the same steps before WordPiece / SentencePiece.
        settings["normalize"] = {"lowercase": tokenizer.normalize_lowercase,
                                 "strip_accents": tokenizer.normalize_strip_accents}
        settings["normalizer"] = tokenizer.normalizer
    return settings
