"""keras-hub's BERT tokenization without TensorFlow: the same token ids, for LiteRT and ONNX.

    tokenizer = WordPiece.from_directory("saved_models/demo/tflite")
    features = tokenizer(["@united lost my bag again"])   # int32 [n, seq_len] TOKEN_KEYS

The exported models take token ids; in the SavedModel, keras-hub tokenizes in-graph
with tensorflow-text. This module gives the same ids, token for token, without
importing TensorFlow: keras-hub's own TensorFlow-free pre-tokenization rules (accents,
splitting on whitespace, punctuation and CJK characters, NFKC case folding that drops
default-ignorable code points) in Python with `regex`, then Hugging Face `tokenizers`'
WordPiece model (greedy longest match, `##` continuations) on the words, and the
`[CLS] ... [SEP]` packing of keras-hub's preprocessor. tfmp checks the equality
against the in-graph tokenizer in its tests (`tests/test_serve.py`).

The settings come from `tokenizer.json` (tfmp's, written by `tfmp export` beside
`vocab.txt`: `SETTINGS`).
"""

import json
import os
import unicodedata

import numpy as np

from tfmp.errors import InputError

TOKEN_KEYS = ("token_ids", "padding_mask", "segment_ids")  # as tfmp.data.TOKEN_KEYS
SETTINGS = "tokenizer.json"
# tf_text.FastWordpieceTokenizer maps a word longer than this many UTF-8 bytes to the
# unknown token (keras-hub's MAX_BYTES_PER_WORD); Hugging Face counts characters.
MAX_BYTES_PER_WORD = 100

# keras-hub's Python (TensorFlow-free) patterns of word_piece_tokenizer.py.
_WHITESPACE = r"[ \t\n\r\f]|\p{Cc}|\p{Cf}"
_PUNCTUATION = r"[!-/]|[:-@]|[\[-`]|[{-~]|[\p{P}]"
_CJK = (r"[\u4E00-\u9FFF]|[\u3400-\u4DBF]|[\U00020000-\U0002A6DF]|[\U0002A700-\U0002B73F]"
        r"|[\U0002B740-\U0002B81F]|[\U0002B820-\U0002CEAF]|[\uF900-\uFAFF]"
        r"|[\U0002F800-\U0002FA1F]")
