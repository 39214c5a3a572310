"""The export registry and the loop that writes, reads back and gates every variant.

    REGISTRY["tflite_int8"]      # a `Variant` row: where, writer, reader, gate
    report = export_classifier(classifier, names, texts, label_ids, "saved_models/x")

A variant is one `Variant` row, defined by the module that writes it; `REGISTRY`
lists the rows in export order and the loop below knows none of them by name.
"""

import collections.abc
import dataclasses
import os
import shutil
import time

import numpy as np

import tfmp.export.cascade as cascade
import tfmp.export.halfweights as halfweights
import tfmp.export.huggingface as huggingface
import tfmp.export.onnx as onnx
import tfmp.export.savedmodel as savedmodel
import tfmp.export.target as exportdir
import tfmp.export.tflite as tflite
from tfmp import families, files, lora, models, precision
from tfmp.errors import UserError
from tfmp.export.gate import (SIZE_REFERENCE, ExportGateError, check_gate, class_recalls,
                              recall_drops)
from tfmp.export.variant import Context, softmax


def _registry(*variants):
    """{name: Variant} in export order; a variant's requirements must come before it."""
    registry = {}
    for variant in variants:
        if variant.name in registry:
            raise ValueError(f"export variant {variant.name!r} is registered twice")
        missing = [r for r in variant.requires if r not in registry]
        if missing:
            raise ValueError(f"export variant {variant.name!r} requires {missing} before it")
        registry[variant.name] = variant
    return registry


# Export order: tflite_fp32 comes before the TFLite files whose size it is the
# reference of, and every row's files are written, read back and gated in turn.
REGISTRY = _registry(
    savedmodel.FP32,
    savedmodel.FP16,
    savedmodel.BF16,
    tflite.FP32,
    tflite.FP16,
    tflite.INT8,
    tflite.SPARSE,  # skipped (saying why) unless the model is sparse
    huggingface.HF,
    cascade.CASCADE,
    onnx.FP32,
    onnx.INT8,
    halfweights.SAVEDMODEL, halfweights.KERAS,  # float16 variables: half the bytes
)
VARIANTS = tuple(REGISTRY)


class _Gates(collections.abc.Mapping):
    """{name: Gate}, read from the registry rows; replace a row to change a gate."""

    def __getitem__(self, name):
        return REGISTRY[name].gate

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self):
        return len(REGISTRY)

    def __repr__(self):
        return repr(dict(self))


GATES = _Gates()


@dataclasses.dataclass(frozen=True)
class _Evaluation:
    """The examples every variant is measured on, and the Keras model's answers."""

    texts: list
    tokens: dict  # int32 [n, seq_len] arrays, the family's inputs
    label_ids: np.ndarray
    reference: np.ndarray  # float32 Keras probabilities [n, classes]
    accuracy: float  # of the float32 Keras model


def resolve_variants(variants=None):
    """The `Variant` rows to export for names `variants` (None: all), in export order."""
    names = list(REGISTRY if variants is None else variants)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        raise UserError(f"Unknown export variants {unknown}; choose from {list(VARIANTS)}.")
    # A variant's requirements come with it: tflite_fp32, which TFLite size ratios divide by.
    wanted = set(names).union(*(REGISTRY[n].requires for n in names))
    return tuple(v for v in REGISTRY.values() if v.name in wanted)


def _tokenize(preprocessor, texts, features, batch_size=256):
    """int32 numpy token arrays ([n, seq_len] each, `features`) of `texts`."""
    import tensorflow as tf

    parts = {k: [] for k in features}
    for start in range(0, len(texts), batch_size):
        tokens = preprocessor(tf.constant(texts[start:start + batch_size]))
        for k in features:
            parts[k].append(np.asarray(tokens[k], np.int32))
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


def _keras_predictor(classifier):
    import tensorflow as tf

    def predict(features):
        features = {k: tf.constant(v) for k, v in features.items()}
        return softmax(classifier(features, training=False))

    return predict


