"""Inference: Keras `predict`, the float32 SavedModel and each TFLite variant of an export
(`tfmp export`), at batch 1 (p50/p99 latency) and batch 32 (examples/s), plus the peak
resident memory of each engine alone in a subprocess.

Every engine gets the same int32 token arrays (padded to 64), so tokenization, measured
in `pipeline.py`, is outside these timings: the SavedModel is called through its
`tokens` signature, the TFLite files through ai-edge-litert with 2 threads.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

ENGINES = ("keras_predict", "savedmodel_fp32", "savedmodel_bf16", "tflite_fp32", "tflite_fp16",
           "tflite_int8")
_FILES = {"savedmodel_fp32": "serving/1", "savedmodel_bf16": "serving_bf16/1",
          "tflite_fp32": "tflite/model_fp32.tflite",
          "tflite_fp16": "tflite/model_fp16.tflite", "tflite_int8": "tflite/model_int8.tflite"}


def available(export_dir):
    return [e for e in ENGINES
            if e == "keras_predict" or os.path.exists(os.path.join(export_dir, _FILES[e]))]


def load_engine(name, export_dir, model_dir, threads=2):
    """A function int32 token dict [n, 64] -> probabilities/logits [n, classes]."""
    import numpy as np

    if name == "keras_predict":
        import keras

        from tfmp import models

        classifier = models.load_classifier(model_dir, num_classes=3, sequence_length=64,
                                            policy="float32")
        # The token-level model (the classifier without its string preprocessor).
        net = keras.Model(classifier.inputs, classifier.outputs)
        return lambda x: net.predict(x, batch_size=32, verbose=0)
    if name.startswith("savedmodel"):
        import tensorflow as tf

        from tfmp.export.savedmodel import TOKENS_SIGNATURE

        serve = tf.saved_model.load(os.path.join(export_dir, _FILES[name])).signatures[
            TOKENS_SIGNATURE]
        return lambda x: serve(**{k: tf.constant(v) for k, v in x.items()})["probabilities"].numpy()
    from tfmp.export.tflite import TFLiteClassifier

    interpreter = TFLiteClassifier(os.path.join(export_dir, _FILES[name]), num_threads=threads)
    return lambda x: np.asarray(interpreter.predict(x, batch_size=32))


def tokens(model_dir, n, seq_len=64):
    import numpy as np
    import tensorflow as tf

    from tfmp import data, models

    examples = data.load_examples("airline")
    labels = data.LabelMap.from_labels(examples.labels)
    splits = data.split_examples(examples.texts, labels.ids(examples.labels), seed=0)
    texts = splits.test.texts[:n]
    x = models.load_preprocessor(model_dir, seq_len)(tf.constant(texts))
    return {k: np.asarray(x[k], np.int32) for k in ("token_ids", "padding_mask", "segment_ids")}


def _slice(x, start, stop):
    return {k: v[start:stop] for k, v in x.items()}


def measure(export_dir, model_dir, repeats=3, batches=4, singles=20, log=print):
    """Alternating rounds over all engines; returns the inference results dict."""
    from tfmp.export import check_export

    check_export(export_dir)  # a finished export only: a cut-short one may hold empty files
    engines = available(export_dir)
    x = tokens(model_dir, 32 * batches)
    fns = {}
    for name in engines:
        fns[name] = load_engine(name, export_dir, model_dir)
        fns[name](_slice(x, 0, 32)), fns[name](_slice(x, 0, 1))  # warm-up, both shapes
    throughput = {e: [] for e in engines}
    latency = {e: [] for e in engines}
    for r in range(repeats):
        for name in engines if r % 2 == 0 else engines[::-1]:
            fn = fns[name]
            start = time.perf_counter()
            for b in range(batches):
                fn(_slice(x, 32 * b, 32 * (b + 1)))
            throughput[name].append(32 * batches / (time.perf_counter() - start))
            for i in range(singles):
                t = time.perf_counter()
                fn(_slice(x, i, i + 1))
                latency[name].append(1000 * (time.perf_counter() - t))
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{e} {throughput[e][-1]:.0f} ex/s" for e in engines))
    results = {"engines": {}, "ratios": {}, "export_dir": export_dir,
               "settings": dict(repeats=repeats, batch32_batches=batches, batch1_calls=singles)}
    for name in engines:
        results["engines"][name] = {
            "batch32_examples_per_second": common.median(throughput[name]),
            "batch1_p50_ms": common.percentile(latency[name], 50),
            "batch1_p99_ms": common.percentile(latency[name], 99),
            "rounds_examples_per_second": throughput[name],
        }
    for name in engines:
        if name != "savedmodel_fp32" and "savedmodel_fp32" in engines:
            results["ratios"][f"{name} / savedmodel_fp32 (batch 32 ex/s)"] = common.paired_ratio(
                throughput[name], throughput["savedmodel_fp32"])
    return results


def peak_memory(export_dir, model_dir, log=print):
    """Peak RSS (MB) of each engine loaded and run alone in a fresh process."""
    out = {}
    for name in available(export_dir):
        cmd = [sys.executable, os.path.abspath(__file__), "--rss-worker", name,
               "--export-dir", export_dir, "--model", model_dir]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            log(f"  {name}: worker failed: {proc.stderr[-1500:]}")
            out[name] = None
            continue
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {name}: peak RSS {out[name]['peak_rss_mb']:.0f} MB")
    return out


def _rss_worker(name, export_dir, model_dir):
    import numpy as np
    import tensorflow as tf  # noqa: F401  (the runtime every engine imports anyway)

    before = common.peak_rss_mb()
    x = {k: np.ones([32, 64], np.int32) for k in ("token_ids", "padding_mask", "segment_ids")}
    fn = load_engine(name, export_dir, model_dir)
    fn(x), fn(_slice(x, 0, 1))
    print(json.dumps({"peak_rss_mb": common.peak_rss_mb(), "after_imports_mb": before}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-worker")
    parser.add_argument("--export-dir", default="saved_models/demo")
    parser.add_argument("--model", default=None)
    a = parser.parse_args()
    from tfmp import models as _models

    model_dir = a.model or _models.default_model_dir()
    if a.rss_worker:
        _rss_worker(a.rss_worker, a.export_dir, model_dir)
    else:
        print(json.dumps(measure(a.export_dir, model_dir, repeats=1, batches=1, singles=3),
                         indent=1))
