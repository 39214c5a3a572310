"""Text normalisation that Hugging Face tokenizers apply and keras-hub's leave out.

    tokenizer = NormalizingAlbertTokenizer(proto="spiece.model")   # lowercases, strips accents

keras-hub's `AlbertTokenizer` hands raw text to SentencePiece, while Hugging Face's
ALBERT tokenizer (`do_lower_case=True, keep_accents=False`, the released checkpoints'
settings) first replaces `` and '' with ", decomposes (NFKD), drops combining marks and
lowercases: without the same steps every capital letter of a tweet is a different
piece (or <unk>) than the checkpoint was pre-trained on. This module runs those steps
in the graph (tensorflow-text); `tfmp.serve.tokenizers.python_normalize` does the same in
Python for serving without TensorFlow; `benchmarks/tokenizer_parity.py`
measures both against transformers.
"""

import keras
import keras_hub

from tfmp.serve.tokenizers import python_normalize


def graph_normalize(inputs, lowercase=True, strip_accents=True):
    """`python_normalize` on a string tensor, with TensorFlow ops."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    x = tf.strings.regex_replace(inputs, "``|''", '"')
    if strip_accents:
        x = tf_text.normalize_utf8(x, "NFKD")
        x = tf.strings.regex_replace(x, r"\p{M}", "")  # HF strips every mark (Mn, Mc, Me)
    if lowercase:
        x = tf.strings.lower(x, encoding="utf-8")
    return x


@keras.saving.register_keras_serializable(package="tfmp")
class NormalizingAlbertTokenizer(keras_hub.models.AlbertTokenizer):
    """keras-hub's `AlbertTokenizer` after Hugging Face ALBERT's normalisation.

    Args:
        proto: the SentencePiece model (path or bytes), as for `AlbertTokenizer`.
        lowercase: bool. Lowercase (HF's `do_lower_case`).
        strip_accents: bool. NFKD, then drop combining marks (HF's `not keep_accents`).
    """

    def __init__(self, proto=None, lowercase=True, strip_accents=True, **kwargs):
        self.lowercase, self.strip_accents = bool(lowercase), bool(strip_accents)
        super().__init__(proto=proto, **kwargs)

    def tokenize(self, inputs):
        import tensorflow as tf

        if tf.is_tensor(inputs) or isinstance(inputs, tf.RaggedTensor):
            inputs = graph_normalize(inputs, self.lowercase, self.strip_accents)
        elif isinstance(inputs, (str, bytes)):
            inputs = python_normalize(inputs.decode() if isinstance(inputs, bytes) else inputs,
                                      self.lowercase, self.strip_accents)
        else:
            inputs = [python_normalize(t.decode() if isinstance(t, bytes) else str(t),
                                       self.lowercase, self.strip_accents) for t in inputs]
        return super().tokenize(inputs)

    def get_config(self):
        return dict(super().get_config(), lowercase=self.lowercase,
                    strip_accents=self.strip_accents)