def _float32(classifier):
    """`classifier` under float32: itself, or rebuilt with its weights."""
    # The TFLite converter fails on a mixed_float16 graph, and a float32 copy of the
    # weights is what serving on CPU wants anyway: every variant starts from it.
    policy = precision.serving_policy("fp32")
    if classifier.backbone.dtype_policy.name == policy and not lora.adapted(classifier):
        return classifier
    return models.rebuild(classifier, policy)  # LoRA: plain kernels W + A·B·scale (float32)


def _reference(classifier, float32, texts, label_ids):
    """(the evaluation with the float32 Keras answers, the report's `keras` row)."""
    tokens = _tokenize(classifier.preprocessor, list(texts),
                       families.by_backbone(classifier.backbone).features)
    # The reference is the float32 Keras model: the same weights as the run's model,
    # without the float16 rounding that a 1e-5 probability bound could not absorb.
    reference, keras_speed = _timed(_keras_predictor(float32), tokens, len(texts))
    accuracy = float(np.mean(reference.argmax(-1) == label_ids))
    row = {"policy": float32.backbone.dtype_policy.name,
           "run_policy": classifier.backbone.dtype_policy.name, "accuracy": accuracy,
           "examples_per_second": keras_speed}
    if float32 is not classifier:
        run_policy, _ = _timed(_keras_predictor(classifier), tokens, len(texts))
        row["run_policy_argmax_agreement"] = float(
            np.mean(run_policy.argmax(-1) == reference.argmax(-1)))
        row["run_policy_max_probability_difference"] = float(
            np.max(np.abs(run_policy - reference)))
    return _Evaluation(list(texts), tokens, label_ids, reference, accuracy), row


def _export_variant(ctx, evaluation):
    """Writes `ctx.variant`, reads it back and measures it: its report row."""
    variant = ctx.variant
    os.makedirs(os.path.dirname(ctx.path), exist_ok=True)
    variant.write(ctx)
    inputs = (evaluation.tokens if variant.inputs == "tokens"
              else np.asarray(evaluation.texts, dtype=object))
    n = len(evaluation.texts)
    probabilities, speed = _timed(variant.read(ctx.path), inputs, n)
    accuracy = float(np.mean(probabilities.argmax(-1) == evaluation.label_ids))
    recalls = class_recalls(probabilities.argmax(-1), evaluation.label_ids, ctx.label_names)
    reference = class_recalls(evaluation.reference.argmax(-1), evaluation.label_ids,
                              ctx.label_names)
    row = {
        "path": variant.path,
        "size_bytes": files.size(ctx.path),
        "argmax_agreement": float(np.mean(
            probabilities.argmax(-1) == evaluation.reference.argmax(-1))),
        "max_probability_difference": float(
            np.max(np.abs(probabilities - evaluation.reference))),
        "accuracy": accuracy,
        "accuracy_drop": evaluation.accuracy - accuracy,
        "examples_per_second": speed,
        "class_recall": recalls,
        "class_recall_drop": recall_drops(recalls, reference),
    }
    if variant.measured_with:
        row["measured_with"] = variant.measured_with
    return row


def _export_variants(ctx, evaluation, report, log=None):
    """Exports every variant of `ctx` into `report["variants"]`; returns gate failures.
    `log` (e.g. `print`), if given, hears each variant as it starts and ends."""
    # Every variant may read the tokenizer's files from here (SavedModel assets,
    # tflite/vocab.txt); they are not part of the export itself.
    os.makedirs(ctx.tokenizer_directory, exist_ok=True)
    families.write_tokenizer_files(families.by_backbone(ctx.classifier.backbone),
                                   ctx.classifier.preprocessor.tokenizer, ctx.tokenizer_directory)
    failures = []
    for i, variant in enumerate(ctx.variants, 1):
        if log:
            log(f"[{i}/{len(ctx.variants)}] {variant.name}: writing and checking ...")
        start = time.perf_counter()
        row = _export_variant(dataclasses.replace(ctx, variant=variant), evaluation)
        size_reference = report["variants"].get(SIZE_REFERENCE, {}).get("size_bytes")
        gate = check_gate(variant.name, row, variant.gate, size_reference)
        failures += gate
        report["variants"][variant.name] = row
        if log:
            verdict = "FAILED its gate" if gate else "passed"
            log(f"[{i}/{len(ctx.variants)}] {variant.name}: {verdict}, "
                f"argmax agreement {row['argmax_agreement']:.4f}, "
                f"{time.perf_counter() - start:.0f} s")
    shutil.rmtree(ctx.tokenizer_directory)
    return failures


