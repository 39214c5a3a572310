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


# Unicode White_Space that SentencePiece keeps inside pieces but Hugging Face's
# WhitespaceSplit splits at (Rust's char::is_whitespace): NEL and the like, which
# mis-encoded tweets hold (an emoji's UTF-8 bytes read as cp1252).
SPACES = "[\x0b\x0c\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def spaces_normalize(text, lowercase=False, strip_accents=False):
    """XLM-R: every Unicode space to " ", as Hugging Face's split sees them."""
    import re

    return re.sub(SPACES, " ", text)


def python_normalize(text, lowercase=True, strip_accents=True):
    """Hugging Face ALBERT's normaliser (before SentencePiece's own), in Python."""
    text = spaces_normalize(text.replace("``", '"').replace("''", '"'))
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


# keras-hub's byte-pair pre-tokenization (byte_pair_tokenizer.py), RE2 patterns in the
# `regex` module's syntax: RE2's \s is [\t\n\f\r ] only, so it is spelled out.
_S = r"\t\n\f\r "
_SPECIAL_SPACES = "\xa0\u2009\u202f\u3000"
_SPLIT_1 = (r"'s|'t|'re|'ve|'m|'ll|'d" + rf"|[{_S}{_SPECIAL_SPACES}]+[\n\r\t\f६{_SPECIAL_SPACES}]"
            + r"| ?\p{L}+| ?[\p{N}]+" + rf"| ?[^{_S}\p{{L}}\p{{N}}{_SPECIAL_SPACES}]+")
_SPLIT_2 = rf"[ \t\r\f\v६{_SPECIAL_SPACES}]\Z"  # RE2's $ is the end of the text


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (as keras-hub and `tokenizers` use)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:  # the others, in order, from U+0100 on
            table[b] = chr(256 + n)
            n += 1
    return table


def _regex_split(text, pattern):
    """tf_text.regex_split(text, pattern, pattern): the matches and the gaps between."""
    out, position = [], 0
    for match in pattern.finditer(text):
        if match.start() > position:
            out.append(text[position:match.start()])
        if match.group():
            out.append(match.group())
        position = match.end()
    if position < len(text):
        out.append(text[position:])
    return out


class BytePair:
    """RoBERTa's byte-level BPE (vocab.json, merges.txt) without TensorFlow.

    keras-hub splits words with its own RE2 version of GPT-2's pattern (it lacks the
    lookahead, and differs from GPT-2 on runs of spaces), so this runs that splitting
    (ported, `_SPLIT_1`/`_SPLIT_2`) and Hugging Face `tokenizers`' BPE on each word.
    """

    SPECIALS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")

    def __init__(self, directory, settings):
        import regex
        from tokenizers import Tokenizer, models

        vocab, merges = (os.path.join(directory, f) for f in settings["files"])
        self.settings = settings
        with open(vocab, encoding="utf-8") as f:
            self._vocabulary = json.load(f)
        self._tokenizer = Tokenizer(models.BPE.from_file(vocab, merges))
        self._byte = _bytes_to_unicode()
        self._split_1, self._split_2 = regex.compile(_SPLIT_1), regex.compile(_SPLIT_2)
        # keras-hub keeps its special tokens whole when they appear in the text.
        self._specials = regex.compile("|".join(regex.escape(t) for t in self.SPECIALS))

    def words(self, text):
        """keras-hub's split of one text into the words BPE encodes."""
        import regex

        text = regex.sub(rf"( )([^{_S}{_SPECIAL_SPACES}])", r"६\1\2", text)
        text = regex.sub(rf"([{_S}]{_SPECIAL_SPACES})\Z", r"\1६", text)
        words = []
        for piece in _regex_split(text, self._specials):
            if piece in self.SPECIALS:
                words.append(piece)
                continue
            for token in _regex_split(piece, self._split_1):
                words += _regex_split(token, self._split_2)
        return [w for w in words if w != "६"]

    def tokenize(self, texts):
        out = []
        for text in texts:
            words = self.words(text)
            mapped = ["".join(self._byte[b] for b in w.encode("utf-8"))
                      for w in words if w not in self.SPECIALS]
            encoded = iter(self._tokenizer.encode_batch(
                [[m] for m in mapped], is_pretokenized=True, add_special_tokens=False))
            ids = []
            for w in words:
                ids += [self._vocabulary[w]] if w in self.SPECIALS else next(encoded).ids
            out.append(ids)
        return out

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
        self._normalizer = (spaces_normalize if settings.get("normalizer") == "spaces"
                            else python_normalize)

    def tokenize(self, texts):
        if self._normalize:
            texts = [self._normalizer(t, **self._normalize) for t in texts]
        ids = self._model.encode(list(texts))
        if self.settings.get("fairseq_offset"):
            # fairseq's ids: <s> <pad> </s> <unk> first, so piece i is i + 1 and the
            # model's <unk> (0) is 3 (as keras-hub's XLMRobertaTokenizer maps them).
            ids = [[3 if i == 0 else i + 1 for i in row] for row in ids]
        return ids

    def __call__(self, texts):
        return pack(self.tokenize(texts), self.settings)


def _wordpiece(directory, settings):
    return wordpiece.WordPiece.from_directory(directory, settings)


KINDS = {"wordpiece": _wordpiece, "bpe": BytePair, "sentencepiece": SentencePiece}


def from_directory(directory):
    """The tokenizer of an export directory holding tfmp's tokenizer.json and its files."""
    path = os.path.join(directory, SETTINGS)
    settings = wordpiece.read_settings(directory)
    kind = settings.get("kind", "wordpiece")  # exports from before families: WordPiece
    if kind not in KINDS:
        raise InputError(f"{path}: tokenizer kind {kind!r} is not one of {sorted(KINDS)}; "
                         "export the run again with this tfmp.")
    return KINDS[kind](directory, settings)
