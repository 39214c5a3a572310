"""Export a run for serving: SavedModels, TFLite files and a Hugging Face checkpoint.

    report = export("runs/demo")                      # or: tfmp export runs/demo
    report["variants"]["tflite_int8"]["argmax_agreement"]
    print(format_table(report))

writes `saved_models/<name>/`:

    serving/1/            float32 SavedModel, raw strings in (TF Serving layout)
    serving_fp16/1/       the same with float16 compute, for GPU serving
    serving_bf16/1/       the same with bfloat16 compute, for bfloat16 CPUs, TPUs, GPUs
    tflite/               model_fp32/fp16/int8.tflite, vocab.txt, labels.txt
                          (and model_sparse.tflite for a --sparsity run)
    hf/                   BertForSequenceClassification checkpoint (safetensors)
    export_report.json    size, parity, accuracy and speed of every variant
    COMPLETE              written last: readers call `check_export(path)` first

Every variant is checked against the Keras model (rebuilt under float32 with the
run's weights) on the run's test split, rebuilt from the data file the run recorded
and verified by its hash and split positions (`testsplit.py`): the parity gate,
`GATES`. The target is checked and locked before any work (`target.py`: --overwrite
replaces only an export, never the run or a directory tfmp did not write; a second
export of it is refused), assembled in a hidden staging directory beside it and
published (fsynced, marked COMPLETE, renamed in) only when every variant passed,
so a failed or killed export leaves no directory that looks finished.

Each variant is a `Variant` row (`variant.py`: where its files go, how to write and
read them back, its `Gate`) defined by its module (`savedmodel.py`, `tflite.py`,
`huggingface.py`) and listed in `pipeline.REGISTRY`, whose order is `VARIANTS`.
"""

import os

from tfmp import data, files, models
from tfmp.errors import InputError, UserError
from tfmp.export import pipeline, testsplit
from tfmp.export.gate import ExportGateError, Gate
from tfmp.export.pipeline import GATES, REGISTRY, VARIANTS, export_classifier
from tfmp.export.target import check_export, claim
from tfmp.export.variant import Variant

__all__ = ["GATES", "REGISTRY", "VARIANTS", "ExportGateError", "Gate", "Variant",
           "check_export", "export", "export_classifier", "format_table"]


def export(run_dir, out_root="saved_models", name=None, max_examples=None, variants=None,
           overwrite=False, log=None):
    """Exports run directory `run_dir` to `<out_root>/<name>/`; returns the report.

    Args:
        run_dir: str. A finished `tfmp train` run directory.
        out_root: str. Where the export directory is created.
        name: str or None. Export directory name (None: the run directory's name).
        max_examples: int or None. Check the gate on the first this many test examples.
        variants: names from `VARIANTS` (None: all).
        overwrite: bool. Replace an existing export of the same name (only an export).
        log: callable or None. Hears each variant as it starts and ends (the CLI: print).
    """
    run_dir = os.path.abspath(os.fspath(run_dir))
    missing = [f for f in ("model.keras", "labels.json", "config.json")
               if not os.path.isfile(os.path.join(run_dir, f))]
    if missing:
        raise UserError(f"'{run_dir}' is not a tfmp run directory: missing "
                        f"{', '.join(missing)}. Pass a directory written by `tfmp train`.")
    files.check_complete(run_dir, "run")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"--max-examples must be at least 1, got {max_examples}.")
    label_map = data.LabelMap.load(os.path.join(run_dir, "labels.json"))
    rows = pipeline.resolve_variants(variants)
    pipeline.check_labels(rows, label_map.names)
    target = os.path.join(out_root, name or os.path.basename(run_dir))
    # Claimed before any work, held to the end: the target is checked (never the run
    # itself, nor a directory tfmp did not write) and locked against a second export.
    with claim(target, overwrite, protected=(run_dir,)) as target:
        config_path = os.path.join(run_dir, "config.json")
        run_config = files.read_json(config_path, "Restore the run's config.json, or "
                                     "train the run again.")
        if not isinstance(run_config, dict) or not isinstance(run_config.get("config"), dict):
            raise InputError(f"{config_path}: not a tfmp run config (no \"config\" object). "
                             "Restore the run's config.json, or train the run again.")
        splits, source = testsplit.rebuild_splits(run_dir, run_config, label_map.names)
        split = splits.test
        if not len(split):
            raise UserError(f"The run in '{run_dir}' has an empty test split; train with "
                            "--test-fraction above 0 to export it.")
        recorded = run_config.get("data") or {}
        extra = {"run_dir": run_dir, "split": "test",
                 "data": {"path": source, "sha256": recorded.get("sha256")}}
        return pipeline.write_export(
            models.load_model(run_dir), label_map.names, list(split.texts[:max_examples]),
            split.label_ids[:max_examples], target, rows, extra,
            calibration=tuple(splits.validation.texts), log=log)


def format_table(report):
    """The report as `tfmp export` prints it: one line per variant, then the Keras line."""
    lines = [f"{'variant':<16}{'size':>12}{'agree':>9}{'max dp':>10}{'acc':>8}{'ex/s':>9}"]
    for name, row in report["variants"].items():
        lines.append(f"{name:<16}{row['size_bytes']:>12}{row['argmax_agreement']:>9.4f}"
                     f"{row['max_probability_difference']:>10.2e}{row['accuracy']:>8.4f}"
                     f"{row['examples_per_second']:>9.1f}")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"{name:<16}skipped: {reason}")
    lines.append(f"Keras accuracy {report['keras']['accuracy']:.4f} on {report['examples']} "
                 f"test examples -> {report['path']}")
    return "\n".join(lines)
