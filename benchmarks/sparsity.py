"""What unstructured sparsity buys in bytes: model.keras and TFLite, plain and gzipped.

    python -m benchmarks.sparsity runs/half runs/half-s80 --json benchmarks/results/sparsity.json

For each run: the share of zeros in its encoder and pooler matrices, `model.keras`
and its gzip (level 6) size, and the float32 TFLite file converted without and with
the converter's `EXPERIMENTAL_SPARSITY` optimisation (and their gzip sizes). The
sparse TFLite file is run on 64 test tweets against the plain one (max probability
difference), so a smaller file that computes something else would show.
"""

import argparse
import gzip
import json
import os
import sys
import tempfile

import numpy as np

import common  # benchmarks/common.py


def _gzip_size(path):
    with open(path, "rb") as f:
        return len(gzip.compress(f.read(), compresslevel=6))


def _tflite(model, path, sparse):
    import tensorflow as tf

    from tfmp.export import tflite

    concrete = tflite._concrete_function(model)
    variables = tf.Module()
    variables.captured = list(concrete.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], variables)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with open(path, "wb") as f:
        f.write(converter.convert())
    return path


def measure(run_dir, texts):
    import tensorflow as tf

    from tfmp import models
    from tfmp.compress import sparsity
    from tfmp.data import TOKEN_KEYS
    from tfmp.export.tflite import TFLiteClassifier

    model = models.rebuild_float32(models.load_model(run_dir))
    keras_file = os.path.join(run_dir, "model.keras")
    row = {"zeros_in_matrices": sparsity.measured_sparsity(model),
           "model_keras_bytes": os.path.getsize(keras_file),
           "model_keras_gzip_bytes": _gzip_size(keras_file)}
    features = model.preprocessor(tf.constant(texts))
    features = {k: np.asarray(features[k], np.int32) for k in TOKEN_KEYS}
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {}
        for sparse in (False, True):
            name = "tflite_sparse" if sparse else "tflite_fp32"
            path = _tflite(model, os.path.join(tmp, name + ".tflite"), sparse)
            row[name + "_bytes"] = os.path.getsize(path)
            row[name + "_gzip_bytes"] = _gzip_size(path)
            outputs[name] = TFLiteClassifier(path).predict(features)
        row["sparse_vs_plain_max_probability_difference"] = float(
            np.max(np.abs(outputs["tflite_sparse"] - outputs["tflite_fp32"])))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from tfmp import data
    from tfmp.compress.run import teacher_config  # noqa: F401  (registers the backbone)
    from tfmp.config import TrainConfig

    with open(os.path.join(args.runs[0], "config.json"), encoding="utf-8") as f:
        config = TrainConfig.from_json(json.load(f)["config"])
    _, _, splits = data.prepare_data(config)
    result = {os.path.basename(os.path.normpath(r)): measure(r, splits.test.texts[:64])
              for r in args.runs}
    common.print_result(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
