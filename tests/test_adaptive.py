"""--precision-map adaptive: calibration pins what overflows float16, and nothing else."""

import json
import os
import sys

import numpy as np
import pytest
from conftest import RUN_SETTINGS

from tfmp import adaptive, diagnose, models, precision
from tfmp.config import TrainConfig
from tfmp.errors import TrainingStopped
from tfmp.train import train

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from overflow import scale_block  # noqa: E402

# The tiny BERT's feed-forward outputs are ~0.02: x 1e7 puts block 1's past 65504
# (2.3e5 measured), as the bundled MiniLM's block 3 goes past it at x 3000.
FACTOR = 1e7
BATCH = (np.array(["the flight was great thanks", "worst delay ever rude crew"]),
         np.array([0, 1]))


@pytest.fixture(scope="module")
def overflowing_dir(tiny_bert_dir, tmp_path_factory):
    return scale_block(tiny_bert_dir, str(tmp_path_factory.mktemp("scaled")), 1, FACTOR)


def test_calibration_pins_the_overflowing_block_with_its_reason(overflowing_dir):
    model = models.load_classifier(overflowing_dir, num_classes=3, sequence_length=16,
                                   policy="mixed_float16")
    policy, result, _ = adaptive.calibrate(model, BATCH, precision.resolve("mixed_float16"),
                                           loss_scale=2.0**15, log=lambda *a: None)
    assert [row[0] for row in policy.layer_map] == ["bert_backbone/transformer_layer_1"]
    path, name, reason = policy.layer_map[0]
    assert name in ("float32", "mixed_bfloat16")
    assert "feedforward_output_dense: max |activation| 2.26e+05" in reason
    # Applied: the block computes out of float16, the others stay float16, and the
    # model no longer produces a non-finite value.
    dtypes = {p: l.compute_dtype for p, l in precision.layer_paths(model)}
    assert dtypes["bert_backbone/transformer_layer_1/feedforward_output_dense"] != "float16"
    assert dtypes["bert_backbone/transformer_layer_0/feedforward_output_dense"] == "float16"
    after = diagnose.diagnose(model, BATCH, loss_scale=2.0**15)
    assert after["first_nonfinite_layer"] is None


def test_the_float32_copy_alone_finds_what_both_passes_find(overflowing_dir):
    # Calibration runs only the float32 copy (actual=False): a value past 65504 there
    # stands for float16's overflow. The same block, pins and peaks; the culprit is the
    # scaled layer itself (the model as it is also turns the layer norm after it inf,
    # and lists that first).
    model = models.load_classifier(overflowing_dir, num_classes=3, sequence_length=16,
                                   policy="mixed_float16")
    both = diagnose.diagnose(model, BATCH, loss_scale=2.0**15)
    copy_only = diagnose.diagnose(model, BATCH, loss_scale=2.0**15, actual=False)
    block = "bert_backbone/transformer_layer_1/"
    assert both["first_nonfinite_layer"].startswith(block)
    assert copy_only["first_nonfinite_layer"] == block + "feedforward_output_dense"
    # The model as it is is inf downstream of the overflow too; the copy names only
    # the layers near the limit themselves.
    assert set(copy_only["suggested_float32_layers"]) <= set(both["suggested_float32_layers"])
    assert block + "feedforward_output_dense" in copy_only["suggested_float32_layers"]
    for a, b in zip(both["layers"], copy_only["layers"]):
        assert a["path"] == b["path"]
        assert a["max_abs_activation"] == pytest.approx(b["max_abs_activation"], rel=1e-6)
    # The same blocks to the same policy (the reasons count other layers).
    pins = [r[:2] for r in adaptive.pins_from(copy_only)]
    assert pins == [r[:2] for r in adaptive.pins_from(both)]
    assert [p for p, _ in pins] == [block[:-1]] and pins[0][1] in ("float32", "mixed_bfloat16")