def _passed_hint(results, rows):
    """How to export the variants that passed (and need none that failed), or ""."""
    left_out = {name for name, row in results.items() if not row["passed"]}
    passed = []
    for variant in rows:  # in registry order: what a variant requires comes before it
        if variant.name in left_out or left_out & set(variant.requires):
            left_out.add(variant.name)
        else:
            passed.append(variant.name)
    if not passed:
        return ""
    return (f" To export the variants that passed (and need none that failed), run again "
            f"with --variants {','.join(passed)} (Python: export(..., variants=[...])).")


def check_labels(rows, label_names):
    """Lets every variant refuse the label names before any work (e.g. labels.txt's)."""
    for variant in rows:
        if variant.check is not None:
            variant.check(tuple(label_names))


def export_classifier(classifier, label_names, texts, label_ids, target, variants=None,
                      overwrite=False, extra=None, protected=()):
    """Exports `classifier` to `target` and checks every variant on `texts`.

    Args:
        classifier: `tfmp.BertClassifier` under any policy, with its preprocessor.
        label_names: sequence of str. Name of class i at position i.
        texts, label_ids: the evaluation examples (raw strings, true class ids).
        target: str. Directory to create (`saved_models/<name>`).
        variants: names from `VARIANTS` (None: all).
        overwrite: bool. Replace an existing export at `target` (nothing else).
        extra: dict merged into the report (e.g. where the run came from).
        protected: paths `target` may not hold (the run being exported).

    Returns:
        The report (also written as `export_report.json`). Raises `ExportGateError`,
        with nothing written, when a variant fails its gate.
    """
    rows = resolve_variants(variants)
    check_labels(rows, label_names)
    if not texts:
        raise UserError("No evaluation examples to check the export against.")
    with exportdir.claim(target, overwrite, protected) as target:
        return write_export(classifier, label_names, texts, label_ids, target, rows, extra)


def write_export(classifier, label_names, texts, label_ids, target, rows, extra=None,
                 calibration=(), log=None):
    """`export_classifier` once `target` is claimed (`exportdir.claim`): the work itself.

    The export is assembled in a staging directory beside `target` and published
    (fsynced, marked COMPLETE, renamed into place) only when every variant passed.
    `calibration` holds texts a variant may tune itself on (the validation split).
    """
    float32 = _float32(classifier)
    # Variants that do not apply to this model write nothing; the report says why.
    skipped = {v.name: reason for v in rows if v.skip and (reason := v.skip(float32))}
    rows = tuple(v for v in rows if v.name not in skipped)
    evaluation, keras_row = _reference(classifier, float32, texts, np.asarray(label_ids))
    report = {
        "examples": len(texts),
        "sequence_length": int(classifier.preprocessor.sequence_length),
        "labels": list(label_names),
        "keras": keras_row,
        **(extra or {}),
        "variants": {},
        "skipped": skipped,
    }
    with exportdir.staging(target) as staging:
        ctx = Context(classifier=classifier, float32=float32, label_names=tuple(label_names),
                      staging=staging, variants=rows, calibration=tuple(calibration))
        failures = _export_variants(ctx, evaluation, report, log)
        report["passed"] = not failures
        if failures:
            raise ExportGateError(
                "Parity gate failed, nothing was exported: " + "; ".join(failures)
                + f" (on {len(texts)} examples)." + _passed_hint(report["variants"], rows))
        files.write_json(os.path.join(staging, exportdir.REPORT), report)
        exportdir.publish(staging, target, (extra or {}).get("run_dir"))
    report["path"] = target
    return report
