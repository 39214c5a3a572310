"""Tokenized text: one tokenizer pass gives each text's features and length.

    features, lengths = tokenize(texts, preprocessor, inputs=("token_ids", "padding_mask"))
    trim_padding(x)                                     # in a tf.data map: cut to the batch

Widths are cut to an even number of tokens (`even_width`). Re-exported by `tfmp.data`.
"""

from typing import Sequence

import numpy as np

# What a BERT preprocessor produces for each text, each int [batch, sequence_length]:
# the model's inputs, the exported models' token inputs, what trimming cuts.
TOKEN_KEYS = ("token_ids", "padding_mask", "segment_ids")


def even_width(width):
    """`width` (a tf or numpy int) rounded up to even: what batches are cut to. A width a
    run has not seen costs the step ~85 ms once (XLA compiles the fused GELU per shape:
    `tfmp.xla_warmup`), ~45 a demo run; half as many for ~1.5% more tokens."""
    return width + width % 2


def trim_padding(x):
    """Cuts a preprocessed batch to its longest real sequence (`even_width`, at most --seq-len).

    A BERT with a padding mask gives the same [CLS] output for any amount of right
    padding, and tweets fill a small part of the padded length, so the cut is free
    accuracy-wise and saves most of the compute.
    """
    import tensorflow as tf

    width = tf.reduce_max(tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1))  # right-padded
    width = tf.minimum(even_width(width), tf.shape(x["padding_mask"])[1])
    # (batch, sequence_length) -> (batch, width)
    return {k: v[:, :width] if k in TOKEN_KEYS else v for k, v in x.items()}


def token_lengths(texts: Sequence[str], preprocessor) -> np.ndarray:
    """Packed length of each text ([CLS] + WordPieces + [SEP]), before truncation."""
    return tokenize(texts, preprocessor, max_bytes=0)[1]


def tokenize(texts: Sequence[str], preprocessor, max_bytes: int = 2**28, inputs=None):
    """(features, lengths) of `texts` from one tokenizer pass: `token_lengths`, and the
    preprocessor's output ({"token_ids": int32 [n, width], ...}) cut to the longest text,
    or None past `max_bytes` at --seq-len (256 MB: 3.7M texts of 64 tokens, 580k of 512).
    A dataset of features (`Split.features`) has no tokenizer graph: tf.data optimizes a
    dataset's functions anew for each iterator, two an epoch (training, validation):
    0.16 s each for BERT's WordPiece graph on this CPU, 1.1 s for RoBERTa's BPE.
    `inputs` (the backbone's, `families.Family.features`) lets one tokenizer graph
    give both (`_packer`); without them the preprocessor's graph runs beside it,
    and tracing RoBERTa's BPE graph costs 5-8 s (4,400 ops) each time on this CPU."""
    import tensorflow as tf

    if len(texts) == 0:
        return None, np.zeros((0,), np.int64)
    tokenizer = preprocessor.tokenizer
    keep = len(texts) * preprocessor.sequence_length * 9 <= max_bytes  # int32 + bool + int32
    pack = _packer(preprocessor, inputs) if keep and inputs else None

    def lengths_of(batch):  # the tokenizer's output is ragged: it sets no sequence_length
        tokens = tokenizer(batch)
        lengths = tokens.row_lengths() + 2
        if not keep:
            return lengths
        return (pack(tokens) if pack else preprocessor(batch)), lengths

    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    batches = list(tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string))
                   .batch(1024).map(lengths_of, num_parallel_calls=tf.data.AUTOTUNE)
                   .with_options(options).as_numpy_iterator())
    if not keep:
        return None, np.concatenate(batches).astype(np.int64)
    features = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    width = int(features["padding_mask"].sum(axis=1).max())  # cut as `trim_padding` cuts
    width = min(even_width(width), features["padding_mask"].shape[1])
    return ({k: v[:, :width] if k in TOKEN_KEYS else v for k, v in features.items()},
            np.concatenate([b[1] for b in batches]).astype(np.int64))


def _packer(preprocessor, inputs):
    """tokens -> the preprocessor's features named in `inputs`, or None. keras-hub's text
    classifier preprocessors pack the tokenizer's output as below (`TextClassifier
    Preprocessor._call_tf`; RoBERTa's and DistilBERT's then drop segment_ids): written
    again here so that a pass traces one tokenizer graph, not the preprocessor's too.
    `test_families` checks every family's result against the preprocessor's own."""
    if not set(inputs) <= set(TOKEN_KEYS) or not hasattr(preprocessor, "packer"):
        return None
    if preprocessor.packer is None:  # made by `build` (after the tokenizer's assets load)
        preprocessor.build(None)

    def pack(tokens):
        token_ids, segment_ids = preprocessor.packer((tokens,))
        x = {"token_ids": token_ids, "segment_ids": segment_ids,
             "padding_mask": token_ids != preprocessor.tokenizer.pad_token_id}
        return {k: x[k] for k in inputs}

    return pack
