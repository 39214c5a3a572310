"""`tfmp tradeoffs`: scores against float32, the recommendation under limits, the files it
writes; and the per-class recall gate every export variant passes through."""

import json
import os

import numpy as np
import pytest

from tfmp.export.gate import Gate, check_gate, class_recalls, recall_drops
from tfmp.tradeoffs import metrics
from tfmp.tradeoffs.recommend import Limits, recommend

LABELS = ("negative", "neutral", "positive")


def _row(key, p50, size, accuracy, drop=0.0, ex_s=100.0):
    return {"key": key, "p50_ms": p50, "p99_ms": p50 * 2, "size_mb": size,
            "accuracy": accuracy, "accuracy_drop_points": drop, "examples_per_second": ex_s,
            "macro_f1": 0.7, "worst_class": "neutral", "worst_class_change_points": -drop,
            "flips": int(drop * 10), "peak_memory_mb": 300.0}


ROWS = [_row("demo/savedmodel_fp32", 20.0, 95.6, 0.8204),
        _row("demo/tflite_fp32", 9.0, 90.3, 0.8204),
        _row("demo/tflite_fp16", 9.2, 45.2, 0.8204),
        _row("demo/tflite_int8", 4.0, 23.1, 0.8150, drop=0.54),
        _row("demo/cascade_int8_fp32", 5.0, 113.4, 0.8204)]


def test_recommends_the_fastest_within_the_limits_and_prices_the_runner_up():
    choice = recommend(ROWS, Limits(max_latency_ms=10, max_size_mb=50))
    assert choice["best"] == "demo/tflite_int8"
    assert choice["runner_up"] == "demo/tflite_fp16"
    assert "+5.2 ms p50" in choice["runner_up_cost"] and "+22.1 MB" in choice["runner_up_cost"]
    assert set(choice["excluded"]) == {"demo/savedmodel_fp32", "demo/tflite_fp32",
                                       "demo/cascade_int8_fp32"}
    assert "size 113.4 MB > 50 MB" in choice["excluded"]["demo/cascade_int8_fp32"]


def test_an_accuracy_limit_moves_the_choice_and_ties_go_to_the_smaller_file():
    choice = recommend(ROWS, Limits(max_accuracy_drop=0.1))
    assert "demo/tflite_int8" in choice["excluded"]
    assert choice["best"] == "demo/cascade_int8_fp32"
    # 9.0 and 9.2 ms are within 5%: the 45 MB file comes before the 90 MB one.
    assert recommend(ROWS[:3], Limits())["best"] == "demo/tflite_fp16"


def test_no_variant_within_the_limits_says_which_limit_to_loosen():
    choice = recommend(ROWS, Limits(max_latency_ms=1))
    assert choice["best"] is None and "loosen one" in choice["why"]


