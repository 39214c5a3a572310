import json
import os

import pytest
from conftest import RUN_SETTINGS, read_scalars

from tfmp import callbacks, report

# The session's shared mixed_float16 run (conftest.py): sentiment_csv's 360 rows less
# 10% test and 10% validation are 288 training examples, 18 steps of 16 an epoch.
TRAIN_EXAMPLES = 288
STEPS_PER_EPOCH = -(-TRAIN_EXAMPLES // RUN_SETTINGS["batch_size"])
STEPS = RUN_SETTINGS["epochs"] * STEPS_PER_EPOCH
UPDATE_FREQ = 50  # train() logs the monitor's scalars every 50 steps and at epoch ends


@pytest.fixture(scope="module")
def run(mixed_float16_run):
    return mixed_float16_run


def test_run_dir_has_a_report_with_plots(run):
    files = set(os.listdir(run.run_dir))
    assert {"report.json", "report.md", *report.PLOTS.values()} <= files
    for name in report.PLOTS.values():
        with open(os.path.join(run.run_dir, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(run.run_dir, "report.json")) as f:
        r = json.load(f)
    assert r["policy"]["name"] == "mixed_float16" and r["policy"]["reason"]
    assert set(r["versions"]) == {"python", "tensorflow", "keras", "keras_hub"}
    assert all(r["versions"].values())
    assert r["hardware"]["cpus"] >= 1
    assert r["outcome"]["accuracy"] == run.metrics["accuracy"]
    assert r["classification_report"] == run.metrics["test"]["classification_report_dict"]
    p = r["precision"]
    assert p["final_loss_scale"] == run.metrics["optimizer"]["loss_scale"]
    with open(os.path.join(run.run_dir, "config.json")) as f:
        assert json.load(f)["data"]["splits"]["train"] == TRAIN_EXAMPLES
    assert p["steps"] == STEPS == 4 * 18  # 288 training examples / 16, four epochs
    assert p["skipped_steps"] == len(p["overflow_steps"])
    with open(os.path.join(run.run_dir, "report.md")) as f:
        md = f.read()
    assert "mixed_float16" in md and "Test accuracy" in md and "keras-hub" in md
    for name in ("negative", "neutral", "positive"):
        assert f"| {name} |" in md


def test_run_logs_the_monitor_scalars_beside_keras_curves(run):
    s = read_scalars(os.path.join(run.run_dir, "logs", "train"))
    assert {callbacks.LOSS_SCALE, callbacks.GRAD_NORM, "epoch_loss"} <= set(s)
    # update_freq=50 and 18 steps per epoch: the four epoch ends and step 50.
    epoch_ends = {STEPS_PER_EPOCH * e for e in range(1, RUN_SETTINGS["epochs"] + 1)}
    expected = sorted(epoch_ends | set(range(UPDATE_FREQ, STEPS + 1, UPDATE_FREQ)))
    assert expected == [18, 36, 50, 54, 72]
    # Sorted: each epoch's fit opens new event files, and within one second their names
    # order by a counter as text (...2506.100.v2 before ...2506.97.v2), so the reader can
    # meet step 36 after step 54 (seen once in a full suite run, 2026-11-30).
    assert sorted(st for st, _ in s[callbacks.GRAD_NORM]) == expected


def test_report_without_a_loss_scale_says_so():
    config = {"policy": {"name": "float32", "reason": "asked for"}, "versions": {}}
    metrics = {"accuracy": 0.5, "optimizer": {"loss_scale": None, "skipped_steps": 0,
                                              "iterations": 4}}
    r = report.build_report(config, metrics, {"loss": [1.0, 0.5]}, {})
    assert r["precision"]["steps"] == 4 and r["precision"]["skip_rate"] == 0
    assert "No loss scale under this policy" in report.to_markdown(r)


def test_report_says_where_the_time_went(mixed_float16_run):
    timings = mixed_float16_run.metrics["timings"]
    assert {"build the model", "first step (trace and compile)", "training steps",
            "validation", "checkpoints", "test evaluation"} <= set(timings)
    assert all(v >= 0 for k, v in timings.items() if not k.startswith("other")), timings
    # The fit's phases add up to its wall time: "other" is what no phase measured.
    fit = sum(v for k, v in timings.items()
              if k not in ("build the model", "token lengths (for length grouping)",
                           "test evaluation", "waiting for the last checkpoint write"))
    assert abs(fit - mixed_float16_run.metrics["train_seconds"]) < 1e-6
    assert timings["first step (trace and compile)"] > 0 and timings["training steps"] > 0
    with open(os.path.join(mixed_float16_run.run_dir, "report.md"), encoding="utf-8") as f:
        md = f.read()
    assert "| where the time went | seconds | share |" in md and "| validation |" in md
