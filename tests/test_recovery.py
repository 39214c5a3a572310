"""Recovery from a burst of overflows during training (tfmp.recovery)."""

import json
import os
import sys

import pytest
from conftest import RUN_SETTINGS, read_scalars

from tfmp import adaptive, precision
from tfmp.config import TrainConfig
from tfmp.train import train

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from overflow import scale_block  # noqa: E402


@pytest.mark.slow
def test_a_burst_of_overflows_pins_the_block_restores_and_finishes(
        sentiment_csv, tiny_bert_dir, tmp_path, monkeypatch):
    model_dir = scale_block(tiny_bert_dir, str(tmp_path / "scaled"), 1, 1e7)
    # The calibration misses it (as it would an overflow that grows during training):
    # only the recovery can save the run.
    monkeypatch.setattr(adaptive, "calibrate",
                        lambda model, data, policy, *a, **k: (policy, None, 0.0))
    settings = dict(RUN_SETTINGS, checkpoint_every=0, recovery_burst=4, recovery_window=10)
    run = train(TrainConfig(data=sentiment_csv, model=model_dir, out=str(tmp_path / "run"),
                            policy="mixed_float16", precision_map="adaptive", **settings),
                verbose=0)
    (event,) = run.metrics["recoveries"]
    # Every step overflows from the first: the 4th skip triggers, and training goes back
    # to where it started (no checkpoint yet) with the block pinned.
    assert event["step"] == 4 and event["restored_to"] == 0 and event["steps_redone"] == 4
    assert [row[0] for row in event["layers"]] == ["bert_backbone/transformer_layer_1"]
    assert run.policy.layer_map[0][0] == "bert_backbone/transformer_layer_1"
    opt = run.metrics["optimizer"]
    # The 4 skips were undone by the restore; the restored scale is the initial one.
    assert opt["skipped_steps"] == 0
    assert opt["iterations"] == RUN_SETTINGS["epochs"] * 18
    assert run.metrics["accuracy"] > run.metrics["majority_class_share"] + 0.2
    notes = read_scalars(os.path.join(run.run_dir, "logs", "train"))["tfmp/notes"]
    assert any("Recovery at step 4" in text for _, text in notes)
    report = open(os.path.join(run.run_dir, "report.md")).read()
    assert "### Recoveries from overflow" in report and "transformer_layer_1" in report
    config = json.load(open(os.path.join(run.run_dir, "config.json")))
    assert config["policy"]["layer_map"][0][0] == "bert_backbone/transformer_layer_1"
    block = dict(precision.layer_paths(run.model))["bert_backbone/transformer_layer_1"]
    assert block.compute_dtype != "float16"
