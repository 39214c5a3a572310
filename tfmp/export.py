"""Export a run for serving: SavedModels, TFLite files and a Hugging Face checkpoint.

    report = export("runs/demo")                      # or: tfmp export runs/demo
    report["variants"]["tflite_int8"]["argmax_agreement"]

writes `saved_models/<name>/`:

    serving/1/            float32 SavedModel, raw strings in (TF Serving layout)
    serving_fp16/1/       the same with float16 compute, for GPU serving
    tflite/               model_fp32/fp16/int8.tflite, vocab.txt, labels.txt
    hf/                   BertForSequenceClassification checkpoint (safetensors)
    export_report.json    size, parity, accuracy and speed of every variant

Every variant is checked against the Keras model (rebuilt under float32 with the
run's weights) on the run's test split: the parity gate, `GATES`. The export is
assembled in a hidden temporary directory beside the target and moved into place
only when every variant passed, so a failed export leaves nothing behind.
"""

import json
import os
import shutil
import tempfile
import time

import numpy as np

from tfmp.errors import UserError
from tfmp.export_gate import GATES, ExportGateError, Gate, check_gate  # noqa: F401

VARIANTS = ("savedmodel_fp32", "savedmodel_fp16", "tflite_fp32", "tflite_fp16",
            "tflite_int8", "hf")
PATHS = {
    "savedmodel_fp32": "serving/1",
    "savedmodel_fp16": "serving_fp16/1",
    "tflite_fp32": "tflite/model_fp32.tflite",
    "tflite_fp16": "tflite/model_fp16.tflite",
    "tflite_int8": "tflite/model_int8.tflite",
    "hf": "hf",
}


def _rebuild(classifier, policy):
    from tfmp import models

    return models.rebuild(classifier, policy)


def _tokenize(preprocessor, texts, batch_size=256):
    """int32 numpy token arrays ([n, seq_len] each) of `texts`."""
    import tensorflow as tf

    from tfmp.export_serving import TOKEN_KEYS

    parts = {k: [] for k in TOKEN_KEYS}
    for start in range(0, len(texts), batch_size):
        features = preprocessor(tf.constant(texts[start:start + batch_size]))
        for k in TOKEN_KEYS:
            parts[k].append(np.asarray(features[k], np.int32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _timed(predict, inputs, n, batch_size=32):
    """(probabilities [n, c], examples/s) of `predict` over `inputs` in batches."""
    def batch(start):
        if isinstance(inputs, dict):
            return {k: v[start:start + batch_size] for k, v in inputs.items()}
        return inputs[start:start + batch_size]

    predict(batch(0))  # traces / allocates once, outside the timing
    start_time = time.perf_counter()
    probabilities = np.concatenate(
        [np.asarray(predict(batch(s)), np.float32) for s in range(0, n, batch_size)])
    return probabilities, n / (time.perf_counter() - start_time)


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _keras_predictor(classifier):
    import tensorflow as tf

    def predict(features):
        features = {k: tf.constant(v) for k, v in features.items()}
        return _softmax(classifier(features, training=False))

    return predict


def _savedmodel_predictor(path):
    import tensorflow as tf

    from tfmp.export_serving import SERVING_SIGNATURE

    serve = tf.saved_model.load(path).signatures[SERVING_SIGNATURE]
    return lambda texts: serve(text=tf.constant(texts))["probabilities"]


def _hf_predictor(path):
    """Reads `hf/` back with keras-hub's Hugging Face loader (transformers would need PyTorch)."""
    import keras_hub
    import tensorflow as tf
    from safetensors.numpy import load_file

    from tfmp import precision

    with precision.policy_scope("float32"):
        backbone = keras_hub.models.BertBackbone.from_preset(path)
    head = load_file(os.path.join(path, "model.safetensors"))
    weight, bias = head["classifier.weight"], head["classifier.bias"]

    def predict(features):
        pooled = backbone({k: tf.constant(v) for k, v in features.items()})["pooled_output"]
        return _softmax(np.asarray(pooled) @ weight.T + bias)

    return predict


def _write_hf(classifier, label_names, path):
    from tfmp import hf

    tokenizer = classifier.preprocessor.tokenizer
    hf.save_checkpoint(classifier.backbone, list(tokenizer.vocabulary), path,
                       lowercase=bool(tokenizer.lowercase), classifier=classifier,
                       label_names=label_names)
    # tokenizer.json and special_tokens_map.json, so AutoTokenizer needs no conversion.
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt"),
                      do_lower_case=bool(tokenizer.lowercase),
                      model_max_length=classifier.backbone.max_sequence_length,
                      ).save_pretrained(path)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(path) for f in files)


