"""A checkpoint's weights file holds the model only; the optimizer lives in state.npz.

Keras' `save_weights` would write the optimizer's variables into the weights file too
(182 MB of a MiniLM checkpoint's 455 MB), which `state.npz` holds anyway. Checkpoints
written before that change (optimizer in both files) still restore exactly.
"""

import numpy as np
import pytest

import keras

from tfmp import checkpoint, models, precision
from tfmp.config import TrainConfig
from tfmp.train import compile_classifier


def _model(model_dir):
    policy = precision.resolve("mixed_float16")
    model = models.load_classifier(model_dir, num_classes=3, sequence_length=16, policy=policy)
    compile_classifier(model, policy, 100, TrainConfig())
    model.optimizer.build(model.trainable_variables)
    return model


def _trained_looking(model):
    rng = np.random.default_rng(0)
    for v in model.optimizer.variables:  # slots, iterations, loss scale, counters
        if "int" in str(v.dtype):
            v.assign(np.full(v.shape, 7, dtype=str(v.dtype)))
        else:
            v.assign(np.asarray(rng.random(v.shape) + 1.0, dtype=str(v.dtype)))
    for w in model.weights:
        w.assign(w + 0.5)
    return model


def _max_diff(a, b):
    return max(float(np.abs(keras.ops.convert_to_numpy(x).astype(np.float64)
                            - keras.ops.convert_to_numpy(y).astype(np.float64)).max())
               for x, y in zip(a, b))


@pytest.mark.parametrize("old_format", [False, True])
def test_checkpoint_restores_weights_and_optimizer_exactly(tiny_bert_dir, tmp_path, monkeypatch,
                                                          old_format):
    source = _trained_looking(_model(tiny_bert_dir))
    if old_format:  # as written before 2026-11-30: the optimizer in the weights file too
        save = checkpoint.saving_lib.save_weights_only
        monkeypatch.setattr(checkpoint.saving_lib, "save_weights_only",
                            lambda model, path, objects_to_skip=None: save(model, path))
    path = checkpoint.save(str(tmp_path), source, {"config": {}})
    monkeypatch.undo()
    import h5py

    with h5py.File(f"{path}/{checkpoint.WEIGHTS}") as f:
        assert ("optimizer" in f) == old_format
    target = _model(tiny_bert_dir)
    found, state = checkpoint.find_latest(str(tmp_path))
    checkpoint.restore(target, found, state)
    assert _max_diff(source.weights, target.weights) == 0.0
    assert _max_diff(source.optimizer.variables, target.optimizer.variables) == 0.0
