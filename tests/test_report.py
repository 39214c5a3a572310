import json
import os

import pytest
from conftest import read_scalars, write_sentiment_csv

from tfmp import callbacks, report
from tfmp.config import TrainConfig
from tfmp.train import train


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    csv = write_sentiment_csv(root / "tweets.csv", n=200)
    return train(TrainConfig(data=csv, model=tiny_bert_dir, policy="mixed_float16",
                             out=str(root / "run"), epochs=2, batch_size=16, seq_len=16,
                             lr=5e-3, seed=1), verbose=0)


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
    assert p["steps"] == 2 * 10  # 160 training examples / 16, two epochs
    assert p["skipped_steps"] == len(p["overflow_steps"])
    with open(os.path.join(run.run_dir, "report.md")) as f:
        md = f.read()
    assert "mixed_float16" in md and "Test accuracy" in md and "keras-hub" in md
    for name in ("negative", "neutral", "positive"):
        assert f"| {name} |" in md


def test_run_logs_the_monitor_scalars_beside_keras_curves(run):
    s = read_scalars(os.path.join(run.run_dir, "logs", "train"))
    assert {callbacks.LOSS_SCALE, callbacks.GRAD_NORM, "epoch_loss"} <= set(s)
    # update_freq=50 and 10 steps per epoch: the two epoch ends.
    assert [st for st, _ in s[callbacks.GRAD_NORM]] == [10, 20]


def test_report_without_a_loss_scale_says_so():
    config = {"policy": {"name": "float32", "reason": "asked for"}, "versions": {}}
    metrics = {"accuracy": 0.5, "optimizer": {"loss_scale": None, "skipped_steps": 0,
                                              "iterations": 4}}
    r = report.build_report(config, metrics, {"loss": [1.0, 0.5]}, {})
    assert r["precision"]["steps"] == 4 and r["precision"]["skip_rate"] == 0
    assert "No loss scale under this policy" in report.to_markdown(r)