def _export_variant(name, classifier, float32, label_names, staging, variants):
    """Writes variant `name` under `staging`; returns (path, predictor, input kind)."""
    from tfmp import export_serving, export_tflite

    path = os.path.join(staging, PATHS[name])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if name.startswith("savedmodel"):
        model = float32 if name == "savedmodel_fp32" else _rebuild(classifier, "mixed_float16")
        vocab = os.path.join(staging, "vocab.txt")
        export_serving.save_serving(model, label_names, path, vocab)
        return path, _savedmodel_predictor(path), "texts"
    if name.startswith("tflite"):
        if not os.path.exists(path):  # all TFLite files come from one traced function
            export_tflite.write_tflite(float32, {
                v.split("_")[1]: os.path.join(staging, PATHS[v])
                for v in variants if v.startswith("tflite")})
        return path, export_tflite.TFLiteClassifier(path).predict, "tokens"
    _write_hf(float32, label_names, path)
    return path, _hf_predictor(path), "tokens"


def export_classifier(classifier, label_names, texts, label_ids, target, variants=None,
                      overwrite=False, extra=None):
    """Exports `classifier` to `target` and checks every variant on `texts`.

    Args:
        classifier: `tfmp.BertClassifier` under any policy, with its preprocessor.
        label_names: sequence of str. Name of class i at position i.
        texts, label_ids: the evaluation examples (raw strings, true class ids).
        target: str. Directory to create (`saved_models/<name>`).
        variants: names from `VARIANTS` (None: all).
        overwrite: bool. Replace an existing `target`.
        extra: dict merged into the report (e.g. where the run came from).

    Returns:
        The report (also written as `export_report.json`). Raises `ExportGateError`,
        with nothing written, when a variant fails its gate.
    """
    variants = list(VARIANTS if variants is None else variants)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise UserError(f"Unknown export variants {unknown}; choose from {list(VARIANTS)}.")
    # Size ratios are against tflite_fp32, so it comes with any other TFLite file.
    if any(v.startswith("tflite") for v in variants) and "tflite_fp32" not in variants:
        variants.append("tflite_fp32")
    variants.sort(key=VARIANTS.index)
    target = os.path.abspath(target)
    if os.path.exists(target) and not overwrite:
        raise UserError(f"'{target}' already exists. Pass --overwrite to replace it, "
                        "or --name to export under another name.")
    if not texts:
        raise UserError("No evaluation examples to check the export against.")
    label_ids = np.asarray(label_ids)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)

    # The TFLite converter fails on a mixed_float16 graph, and a float32 copy of the
    # weights is what serving on CPU wants anyway: every variant starts from it.
    policy = classifier.backbone.dtype_policy.name
    float32 = classifier if policy == "float32" else _rebuild(classifier, "float32")
    tokens = _tokenize(classifier.preprocessor, list(texts))
    # The reference is the float32 Keras model: the same weights as the run's model,
    # without the float16 rounding that a 1e-5 probability bound could not absorb.
    reference, keras_speed = _timed(_keras_predictor(float32), tokens, len(texts))
    keras_accuracy = float(np.mean(reference.argmax(-1) == label_ids))
    keras_row = {"policy": "float32", "run_policy": policy, "accuracy": keras_accuracy,
                 "examples_per_second": keras_speed}
    if float32 is not classifier:
        run_policy, _ = _timed(_keras_predictor(classifier), tokens, len(texts))
        keras_row["run_policy_argmax_agreement"] = float(
            np.mean(run_policy.argmax(-1) == reference.argmax(-1)))
        keras_row["run_policy_max_probability_difference"] = float(
            np.max(np.abs(run_policy - reference)))
    report = {
        "examples": len(texts),
        "sequence_length": int(classifier.preprocessor.sequence_length),
        "labels": list(label_names),
        "keras": keras_row,
        **(extra or {}),
        "variants": {},
    }
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.partial-")
    try:
        vocabulary = classifier.preprocessor.tokenizer.vocabulary
        with open(os.path.join(staging, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(vocabulary) + "\n")
        failures = []
        for name in variants:
            path, predict, kind = _export_variant(name, classifier, float32, label_names,
                                                  staging, variants)
            probabilities, speed = _timed(predict, tokens if kind == "tokens" else
                                          np.asarray(texts, dtype=object), len(texts))
            accuracy = float(np.mean(probabilities.argmax(-1) == label_ids))
            row = {
                "path": PATHS[name],
                "size_bytes": _size(path),
                "argmax_agreement": float(np.mean(
                    probabilities.argmax(-1) == reference.argmax(-1))),
                "max_probability_difference": float(np.max(np.abs(probabilities - reference))),
                "accuracy": accuracy,
                "accuracy_drop": keras_accuracy - accuracy,
                "examples_per_second": speed,
            }
            if name == "hf":
                row["measured_with"] = "keras-hub reading hf/ back (no PyTorch here)"
            fp32_size = report["variants"].get("tflite_fp32", {}).get("size_bytes")
            failures += check_gate(name, row, GATES[name], fp32_size)
            report["variants"][name] = row
        if any(v.startswith("tflite") for v in variants):
            shutil.copy(os.path.join(staging, "vocab.txt"), os.path.join(staging, "tflite"))
            with open(os.path.join(staging, "tflite", "labels.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(label_names) + "\n")
        os.remove(os.path.join(staging, "vocab.txt"))
        report["passed"] = not failures
        if failures:
            raise ExportGateError(
                "Parity gate failed, nothing was exported: " + "; ".join(failures)
                + f" (on {len(texts)} examples).")
        with open(os.path.join(staging, "export_report.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["path"] = target
    return report


def export(run_dir, out_root="saved_models", name=None, max_examples=None, variants=None,
           overwrite=False):
    """Exports run directory `run_dir` to `<out_root>/<name>/`; returns the report.

    Args:
        run_dir: str. A `tfmp train` run directory.
        out_root: str. Where the export directory is created.
        name: str or None. Export directory name (None: the run directory's name).
        max_examples: int or None. Check the gate on the first this many test examples.
        variants: names from `VARIANTS` (None: all).
        overwrite: bool. Replace an existing export of the same name.
    """
    from tfmp import data
    from tfmp.train import TrainConfig, load_model, prepare_data

    run_dir = os.path.abspath(os.fspath(run_dir))
    missing = [f for f in ("model.keras", "labels.json", "config.json")
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise UserError(f"'{run_dir}' is not a tfmp run directory: missing "
                        f"{', '.join(missing)}. Pass a directory written by `tfmp train`.")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples must be at least 1, got {max_examples}.")
    with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
        run_config = json.load(f)
    label_map = data.LabelMap.load(os.path.join(run_dir, "labels.json"))
    _, _, splits = prepare_data(TrainConfig.from_json(run_config["config"]))
    split = splits.test
    if not len(split):
        raise UserError(f"The run in '{run_dir}' has an empty test split; train with "
                        "--test-fraction above 0 to export it.")
    texts = list(split.texts[:max_examples])
    label_ids = split.label_ids[:max_examples]
    target = os.path.join(out_root, name or os.path.basename(run_dir))
    return export_classifier(
        load_model(run_dir), label_map.names, texts, label_ids, target,
        variants=variants, overwrite=overwrite,
        extra={"run_dir": run_dir, "split": "test"})


def add_cli(subparsers):
    p = subparsers.add_parser(
        "export", help="export a run for TF Serving, TFLite and Hugging Face",
        description="Write saved_models/<name>/ (SavedModels, TFLite files, a Hugging "
        "Face checkpoint) and check every variant against the Keras model.")
    p.add_argument("run_dir", help="run directory written by `tfmp train`")
    p.add_argument("--out-root", default="saved_models", help="(default: %(default)s)")
    p.add_argument("--name", help="export directory name (default: the run's name)")
    p.add_argument("--max-examples", type=int,
                   help="check the gate on this many test examples (default: all)")
    p.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=_run_export)


def _run_export(args):
    variants = ([v.strip() for v in args.variants.split(",") if v.strip()]
                if args.variants else None)
    report = export(args.run_dir, args.out_root, args.name, args.max_examples, variants,
                    args.overwrite)
    print(f"{'variant':<16}{'size':>12}{'agree':>9}{'max dp':>10}{'acc':>8}{'ex/s':>9}")
    for name, row in report["variants"].items():
        print(f"{name:<16}{row['size_bytes']:>12}{row['argmax_agreement']:>9.4f}"
              f"{row['max_probability_difference']:>10.2e}{row['accuracy']:>8.4f}"
              f"{row['examples_per_second']:>9.1f}")
    print(f"Keras accuracy {report['keras']['accuracy']:.4f} on {report['examples']} "
          f"test examples -> {report['path']}")
    return 0