def test_scores_per_class_recall_change_and_flips_against_float32():
    label_ids = np.array([0, 0, 1, 1, 2, 2])
    reference = np.eye(3)[[0, 0, 1, 1, 2, 2]]
    variant = np.eye(3)[[0, 0, 1, 0, 2, 2]]  # one neutral example flips to negative
    row = metrics.score(variant, label_ids, LABELS, reference)
    assert row["accuracy"] == pytest.approx(5 / 6)
    assert row["class_recall_change_points"] == {"negative": 0.0, "neutral": -50.0,
                                                 "positive": 0.0}
    assert row["worst_class"] == "neutral" and row["flips"] == 1
    flips = list(metrics.flipped(variant, reference, list("abcdef"), label_ids, LABELS))
    assert flips == [{"test_index": 3, "text": "d", "label": "neutral", "float32": "neutral",
                      "variant": "negative", "float32_probability": 1.0,
                      "variant_probability": 1.0}]
    # macro-F1 by hand: F1 negative 0.8, neutral 2/3, positive 1.
    assert row["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1) / 3)


def test_every_gate_refuses_a_class_whose_recall_drops_more_than_two_points():
    label_ids = np.array([0] * 50 + [1] * 50)
    keras = np.array([0] * 50 + [1] * 50)
    variant = keras.copy()
    variant[50:52] = 0  # two of 50 "neutral" examples: 4 points
    recalls = class_recalls(variant, label_ids, LABELS[:2])
    row = {"argmax_agreement": 0.98, "max_probability_difference": 0.01, "accuracy_drop": 0.02,
           "size_bytes": 1, "class_recall": recalls,
           "class_recall_drop": recall_drops(recalls, class_recalls(keras, label_ids,
                                                                    LABELS[:2]))}
    failures = check_gate("tflite_int8", row, Gate(min_agreement=0.95), None)
    assert failures == ["tflite_int8: recall of class 'neutral' 4.00 points below Keras "
                        "(0.9600; at most 2.00 allowed)"]
    assert not row["passed"]
    variant[51] = 1  # one example: 2 points, allowed
    recalls = class_recalls(variant, label_ids, LABELS[:2])
    row["class_recall"] = recalls
    row["class_recall_drop"] = recall_drops(recalls, class_recalls(keras, label_ids, LABELS[:2]))
    assert check_gate("tflite_int8", row, Gate(min_agreement=0.95), None) == []


@pytest.mark.slow
def test_tradeoffs_on_an_export_writes_table_plot_flips_and_a_recommendation(
        mixed_float16_run, tmp_path, capsys):
    from tfmp import cli
    from tfmp.export import export

    # Five of the variants: every kind of runner (SavedModel, TFLite, HF, the cascade of
    # two), not all thirteen, each of which tradeoffs times in a fresh process.
    export(mixed_float16_run.run_dir, out_root=str(tmp_path / "saved_models"), name="tiny",
           variants=["savedmodel_fp32", "tflite_fp32", "tflite_int8", "hf",
                     "cascade_int8_fp32"])
    out = tmp_path / "t"
    code = cli.main(["tradeoffs", str(tmp_path / "saved_models" / "tiny"), "--out", str(out),
                     "--max-size-mb", "50"])
    printed = capsys.readouterr().out
    assert code == 0 and "Recommended under size <= 50 MB" in printed
    result = json.loads((out / "tradeoffs.json").read_text())
    keys = {r["variant"] for r in result["variants"]}
    assert {"savedmodel_fp32", "tflite_int8", "cascade_int8_fp32", "hf"} <= keys
    assert result["reference"] == "tiny/savedmodel_fp32"
    reference = next(r for r in result["variants"] if r["variant"] == "savedmodel_fp32")
    assert reference["flips"] == 0 and reference["accuracy_drop_points"] == 0
    for row in result["variants"]:
        assert row["p99_ms"] >= row["p50_ms"] > 0 and row["peak_memory_mb"] > 0
        assert set(row["class_recall_change_points"]) <= set(result["variants"][0]["class_recall"])
        assert os.path.isfile(out / "flips" / f"tiny__{row['variant']}.jsonl")
        assert row["tensorflow_imported"] == (row["variant"].split("_")[0]
                                              in ("savedmodel", "hf", "keras"))
    cascade = next(r for r in result["variants"] if r["variant"] == "cascade_int8_fp32")
    assert 0 <= cascade["fast_path_share"] <= 1
    assert result["recommendation"]["best"] is not None
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "| variant |" in (out / "tradeoffs.md").read_text()


def test_a_class_recall_limit_excludes_the_variant_that_hurts_one_class():
    rows = [dict(r) for r in ROWS]
    rows[3]["worst_class_change_points"] = -0.22  # int8 costs "neutral" 0.22 points
    choice = recommend(rows, Limits(max_class_recall_drop=0.1))
    assert "recall of 'neutral' 0.22 points below float32 > 0.1" in \
        choice["excluded"]["demo/tflite_int8"]
    assert choice["best"] == "demo/cascade_int8_fp32"
