"""`tfmp tradeoffs`: every exported variant measured on the test split, and a choice.

    result = compare(["runs/demo"], Limits(max_latency_ms=5, max_size_mb=50), "tradeoffs/demo")
    result["recommendation"]["best"]

For each run (or export directory) given: its export is found and verified
(`tfmp.export.check_export`), the run's test split is rebuilt and verified as export
does (`tfmp.export.testsplit`), and each variant answers it in a fresh process
(`measure.py`: probabilities, examples/s at batch 32, p50/p99 latency at batch 1, peak
memory). `metrics.py` scores the answers against the float32 reference (the float32
SavedModel, which export gated at 1e-5 of the Keras model): accuracy, macro-F1, each
class's recall change, the flipped examples. `recommend.py` picks a variant under the
limits; `render.py` writes tradeoffs.md and the Pareto plot. Output, in OUT:

    tradeoffs.json  tradeoffs.md  pareto.png  flips/<run>__<variant>.jsonl
"""

import datetime
import json
import os
import platform
import tempfile

import numpy as np

from tfmp import files
from tfmp.errors import InputError
from tfmp.tradeoffs import measure, metrics, render
from tfmp.tradeoffs.recommend import DEFAULT_MAX_ACCURACY_DROP, Limits, recommend

__all__ = ["Limits", "compare", "main", "recommend"]

# The float32 reference, in order of preference: each was gated against float32 Keras.
REFERENCES = ("savedmodel_fp32", "tflite_fp32", "hf")


def _test_split(report):
    from tfmp.export import testsplit

    run_dir = report.get("run_dir")
    config_path = os.path.join(run_dir or "", "config.json")
    if not run_dir or not os.path.isfile(config_path):
        raise InputError(f"The run this export came from ({run_dir!r}) is not there: "
                         "tfmp tradeoffs measures on the run's test split.")
    with open(config_path, encoding="utf-8") as f:
        run_config = json.load(f)
    split, _ = testsplit.rebuild(run_dir, run_config, report["labels"])
    return list(split.texts), np.asarray(split.label_ids)


def _size_mb(export_dir, name, row, report):
    if name.startswith("cascade"):  # its JSON points at the two TFLite files it runs
        return sum(report["variants"][n]["size_bytes"] for n in ("tflite_int8", "tflite_fp32")
                   ) / 1e6
    return row["size_bytes"] / 1e6


def _measure_export(export_dir, max_examples, workdir, out):
    from tfmp.export import check_export
    from tfmp.serve import predict

    check_export(export_dir)
    report = predict.read_report(export_dir)
    texts, label_ids = _test_split(report)
    texts, label_ids = texts[:max_examples], label_ids[:max_examples]
    reference = next((n for n in REFERENCES if n in report["variants"]), None)
    if reference is None:
        raise InputError(f"'{export_dir}' has none of {REFERENCES}, the float32 reference "
                         "the other variants are compared with; export it again.")
    texts_path = os.path.join(workdir, "texts.json")
    with open(texts_path, "w", encoding="utf-8") as f:
        json.dump(texts, f)
    names = [reference] + [n for n in report["variants"] if n != reference]
    measured = {n: measure.measure_variant(export_dir, n, texts_path, workdir) for n in names}
    run = os.path.basename(export_dir)
    rows = []
    for name in report["variants"]:
        probabilities, timings = measured[name]
        row = {"key": f"{run}/{name}", "run": run, "variant": name, **timings,
               **metrics.score(probabilities, label_ids, report["labels"],
                               measured[reference][0]),
               "size_mb": _size_mb(export_dir, name, report["variants"][name], report)}
        row["accuracy_drop_points"] = (metrics.score(
            measured[reference][0], label_ids, report["labels"], measured[reference][0]
        )["accuracy"] - row["accuracy"]) * 100
        if name.startswith("cascade"):
            with open(os.path.join(export_dir, report["variants"][name]["path"]),
                      encoding="utf-8") as f:
                row["margin"] = json.load(f)["margin"]
        flips = list(metrics.flipped(probabilities, measured[reference][0], texts, label_ids,
                                     report["labels"]))
        files.write_atomic(os.path.join(out, "flips", f"{run}__{name}.jsonl"),
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in flips))
        rows.append(row)
    return rows, reference, len(texts)


def compare(paths, limits=Limits(), out="tradeoffs", max_examples=None):
    """Measures every variant of the exports of `paths`; writes and returns the result."""
    from tfmp.serve import predict

    os.makedirs(os.path.join(out, "flips"), exist_ok=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows, references, examples = [], [], 0
    with tempfile.TemporaryDirectory(prefix="tfmp-tradeoffs-") as workdir:
        for path in paths:
            export_dir = predict.locate_export(path)
            run_rows, reference, examples = _measure_export(export_dir, max_examples,
                                                            workdir, out)
            rows += run_rows
            references.append(f"{os.path.basename(export_dir)}/{reference}")
    ref_row = next(r for r in rows if r["key"] == references[0])
    result = {
        "runs": [os.path.basename(os.path.normpath(p)) for p in paths],
        "examples": examples, "reference": references[0],
        "reference_accuracy": ref_row["accuracy"],
        "latency_examples": min(examples, measure.LATENCY_EXAMPLES),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.date.today().isoformat(), "load_average": load,
        "variants": rows, "recommendation": recommend(rows, limits),
    }
    files.write_json(os.path.join(out, "tradeoffs.json"), result)
    render.write_markdown(result, os.path.join(out, "tradeoffs.md"))
    render.write_plot(result, os.path.join(out, "pareto.png"))
    return result


def main(args):
    """`tfmp tradeoffs` (`args` from tfmp.cli); prints the table and the recommendation."""
    from tfmp.errors import UserError

    if args.max_examples is not None and args.max_examples < 1:
        raise UserError(f"--max-examples must be at least 1, got {args.max_examples}.")
    for flag in ("max_latency_ms", "max_size_mb", "max_accuracy_drop", "max_class_recall_drop"):
        value = getattr(args, flag)
        if value is not None and not value >= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {value}.")
    limits = Limits(args.max_latency_ms, args.max_size_mb,
                    DEFAULT_MAX_ACCURACY_DROP if args.max_accuracy_drop is None
                    else args.max_accuracy_drop, args.max_class_recall_drop)
    out = args.out or os.path.join("tradeoffs", os.path.basename(
        os.path.normpath(args.run_dirs[0])))
    result = compare(args.run_dirs, limits, out, args.max_examples)
    print(render.table(result))
    print()
    print(render.recommendation_text(result["recommendation"]))
    print(f"\n-> {out}/tradeoffs.md, tradeoffs.json, pareto.png, flips/")
    return 0
