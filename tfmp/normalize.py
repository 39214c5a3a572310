"""Text normalisation that Hugging Face tokenizers apply and keras-hub's leave out.

    tokenizer = NormalizingAlbertTokenizer(proto="spiece.model")   # lowercases, strips accents
    tokenizer = NormalizingBertTokenizer(vocabulary="vocab.txt")    # HF's BertNormalizer

keras-hub's `AlbertTokenizer` hands raw text to SentencePiece, while Hugging Face's
ALBERT tokenizer (`do_lower_case=True, keep_accents=False`, the released checkpoints'
settings) first replaces `` and '' with ", decomposes (NFKD), drops combining marks and
lowercases: without the same steps every capital letter of a tweet is a different
piece (or <unk>) than the checkpoint was pre-trained on.

keras-hub's WordPiece (BERT, DistilBERT) lowercases with NFKC case folding, which also
rewrites "…" as "...", full-width "，" as "," and "ß" as "ss", and splits words at control
characters; Hugging Face's `BertNormalizer` deletes control characters, turns every
space separator into " ", strips accents (NFD, drop Mn) and lowercases, with no NFKC.
`NormalizingBertTokenizer` runs HF's steps and then keras-hub's WordPiece with its own
lowercasing and accent stripping off.

Both run in the graph (tensorflow-text); `tfmp.serve.tokenizers` does the same in
Python for serving without TensorFlow. `benchmarks/tokenizer_parity.py` measures both
against transformers.
"""

import keras
import keras_hub

from tfmp.serve.tokenizers import bert_normalize, python_normalize, spaces_normalize


def graph_spaces(inputs, lowercase=False, strip_accents=False):
    """`spaces_normalize` (XLM-R's) on a string tensor."""
    import tensorflow as tf

    return tf.strings.regex_replace(inputs, _RE2_SPACES, " ")


# tfmp.serve.tokenizers.SPACES in RE2's syntax.
_RE2_SPACES = (r"[\x{b}\x{c}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}"
               r"\x{205f}\x{3000}]")


def graph_normalize(inputs, lowercase=True, strip_accents=True):
    """`python_normalize` (ALBERT's) on a string tensor, with TensorFlow ops."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    x = graph_spaces(tf.strings.regex_replace(inputs, "``|''", '"'))
    if strip_accents:
        x = tf_text.normalize_utf8(x, "NFKD")
        x = tf.strings.regex_replace(x, r"\p{M}", "")  # HF strips every mark (Mn, Mc, Me)
    if lowercase:
        x = tf.strings.lower(x, encoding="utf-8")
    return x


def graph_bert_normalize(inputs, lowercase=True, strip_accents=True):
    """`bert_normalize` (HF's BertNormalizer) on a string tensor, with TensorFlow ops."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    # Control and format characters (category C*, but not tab/newline/CR) go; so do
    # NUL and U+FFFD. Every space separator (Zs) becomes a plain space.
    x = tf.strings.regex_replace(inputs, r"[\x{0}\x{FFFD}]|[^\P{C}\t\n\r]", "")
    x = tf.strings.regex_replace(x, r"\p{Zs}", " ")
    if strip_accents:
        x = tf_text.normalize_utf8(x, "NFD")
        x = tf.strings.regex_replace(x, r"\p{Mn}", "")
    if lowercase:
        x = tf.strings.lower(x, encoding="utf-8")
    return x


class _Normalizing:
    """A keras-hub tokenizer that normalises its input first (graph or Python)."""

    _graph, _python = staticmethod(graph_normalize), staticmethod(python_normalize)
    normalizer = "albert"  # tfmp's tokenizer.json names it for tfmp.serve.tokenizers

    def _normalized(self, inputs):
        import tensorflow as tf

        settings = (self.normalize_lowercase, self.normalize_strip_accents)
        if tf.is_tensor(inputs) or isinstance(inputs, tf.RaggedTensor):
            return self._graph(inputs, *settings)
        if isinstance(inputs, (str, bytes)):
            return self._python(inputs.decode() if isinstance(inputs, bytes) else inputs,
                                *settings)
        return [self._python(t.decode() if isinstance(t, bytes) else str(t), *settings)
                for t in inputs]

    def tokenize(self, inputs, *args, **kwargs):
        return super().tokenize(self._normalized(inputs), *args, **kwargs)

    def get_config(self):
        return dict(super().get_config(), normalize_lowercase=self.normalize_lowercase,
                    normalize_strip_accents=self.normalize_strip_accents)


@keras.saving.register_keras_serializable(package="tfmp")
class NormalizingAlbertTokenizer(_Normalizing, keras_hub.models.AlbertTokenizer):
    """keras-hub's `AlbertTokenizer` after Hugging Face ALBERT's normalisation.

    Args:
        proto: the SentencePiece model (path or bytes), as for `AlbertTokenizer`.
        normalize_lowercase: bool. Lowercase (HF's `do_lower_case`).
        normalize_strip_accents: bool. NFKD, then drop marks (HF's `not keep_accents`).
    """

    def __init__(self, proto=None, normalize_lowercase=True, normalize_strip_accents=True,
                 **kwargs):
        self.normalize_lowercase = bool(normalize_lowercase)
        self.normalize_strip_accents = bool(normalize_strip_accents)
        super().__init__(proto=proto, **kwargs)


@keras.saving.register_keras_serializable(package="tfmp")
class NormalizingXLMRobertaTokenizer(_Normalizing, keras_hub.models.XLMRobertaTokenizer):
    """keras-hub's `XLMRobertaTokenizer` with Unicode spaces as " " (Hugging Face splits
    words at them; SentencePiece alone keeps NEL and the like inside pieces)."""

    _graph, _python = staticmethod(graph_spaces), staticmethod(spaces_normalize)
    normalizer = "spaces"

    def __init__(self, proto=None, normalize_lowercase=False, normalize_strip_accents=False,
                 **kwargs):
        # XLM-R's tokenizer neither lowercases nor strips accents (kept for get_config).
        self.normalize_lowercase = self.normalize_strip_accents = False
        super().__init__(proto=proto, **kwargs)


class _NormalizingWordPiece(_Normalizing):
    _graph, _python = staticmethod(graph_bert_normalize), staticmethod(bert_normalize)
    normalizer = "bert"

    def __init__(self, vocabulary=None, normalize_lowercase=True,
                 normalize_strip_accents=True, **kwargs):
        self.normalize_lowercase = bool(normalize_lowercase)
        self.normalize_strip_accents = bool(normalize_strip_accents)
        # HF's steps ran already: keras-hub's own folding would redo them with NFKC.
        kwargs.update(lowercase=False, strip_accents=False)
        super().__init__(vocabulary=vocabulary, **kwargs)


@keras.saving.register_keras_serializable(package="tfmp")
class NormalizingBertTokenizer(_NormalizingWordPiece, keras_hub.models.BertTokenizer):
    """keras-hub's `BertTokenizer` after Hugging Face's `BertNormalizer`.

    Args:
        vocabulary: vocab.txt path or list of tokens.
        normalize_lowercase: bool. HF's `do_lower_case`.
        normalize_strip_accents: bool. HF's `strip_accents` (None there: as lowercase).
    """


@keras.saving.register_keras_serializable(package="tfmp")
class NormalizingDistilBertTokenizer(_NormalizingWordPiece,
                                     keras_hub.models.DistilBertTokenizer):
    """keras-hub's `DistilBertTokenizer` after Hugging Face's `BertNormalizer` (as
    `NormalizingBertTokenizer`)."""
