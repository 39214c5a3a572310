"""Input pipeline: tokenized examples per second, in-graph (keras-hub's WordPiece on
tensorflow-text, as tfmp trains) and with Hugging Face's `tokenizers`, alternating.

Both pad/truncate to the same length with [CLS]/[SEP]; the share of examples whose token
ids agree exactly is reported, so a fast but different tokenizer would show.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def measure(model_dir, texts, repeats=3, batch_size=32, seq_len=64, log=print):
    import numpy as np
    import tensorflow as tf
    from tokenizers import BertWordPieceTokenizer

    from tfmp import models

    preprocessor = models.load_preprocessor(model_dir, seq_len)
    lowercase = models._lowercase(model_dir)
    hf = BertWordPieceTokenizer(os.path.join(model_dir, "vocab.txt"), lowercase=lowercase)
    hf.enable_truncation(seq_len)
    hf.enable_padding(length=seq_len)

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string)).batch(batch_size)
    ds = ds.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def in_graph():
        return np.concatenate([np.asarray(x["token_ids"]) for x in ds])

    def hugging_face():
        return np.concatenate([
            np.asarray([e.ids for e in hf.encode_batch(texts[i:i + batch_size])], np.int32)
            for i in range(0, len(texts), batch_size)])

    in_graph(), hugging_face()  # warm-up: tracing, thread pools
    rates = {"in_graph": [], "hf_tokenizers": []}
    ids = {}
    for r in range(repeats):
        order = [("in_graph", in_graph), ("hf_tokenizers", hugging_face)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            ids[name] = fn()
            rates[name].append(len(texts) / (time.perf_counter() - start))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]:.0f} ex/s" for k, v in rates.items()))
    agreement = float(np.mean(np.all(ids["in_graph"] == ids["hf_tokenizers"], axis=1)))
    return {
        "examples": len(texts),
        "in_graph_examples_per_second": common.median(rates["in_graph"]),
        "hf_tokenizers_examples_per_second": common.median(rates["hf_tokenizers"]),
        "ratio_in_graph_over_hf": common.paired_ratio(rates["in_graph"], rates["hf_tokenizers"]),
        "token_id_agreement": agreement,
        "rounds": rates,
    }
