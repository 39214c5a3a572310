import json

import keras
import numpy as np
import pytest
from conftest import write_sentiment_csv

from tfmp import cli, data, diagnose, models, precision
from tfmp.errors import UserError
from tfmp.config import TrainConfig


def _overflowing_model():
    """Dense "huge" reaches ~1e5 (> 65504) on inputs of 10; "shrink" brings it back."""
    with precision.policy_scope("mixed_float16"):
        model = keras.Sequential([
            keras.Input((4,)),
            keras.layers.Dense(4, name="small", kernel_initializer="identity"),
            keras.layers.Dense(4, name="huge", kernel_initializer=keras.initializers.Constant(3e3)),
            keras.layers.Dense(4, name="shrink", kernel_initializer=keras.initializers.Constant(1e-4)),
            keras.layers.Dense(2, name="logits", dtype="float32"),
        ])
    x = np.full((8, 4), 10.0, "float32")
    y = np.zeros((8,), "int32")
    return model, (x, y)


def test_first_nonfinite_layer_and_suggested_pins():
    model, batch = _overflowing_model()
    r = diagnose.diagnose(model, batch, loss_scale=1.0)
    by_path = {e["path"]: e for e in r["layers"]}
    assert list(by_path) == ["small", "huge", "shrink", "logits"]
    # Magnitudes come from a float32 copy: 4 inputs x 10 x 3e3 = 1.2e5 exactly.
    assert by_path["huge"]["max_abs_activation"] == pytest.approx(1.2e5, rel=1e-6)
    assert by_path["huge"]["headroom"] == pytest.approx(65504 / 1.2e5, rel=1e-6)
    assert by_path["small"]["max_abs_activation"] == pytest.approx(10.0)
    assert r["first_nonfinite_layer"] == "huge"
    # "shrink" gets inf from "huge" in float16 (non-finite too); "logits" is float32.
    assert r["suggested_float32_layers"] == ["huge", "shrink"]
    assert "huge" in diagnose.summary(r)


def test_applying_the_suggested_pins_makes_the_batch_finite_and_changes_nothing_else():
    model, batch = _overflowing_model()
    suggested = diagnose.diagnose(model, batch, loss_scale=1.0)["suggested_float32_layers"]
    assert precision.pin_float32(model, suggested) == ["huge", "shrink"]
    dtypes = {layer.name: layer.compute_dtype for layer in model.layers}
    assert dtypes == {"small": "float16", "huge": "float32", "shrink": "float32",
                      "logits": "float32"}
    r = diagnose.diagnose(model, batch, loss_scale=1.0)
    assert r["first_nonfinite_layer"] is None and r["suggested_float32_layers"] == []
    assert np.isfinite(model.predict(batch[0], verbose=0)).all()


def test_pins_survive_saving(tmp_path):
    model, batch = _overflowing_model()
    precision.pin_float32(model, ["huge", "shrink"])
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert [layer.compute_dtype for layer in restored.layers] == [
        "float16", "float32", "float32", "float32"]
    assert np.isfinite(restored.predict(batch[0], verbose=0)).all()


def test_unknown_pin_is_a_user_error():
    model, _ = _overflowing_model()
    with pytest.raises(UserError, match="'nope' matches no layer.*tfmp diagnose"):
        precision.pin_float32(model, ["nope"])


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("diag") / "t.csv", n=64)


def test_tiny_bert_has_headroom_and_pins_by_parent_path(csv, tiny_bert_dir):
    policy = precision.resolve("mixed_float16")
    config = TrainConfig(data=csv, model=tiny_bert_dir, policy="mixed_float16", seq_len=16)
    _, _, splits = data.prepare_data(config)
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy=policy)
    ds = data.make_dataset(splits.train, None, 8)
    r = diagnose.diagnose(model, ds)
    assert r["first_nonfinite_layer"] is None and r["suggested_float32_layers"] == []
    paths = [e["path"] for e in r["layers"]]
    assert "bert_backbone/transformer_layer_0/feedforward_intermediate_dense" in paths
    assert all(e["headroom"] > 4 for e in r["layers"] if e["headroom"] is not None)
    before = model.predict(ds.take(1).map(lambda x, y: x), verbose=0)
    pinned = precision.pin_float32(model, ["bert_backbone/transformer_layer_1"])
    assert "bert_backbone/transformer_layer_1/self_attention_layer/query" in pinned
    assert model.backbone.get_layer("transformer_layer_0").compute_dtype == "float16"
    after = model.predict(ds.take(1).map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose(after, before, rtol=0, atol=5e-3)  # float16 rounding


def test_cli_prints_the_table_and_writes_json(csv, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "d.json"
    status = cli.main(["diagnose", "--data", csv, "--model", tiny_bert_dir, "--seq-len", "16",
                       "--batch-size", "8", "--json", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "max|act|" in printed and "no float32 pins needed" in printed
    assert json.loads(out.read_text())["loss_scale"] == 2.0**15
    assert cli.main(["diagnose", "--data", csv, "--model", tiny_bert_dir, "--seq-len", "16",
                     "--float32-layers", "nope"]) == 2


def test_cli_json_into_a_missing_directory_is_refused_up_front(csv, tiny_bert_dir, tmp_path,
                                                                 capsys):
    out = tmp_path / "missing" / "d.json"
    assert cli.main(["diagnose", "--data", csv, "--model", tiny_bert_dir, "--seq-len", "16",
                     "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "missing").exists()


def test_several_batches_take_the_largest_peak_and_the_mean_underflow():
    import tensorflow as tf

    model, (x, y) = _overflowing_model()
    # Batch 2 is 10x larger: its peaks win; tiny inputs in batch 1 underflow in "small".
    x1 = np.concatenate([np.full((4, 4), 10.0), np.full((4, 4), 1e-9)]).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((np.concatenate([x1, 10 * x]),
                                             np.concatenate([y, y]))).batch(8)
    both = diagnose.diagnose(model, ds, loss_scale=1.0, batches=2)
    first = diagnose.diagnose(model, ds, loss_scale=1.0, batches=1)
    assert both["batches"] == 2 and first["batches"] == 1
    small = [{e["path"]: e for e in r["layers"]}["small"] for r in (both, first)]
    assert small[0]["max_abs_activation"] == pytest.approx(100.0)
    assert small[1]["max_abs_activation"] == pytest.approx(10.0)
    assert small[1]["activation_underflow_share"] == pytest.approx(0.5)
    assert small[0]["activation_underflow_share"] == pytest.approx(0.25)  # mean of 0.5, 0
