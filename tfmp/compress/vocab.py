"""Vocabulary pruning: keep the wordpieces the training split uses, and their embedding rows.

    kept = used_tokens(teacher.preprocessor, splits.train.texts)   # sorted teacher ids
    preprocessor = pruned_preprocessor(teacher.preprocessor, kept)

MiniLM's token embedding is 30,522 x 384, half of its 22.7M parameters, and the
other pruning leaves it whole: at int8 it alone is 11.7 MB. Airline tweets use a
few thousand of those wordpieces. The student keeps every wordpiece the training
split's tokenization uses, the special tokens, and every single-character piece
(`a`, `##a`, ...), so that any word of known characters still spells out instead of
becoming [UNK]. A training text tokenizes to the same pieces as before (each id
mapped to its new row); a text with a word never seen in training may split it
into other, shorter pieces.
"""

import numpy as np


def used_tokens(preprocessor, texts, batch_size=256):
    """Sorted teacher token ids to keep: used by `texts`, special, or one character."""
    import tensorflow as tf

    tokenizer = preprocessor.tokenizer
    vocabulary = tokenizer.get_vocabulary()
    kept = set()
    for start in range(0, len(texts), batch_size):
        features = preprocessor(tf.constant(list(texts[start:start + batch_size])))
        kept.update(np.unique(np.asarray(features["token_ids"])).tolist())
    for token in list(tokenizer.special_tokens) + [tokenizer.oov_token]:
        kept.add(tokenizer.token_to_id(token))
    for i, piece in enumerate(vocabulary):
        if len(piece.removeprefix("##")) == 1:
            kept.add(i)
    return tuple(sorted(int(i) for i in kept))


def pruned_preprocessor(preprocessor, kept):
    """The teacher's preprocessor with the vocabulary cut to the ids `kept` (in order)."""
    import keras_hub

    tokenizer = preprocessor.tokenizer
    vocabulary = tokenizer.get_vocabulary()
    small = keras_hub.models.BertTokenizer(vocabulary=[vocabulary[i] for i in kept],
                                           lowercase=tokenizer.lowercase)
    return keras_hub.models.BertTextClassifierPreprocessor(
        small, sequence_length=preprocessor.sequence_length)
