"""A checkpoint's weights file holds the model only; the optimizer lives in state.npz.
It is written from a snapshot, the file Keras' own `save_weights_only` writes, and a
background write holds the values of the step it was taken at.

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
        monkeypatch.setattr(checkpoint, "_write_weights", lambda path, entries:
                            checkpoint.saving_lib.save_weights_only(source, path))
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


def _h5_tree(path):
    import h5py

    tree = {}
    with h5py.File(path) as f:
        f.visititems(lambda name, obj: tree.__setitem__(name, (
            dict(obj.attrs), obj[()] if isinstance(obj, h5py.Dataset) else None)))
    return tree


def test_weights_file_from_a_snapshot_is_the_file_keras_writes(tiny_bert_dir, tmp_path):
    model = _trained_looking(_model(tiny_bert_dir))
    path = checkpoint.save(str(tmp_path / "ckpt"), model, {"config": {}})
    keras_file = str(tmp_path / "keras.weights.h5")
    checkpoint.saving_lib.save_weights_only(model, keras_file,
                                            objects_to_skip=[model.optimizer])
    ours, theirs = _h5_tree(f"{path}/{checkpoint.WEIGHTS}"), _h5_tree(keras_file)
    assert sorted(ours) == sorted(theirs)
    assert sum(v is not None for _, v in ours.values()) == len(model.weights)
    for name, (attrs, value) in theirs.items():
        assert ours[name][0] == attrs, name
        if value is not None:
            np.testing.assert_array_equal(ours[name][1], value, err_msg=name)


def test_a_background_write_holds_the_values_of_its_step(tiny_bert_dir, tmp_path,
                                                         monkeypatch):
    import threading

    from tfmp import checkpoint_saver

    trained, write = threading.Event(), checkpoint.write
    monkeypatch.setattr(checkpoint, "write", lambda *a: trained.wait(60) and write(*a))
    model = _trained_looking(_model(tiny_bert_dir))
    before = ([keras.ops.convert_to_numpy(w).copy() for w in model.weights],
              [keras.ops.convert_to_numpy(v).copy() for v in model.optimizer.variables])
    history = {"loss": [1.0]}
    saver = checkpoint_saver.CheckpointSaver(str(tmp_path / "ckpt"), 0, lambda logs: {
        "config": {}, "history": history})
    saver.set_model(model)
    assert saver.save(background=True) is None
    history["loss"].append(0.5)  # the next epoch's: not this checkpoint's
    # Training goes on while the files are written: an optimizer step and direct
    # assignments change every weight and slot.
    grads = [keras.ops.ones_like(w) for w in model.trainable_variables]
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for w in model.weights:
        w.assign(w * 2.0 + 1.0)
    trained.set()  # only now does the write start
    path = saver.wait()
    assert path is not None and saver.wait() is None
    assert saver.write_seconds > 0.0
    target = _model(tiny_bert_dir)
    found, state = checkpoint.find_latest(str(tmp_path / "ckpt"))
    assert found == path and state["history"] == {"loss": [1.0]}
    checkpoint.restore(target, found, state)
    assert _max_diff(before[0], target.weights) == 0.0
    assert _max_diff(before[1], target.optimizer.variables) == 0.0
    assert _max_diff(model.weights, target.weights) > 0.1  # the model did move on


def test_a_failed_background_write_is_raised_by_wait_and_leaves_nothing(tiny_bert_dir,
                                                                        tmp_path):
    from tfmp import checkpoint_saver

    model = _model(tiny_bert_dir)
    root = tmp_path / "ckpt"
    saver = checkpoint_saver.CheckpointSaver(str(root), 0, lambda logs: {"config": {}})
    saver.set_model(model)
    saver.save(background=True)
    assert saver.wait() is not None
    original = checkpoint.np.savez
    try:
        checkpoint.np.savez = lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space"))
        model.optimizer.iterations.assign_add(1)
        saver.save(background=True)
        with pytest.raises(OSError, match="No space") as raised:
            saver.wait()
        # Raised away from the write: it says which checkpoint, where, and what to do.
        note = " ".join(getattr(raised.value, "__notes__", []))
        assert f"checkpoint of step 1 under {root}" in note and "--resume" in note
    finally:
        checkpoint.np.savez = original
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000000000", "latest"]
