"""The per-layer headroom image (tfmp.headroom) and the report's plots on a short run."""

import io
import math

import numpy as np
from PIL import Image

from tfmp import callbacks, diagnose, headroom, models, report

BATCH = (np.array(["the flight was great thanks", "worst delay ever rude crew"]),
         np.array([0, 1]))


def test_headroom_columns_read_back_as_an_image_in_tensorboard(tiny_bert_dir, tmp_path):
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16,
                                   policy="mixed_float16")
    column = headroom.headroom_column(diagnose.diagnose(model, BATCH, loss_scale=1024.0,
                                                        reference=False))
    # Random tiny BERT: every value is far below 65504, none above it.
    assert all(-40 < v < -2 for v in column.values())
    assert "bert_backbone/transformer_layer_1/feedforward_output_dense" in column
    image = headroom.HeadroomImage(str(tmp_path), BATCH, every=1)
    image.set_model(model)
    image.add_column(5)
    image.add_column(10)
    image.on_train_end()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"),
                                             size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    events = acc.Tensors(headroom.TAG)
    assert [e.step for e in events] == [5, 10]
    png = tf.make_ndarray(events[-1].tensor_proto)[2]  # (width, height, png bytes)
    width, height = Image.open(io.BytesIO(png)).size
    assert height > 16 * len(column) * 0.9 and width > 300  # one row per layer, readable


def test_an_overflow_reads_as_past_the_limit():
    column = headroom.headroom_column({"loss_scale": 8.0, "layers": [
        {"path": "a", "max_abs_activation": 65504.0 * 4, "max_abs_gradient": 1.0,
         "nonfinite_activation": False, "nonfinite_gradient": False},
        {"path": "b", "max_abs_activation": 1.0, "max_abs_gradient": None,
         "nonfinite_activation": True, "nonfinite_gradient": False}]})
    assert column["a"] == 2.0 and column["b"] == math.inf


def _blue(path):
    """Pixels in matplotlib's first colour (#1f77b4): the data, and the legend's sample."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(np.sum(np.abs(pixels - [31, 119, 180]).sum(axis=-1) < 60))


def test_an_8_step_run_draws_a_visible_loss_scale_and_throughput(tmp_path):
    # What an 8-step run logs: the scale once at step 8, throughput once.
    scalars = {callbacks.LOSS_SCALE: [(8, 32768.0)], callbacks.EXAMPLES_PER_SECOND: [(8, 51.0)],
               callbacks.LEARNING_RATE: [(8, 1e-5)]}
    config = {"policy": {"name": "mixed_float16"}, "versions": {},
              "config": {"initial_loss_scale": 32768.0}}
    metrics = {"optimizer": {"loss_scale": 32768.0, "skipped_steps": 0, "iterations": 8}}
    report.write_report(str(tmp_path), config, metrics, {"loss": [0.9], "accuracy": [0.5]},
                        scalars=scalars)
    # Before: a step line through one point (nothing) beside a legend sample (~50 px).
    # Now the scale is drawn from step 0 across the 600-pixel-wide axes.
    assert _blue(tmp_path / report.PLOTS["loss_scale"]) > 800
    assert _blue(tmp_path / report.PLOTS["throughput"]) > 40  # one visible marker
