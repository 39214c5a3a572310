"""Every family's tokenizer without TensorFlow: the in-graph token ids, for LiteRT and ONNX.

    tokenizer = from_directory("saved_models/demo/tflite")   # reads tfmp's tokenizer.json
    features = tokenizer(["@united lost my bag again"])       # int32 [n, seq_len] each

`tokenizer.json` (tfmp's, written by `tfmp export` beside the tokenizer's files) names
the kind (`tfmp.families`: "wordpiece", "bpe", "sentencepiece"), the files, the
model's inputs, the special ids and the packed length. WordPiece is `wordpiece.py`;
byte-level BPE (RoBERTa) runs Hugging Face `tokenizers`' BPE with GPT-2's byte-level
pre-tokenization, as keras-hub's `BytePairTokenizer` does in the graph; SentencePiece
(XLM-R, ALBERT) runs the `sentencepiece` library on the same model file that
tensorflow-text runs in the graph, with XLM-R's fairseq id offset and ALBERT's
normalisation (`python_normalize`). The tests check each against the in-graph ids.
"""

import json
import os
import unicodedata

import numpy as np

from tfmp.errors import InputError
from tfmp.serve import wordpiece
from tfmp.serve.wordpiece import bert_normalize  # noqa: F401  (tfmp.normalize imports it here)

SETTINGS = wordpiece.SETTINGS


def python_normalize(text, lowercase=True, strip_accents=True):
    """Hugging Face ALBERT's normaliser (before SentencePiece's own), in Python."""
    text = text.replace("``", '"').replace("''", '"')
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFKD", text)
                       if not unicodedata.category(c).startswith("M"))
    return text.lower() if lowercase else text


def pack(ids_per_text, settings):
    """{features: int32 [n, sequence_length]}: `start ids end`, padded, as keras-hub packs."""
    n, length = len(ids_per_text), int(settings["sequence_length"])
    token_ids = np.full((n, length), settings["pad"], np.int32)
    padding_mask = np.zeros((n, length), np.int32)
    for i, ids in enumerate(ids_per_text):
        row = [settings["start"]] + list(ids[:length - 2]) + [settings["end"]]
        token_ids[i, :len(row)] = row
        padding_mask[i, :len(row)] = 1
    out = {"token_ids": token_ids, "padding_mask": padding_mask,
           "segment_ids": np.zeros((n, length), np.int32)}
    return {k: out[k] for k in settings["features"]}


class BytePair:
    """RoBERTa's byte-level BPE (vocab.json, merges.txt) without TensorFlow."""

    def __init__(self, directory, settings):
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab, merges = (os.path.join(directory, f) for f in settings["files"])
        self.settings = settings
        self._tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                 use_regex=True)
        # keras-hub keeps its special tokens whole when they appear in the text.
        self._tokenizer.add_special_tokens(["<s>", "</s>", "<pad>", "<unk>", "<mask>"])

    def tokenize(self, texts):
        return [e.ids for e in self._tokenizer.encode_batch(list(texts),
                                                            add_special_tokens=False)]

    def __call__(self, texts):
        return pack(self.tokenize(texts), self.settings)


class SentencePiece:
    """XLM-R's or ALBERT's SentencePiece model without TensorFlow."""

    def __init__(self, directory, settings):
        import sentencepiece

        self.settings = settings
        self._model = sentencepiece.SentencePieceProcessor(
            model_file=os.path.join(directory, settings["files"][0]))
        self._normalize = settings.get("normalize")  # ALBERT: {lowercase, strip_accents}

    def tokenize(self, texts):
        if self._normalize:
            texts = [python_normalize(t, **self._normalize) for t in texts]
        ids = self._model.encode(list(texts))
        if self.settings.get("fairseq_offset"):
            # fairseq's ids: <s> <pad> </s> <unk> first, so piece i is i + 1 and the
            # model's <unk> (0) is 3 (as keras-hub's XLMRobertaTokenizer maps them).
            ids = [[3 if i == 0 else i + 1 for i in row] for row in ids]
        return ids

    def __call__(self, texts):
        return pack(self.tokenize(texts), self.settings)


def _wordpiece(directory, settings):
    return wordpiece.WordPiece.from_directory(directory)


KINDS = {"wordpiece": _wordpiece, "bpe": BytePair, "sentencepiece": SentencePiece}


def from_directory(directory):
    """The tokenizer of an export directory holding tfmp's tokenizer.json and its files."""
    path = os.path.join(directory, SETTINGS)
    try:
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    except FileNotFoundError:
        raise InputError(f"'{directory}' has no {SETTINGS} (exported by an older tfmp): "
                         "export the run again (`tfmp export RUN_DIR --overwrite`) to "
                         "serve it without TensorFlow.") from None
    except ValueError as e:
        raise InputError(f"{path}: not JSON ({e}); export the run again.") from None
    kind = settings.get("kind", "wordpiece")  # exports from before families: WordPiece
    if kind not in KINDS:
        raise InputError(f"{path}: tokenizer kind {kind!r} is not one of {sorted(KINDS)}; "
                         "export the run again with this tfmp.")
    return KINDS[kind](directory, settings)
