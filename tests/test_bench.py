"""`tfmp bench --quick` on a tiny BERT: the results file has its schema and its ratios."""

import argparse
import importlib.util
import json
import os

from tfmp import bench

# The PyTorch peer is in the `bench` extra (torch 2.13.0); without it the quick run
# measures tfmp's own configurations only.
HAVE_TORCH = importlib.util.find_spec("torch") is not None
TF_ONLY = "tf_float32_fixed,tf_mixed_bfloat16_fixed,tf_float32_default,tf_float32_bucket"


def _args(tmp_path, model_dir, parts):
    parser = argparse.ArgumentParser()
    bench.add_cli(parser.add_subparsers()).set_defaults()
    return parser.parse_args([
        "bench", "--quick", "--model", model_dir, "--out-dir", str(tmp_path),
        "--parts", parts, "--repeats", "2", "--steps", "1"]
        + ([] if HAVE_TORCH else ["--configs", TF_ONLY]))


def test_quick_bench_writes_json_and_markdown_with_ratios(tmp_path, tiny_bert_dir):
    args = _args(tmp_path, tiny_bert_dir, "training")
    assert args.func(args) == 0
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