def test_calibration_measures_the_model_itself_in_float32_as_a_copy_would(
        overflowing_dir, monkeypatch):
    # actual=False runs the model itself with every layer computing in float32 (no second
    # model to build): the numbers of a float32 copy, bitwise, and afterwards every layer
    # has its own policy object back (a pinned block's too).
    model = models.load_classifier(overflowing_dir, num_classes=3, sequence_length=16,
                                   policy="mixed_float16")
    precision.pin_float32(model, ["bert_backbone/transformer_layer_0"], dtype="mixed_bfloat16")
    policies = {id(l): l._dtype_policy for l in model._flatten_layers(include_self=True)}
    built = []
    real_copy = diagnose._float32_copy
    monkeypatch.setattr(diagnose, "_float32_copy", lambda m: built.append(1) or real_copy(m))
    view = diagnose.diagnose(model, BATCH, loss_scale=2.0**15, actual=False)
    assert built == []  # no copy was built
    assert all(l._dtype_policy is policies[id(l)]
               for l in model._flatten_layers(include_self=True) if id(l) in policies)
    dtypes = {p: l.compute_dtype for p, l in precision.layer_paths(model)}
    assert dtypes["bert_backbone/transformer_layer_0/feedforward_output_dense"] == "bfloat16"
    assert dtypes["bert_backbone/transformer_layer_1/feedforward_output_dense"] == "float16"
    monkeypatch.setattr(precision, "quantized", lambda m: True)  # the copy, as for int8
    copy = diagnose.diagnose(model, BATCH, loss_scale=2.0**15, actual=False)
    assert built == [1]
    assert [e["path"] for e in view["layers"]] == [e["path"] for e in copy["layers"]]
    for a, b in zip(view["layers"], copy["layers"]):
        assert a["compute_dtype"] == b["compute_dtype"]  # the model's, not the view's
        for key in ("max_abs_activation", "max_abs_gradient", "activation_underflow_share"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=0), (a["path"], key)
    assert adaptive.pins_from(view) == adaptive.pins_from(copy)


def test_an_ordinary_model_gets_no_pins_and_says_why(tiny_bert_dir):
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy="mixed_float16")
    lines = []
    policy, _, _ = adaptive.calibrate(model, BATCH, precision.resolve("mixed_float16"),
                                      loss_scale=2.0**15, log=lines.append)
    assert policy.layer_map == ()
    assert "every layer stays float16" in lines[0] and "below 65504" in lines[0]
    lines.clear()
    adaptive.calibrate(model, BATCH, precision.resolve("mixed_bfloat16"), log=lines.append)
    assert "nothing to calibrate" in lines[0]


def _train(csv, model_dir, out, **kw):
    settings = dict(RUN_SETTINGS, checkpoint_every=0)
    settings.update(kw)
    return train(TrainConfig(data=csv, model=model_dir, out=str(out), **settings), verbose=0)


@pytest.mark.slow
def test_overflow_case_plain_float16_collapses_and_adaptive_matches_float32(
        sentiment_csv, overflowing_dir, tmp_path):
    with pytest.raises(TrainingStopped, match="loss scale fell|were skipped"):
        _train(sentiment_csv, overflowing_dir, tmp_path / "f16", policy="mixed_float16")
    ref = _train(sentiment_csv, overflowing_dir, tmp_path / "f32", policy="float32")
    run = _train(sentiment_csv, overflowing_dir, tmp_path / "ada", policy="mixed_float16",
                 precision_map="adaptive")
    opt = run.metrics["optimizer"]
    # Plain float16 skips every step until its scale is spent; here the other blocks stay
    # float16, so a late gradient may still overflow once and halve the scale (step 65 of
    # 72 since batch widths are even, 2026-11-30), as in any dynamically scaled run.
    assert opt["skipped_steps"] <= 2 and opt["iterations"] >= 70
    # 36 test examples: within 2 of float32's answers (the README has MiniLM's numbers).
    assert abs(run.metrics["accuracy"] - ref.metrics["accuracy"]) <= 2 / 36 + 1e-9
    # The map is in the run directory, its config, and rebuilt by load and export.
    saved = json.load(open(os.path.join(run.run_dir, adaptive.FILE)))
    assert [r["path"] for r in saved["layer_map"]] == ["bert_backbone/transformer_layer_1"]
    assert saved["dtype_policy_map"]["class_name"] == "DTypePolicyMap"
    config = json.load(open(os.path.join(run.run_dir, "config.json")))
    assert config["policy"]["layer_map"][0][0] == "bert_backbone/transformer_layer_1"
    loaded = models.load_model(run.run_dir)
    rebuilt = models.rebuild(loaded, "mixed_float16")
    trained = dict(precision.layer_paths(run.model))["bert_backbone/transformer_layer_1"]
    assert trained.compute_dtype != "float16"
    for m in (loaded, rebuilt):
        block = dict(precision.layer_paths(m))["bert_backbone/transformer_layer_1"]
        assert block.compute_dtype == trained.compute_dtype


def test_a_resumed_run_takes_the_checkpoints_map_without_measuring_again():
    import types

    from tfmp import train as train_module  # noqa: F401 (the module, for _policy)

    rows = [["bert_backbone/transformer_layer_1", "float32", "measured at the start"]]
    point = types.SimpleNamespace(state={"policy": "mixed_float16", "layer_map": rows})
    dist = types.SimpleNamespace(num_workers=1)
    for policy in ("mixed_float16", "auto"):
        config = TrainConfig(policy=policy, precision_map="adaptive")
        resumed = sys.modules["tfmp.train"]._policy(config, point, dist)
        assert resumed.layer_map == (tuple(rows[0]),)
    assert sys.modules["tfmp.train"]._policy(TrainConfig(), None, dist).layer_map == ()
