"""`tfmp bench --quick` on a tiny BERT: the results file has its schema and its ratios."""

import importlib.util
import json
import os

import pytest

from tfmp import cli

# The PyTorch peer is in the `bench` extra (torch 2.13.0); without it the quick run
# measures tfmp's own configurations only.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
TF_ONLY = "tf_float32_fixed,tf_mixed_bfloat16_fixed,tf_float32_default,tf_float32_bucket"


def _argv(tmp_path, model_dir, parts):
    return (["--quick", "--model", model_dir, "--out-dir", str(tmp_path),
             "--parts", parts, "--repeats", "2", "--steps", "1"]
            + ([] if HAVE_TORCH else ["--configs", TF_ONLY]))


@pytest.mark.slow
def test_quick_bench_writes_json_and_markdown_with_ratios(tmp_path, tiny_bert_dir):
    assert cli.main(["bench"] + _argv(tmp_path, tiny_bert_dir, "training")) == 0
    [json_name] = [n for n in os.listdir(tmp_path) if n.endswith("-quick.json")]
    with open(tmp_path / json_name, encoding="utf-8") as f:
        results = json.load(f)
    assert {"command", "date", "machine", "versions", "training", "targets"} <= set(results)
    training = results["training"]
    for name, cfg in training["configs"].items():
        assert len(cfg["rounds"]) == 2, name
        assert cfg["examples_per_second"] > 0 and cfg["mfu"] > 0, name
    # Every ratio of the quick configuration set is computed, from paired rounds.
    labels = ["mixed_bfloat16 / float32 (fixed input)", "trimmed (default) / fixed-64, float32",
              "bucketed / fixed-64, float32"]
    if HAVE_TORCH:
        labels.append("tfmp / PyTorch, float32, fixed-64")
    for label in labels:
        assert training["ratios"][label] > 0, label
    assert training["configs"]["tf_float32_fixed"]["mean_width"] == 64
    assert all(0 < c["mean_width"] <= 64 for c in training["configs"].values())
    assert "MFU >= 70% of the float32 matmul rate" in results["targets"]
    markdown = (tmp_path / json_name.replace(".json", ".md")).read_text(encoding="utf-8")
    assert "| `tf_float32_fixed` |" in markdown
    assert ("tfmp / PyTorch, float32" in markdown) == HAVE_TORCH


@pytest.mark.slow
def test_grouping_study_pairs_seeds_and_grouped_batches_are_narrower(tiny_bert_dir):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    import grouping

    out = grouping.measure(tiny_bert_dir, seeds=(0, 1), pools=(2,), examples=192, epochs=1,
                           policy="float32", log=lambda *a: None)
    random_, pooled = out["variants"]["random"], out["variants"]["pool2"]
    assert [r["seed"] for r in pooled["runs"]] == [0, 1]
    assert random_["accuracy_diff_mean"] == 0.0
    diffs = [p["accuracy"] - r["accuracy"] for p, r in zip(pooled["runs"], random_["runs"])]
    assert abs(pooled["accuracy_diff_mean"] - sum(diffs) / 2) < 1e-12
    # (The tiny BERT's letter vocabulary makes every tweet fill --seq-len, so the widths
    # are checked on tweet-like lengths instead.) Sorting pools pads less than random.
    import numpy as np

    lengths = np.random.default_rng(0).integers(8, 64, size=3000)
    random_width = grouping.mean_width(lengths, 32, seed=0, epochs=2, pool=None)
    assert grouping.mean_width(lengths, 32, 0, 2, pool=8) < random_width - 5
    assert grouping.mean_width(lengths, 32, 0, 2, pool=50) < grouping.mean_width(
        lengths, 32, 0, 2, pool=8)


def test_grouping_cli_refuses_bad_seed_and_pool_lists():
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "grouping.py")
    for args, flag in ((["--pools", "8,0"], "--pools"), (["--seeds", "one"], "--seeds")):
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        assert proc.returncode == 2 and f"argument {flag}: expected comma-separated" in proc.stderr
        assert "Traceback" not in proc.stderr