# Unicode default-ignorable code points, which NFKC_Casefold drops (keras-hub's table).
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
              (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
              (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
              (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
              (0xE0000, 0xE0FFF))


def bert_normalize(text, lowercase=True, strip_accents=True):
    """Hugging Face's BertNormalizer (clean text, strip accents, lowercase), in Python;
    CJK characters are split later, by the WordPiece pre-tokenizer."""
    text = "".join(" " if unicodedata.category(c) == "Zs" else c for c in text
                   if c in "\t\n\r" or (c not in "\x00\ufffd"
                                          and not unicodedata.category(c).startswith("C")))
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    return text.lower() if lowercase else text


def casefold(text):
    """tf_text.case_fold_utf8: NFKC_Casefold, which also drops default ignorables."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return "".join(c for c in text if not any(lo <= ord(c) <= hi for lo, hi in _IGNORABLE))


def read_settings(directory):
    """tfmp's tokenizer.json in an export directory; InputError saying what to do."""
    path = os.path.join(directory, SETTINGS)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"'{directory}' has no {SETTINGS} (exported by an older tfmp): "
                         "export the run again (`tfmp export RUN_DIR --overwrite`) to "
                         "serve it without TensorFlow.") from None
    except ValueError as e:
        raise InputError(f"{path}: not JSON ({e}); export the run again.") from None


class WordPiece:
    """A BERT WordPiece tokenizer and packer, without TensorFlow.

    Args:
        vocabulary_file: str. vocab.txt, one token per line (line i is id i).
        sequence_length: int. Packed length, `[CLS]` and `[SEP]` included.
        lowercase: bool. NFKC case folding (keras-hub's `lowercase`).
        strip_accents: bool. NFD, then drop combining marks.
        split_on_cjk: bool. Each CJK character is its own word.
    """

    def __init__(self, vocabulary_file, sequence_length, lowercase=True, strip_accents=False,
                 split_on_cjk=True, oov_token="[UNK]", suffix_indicator="##",
                 features=TOKEN_KEYS, normalize=None):
        import regex
        from tokenizers import Tokenizer, models

        with open(vocabulary_file, encoding="utf-8") as f:
            vocabulary = f.read().splitlines()
        self.vocabulary = {token: i for i, token in enumerate(vocabulary)}
        self.sequence_length = int(sequence_length)
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.features = tuple(features)  # the model's inputs (DistilBERT: no segment_ids)
        # {lowercase, strip_accents} of HF's BertNormalizer, run first (tfmp.normalize's
        # tokenizers); None for a keras-hub BertTokenizer (runs from before them).
        self.normalize = normalize
        delimiters = "|".join([_WHITESPACE, _PUNCTUATION] + ([_CJK] if split_on_cjk else []))
        self._delimiter = regex.compile(delimiters)
        self._keep = regex.compile("|".join([_PUNCTUATION] + ([_CJK] if split_on_cjk else [])))
        self._oov = oov_token
        self._model = Tokenizer(models.WordPiece(
            self.vocabulary, unk_token=oov_token, continuing_subword_prefix=suffix_indicator,
            max_input_chars_per_word=4 * MAX_BYTES_PER_WORD))
        self._cls, self._sep = self.vocabulary["[CLS]"], self.vocabulary["[SEP]"]
        self._pad = self.vocabulary.get("[PAD]", 0)

    @classmethod
    def from_directory(cls, directory, settings=None):
        """The tokenizer of an export directory holding vocab.txt and tokenizer.json
        (`settings`: that file, if already read)."""
        settings = read_settings(directory) if settings is None else settings
        keys = ("sequence_length", "lowercase", "strip_accents", "split_on_cjk", "oov_token",
                "suffix_indicator", "features", "normalize")
        return cls(os.path.join(directory, "vocab.txt"),
                   **{k: settings[k] for k in keys if k in settings})

    def words(self, text):
        """keras-hub's pre-tokenization of one text (accents, split, case folding)."""
        if self.normalize:
            text = bert_normalize(text, **self.normalize)
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text)
            text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, position = [], 0
        for match in self._delimiter.finditer(text):
            if match.start() > position:
                words.append(text[position:match.start()])
            if self._keep.fullmatch(match.group()):
                words.append(match.group())
            position = match.end()
        if position < len(text):
            words.append(text[position:])
        if self.lowercase:
            words = [casefold(w) for w in words]
        # A word folded to nothing (only ignorables) is an empty string in the graph too,
        # which WordPiece drops; so is a word longer than the graph's byte limit: [UNK].
        return [w if len(w.encode("utf-8")) <= MAX_BYTES_PER_WORD else self._oov
                for w in words if w]

    def tokenize(self, texts):
        """Token ids of each text, without packing (a list of lists of int)."""
        batch = [self.words(t) for t in texts]
        encoded = self._model.encode_batch(
            [w or [""] for w in batch], is_pretokenized=True, add_special_tokens=False)
        return [e.ids if w else [] for e, w in zip(encoded, batch)]

    def __call__(self, texts):
        """{TOKEN_KEYS: int32 [n, sequence_length]}: `[CLS] ids [SEP]`, padded with 0."""
        n, length = len(texts), self.sequence_length
        token_ids = np.full((n, length), self._pad, np.int32)
        padding_mask = np.zeros((n, length), np.int32)
        for i, ids in enumerate(self.tokenize(texts)):
            row = [self._cls] + ids[:length - 2] + [self._sep]
            token_ids[i, :len(row)] = row
            padding_mask[i, :len(row)] = 1
        out = {"token_ids": token_ids, "padding_mask": padding_mask,
               "segment_ids": np.zeros((n, length), np.int32)}
        return {k: out[k] for k in self.features}


def settings_of(preprocessor):
    """The `tokenizer.json` content for a keras-hub BERT preprocessor (at export)."""
    tokenizer = preprocessor.tokenizer
    return {"sequence_length": int(preprocessor.sequence_length),
            "lowercase": bool(tokenizer.lowercase),
            "strip_accents": bool(tokenizer.strip_accents),
            "split_on_cjk": bool(tokenizer.split_on_cjk),
            "oov_token": tokenizer.oov_token,
            "suffix_indicator": tokenizer.suffix_indicator}
