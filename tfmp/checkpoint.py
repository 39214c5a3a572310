"""Crash-safe training checkpoints: save every N steps and at epoch ends, resume exactly.

    <out>.partial/checkpoints/
        ckpt-000000012/  model.weights.h5  state.npz  state.json
        ckpt-000000016/  ...
        latest           "ckpt-000000016", written last

A checkpoint is written into a temporary directory, every file fsynced, then renamed
into place; the `latest` pointer is replaced (temp file, fsync, `os.replace`) only
after that, and only then are checkpoints older than the newest `KEEP` removed. A
crash at any moment therefore leaves the previous checkpoint whole. `state.json`
records the size and SHA-256 of the other two files, so a truncated or corrupt
checkpoint is detected on load and the one before it used, with a warning naming
the bad file.

`model.weights.h5` holds the model's weights only; `state.npz` holds every optimizer
variable (slots, iterations, loss scale and its growth counter, skipped steps) and the
model's `SeedGenerator` states (dropout), so a resumed run draws the same dropout masks.
It is read with `allow_pickle=False`; file names inside `state.json` are checked
to be plain names inside the checkpoint directory.
"""

import dataclasses
import json
import os
import re
import shutil
import warnings

import keras
import numpy as np
# Keras' own weights writer/reader; its `objects_to_skip` (not on the public
# `save_weights`) leaves the optimizer out. Keras is pinned (setup.cfg).
from keras.src.saving import saving_lib

from tfmp import files
from tfmp.version import VERSION
from tfmp.errors import InputError, TrainingStopped
from tfmp.optimizer import global_step

KEEP = 2  # checkpoints kept: the newest, and one to fall back to if it is damaged
POINTER = "latest"
WEIGHTS = "model.weights.h5"
ARRAYS = "state.npz"
STATE = "state.json"
_NAME = re.compile(r"^ckpt-(\d{9})$")

def file_fingerprint(path):
    """SHA-256 of a data file (None for built-in datasets), to refuse a changed file."""
    if not path or not os.path.isfile(path):
        return None
    return files.sha256(path)


def library_versions():
    """The versions a checkpoint's arrays depend on (variable order, slot layout)."""
    import keras_hub
    import tensorflow as tf

    return {"tfmp": VERSION, "tensorflow": tf.__version__,
            "keras": keras.__version__, "keras_hub": keras_hub.__version__}


def _role(variable_path):
    """What a variable is (which parameter kind, which slot), comparable across processes.

    Only the last path component counts, without the numbers a process appends to
    auto-named objects (`dense_2_bias_momentum`): the scopes above it depend on when
    the variable was created (`loss_scale_optimizer/adam_w/...` during `fit`,
    `adam_w/...` when built before a restore), not on what it holds.
    """
    return re.sub(r"_\d+(?=_|$)", "", variable_path.rsplit("/", 1)[-1])


def _value_now(value):
    """`value`'s array at this moment, without a copy where TensorFlow allows it.

    A read of a TensorFlow variable is immutable: an update made while the read is
    alive writes a new buffer (copy on write), so the view stays this step's value
    while training goes on, and only the read is paid for here.
    """
    if isinstance(value, np.ndarray):
        return value
    import tensorflow as tf

    tensor = tf.convert_to_tensor(value)
    if hasattr(tensor, "_numpy"):  # an eager tensor: numpy shares its buffer
        return np.asarray(tensor)
    return keras.ops.convert_to_numpy(tensor)


def check_finite(model, step):
    """Raises `TrainingStopped` if a weight of `model` is NaN or infinite (nothing is saved)."""
    bad = [w.path for w in model.weights if not np.isfinite(_value_now(w)).all()]
    if bad:
        raise TrainingStopped(
            f"At step {step} {len(bad)} weights are not finite (first: {bad[0]}), so no "
            "checkpoint or model was saved from them. A gradient overflowed or the loss "
            "diverged: try a lower learning rate (--lr), gradient clipping (--clipnorm), "
            "or check the data; resume from the last checkpoint with --resume.")


def _extra_model_variables(model):
    # SeedGenerator states: in `model.variables` but not in `model.weights`.
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


class _Recorder(saving_lib.H5IOStore):
    """Takes the place of Keras' weights file while Keras walks the model: keeps each
    entry (path, metadata, {key: array}) in Keras' order, for `write` to replay."""

    def __init__(self):  # no file
        self.entries = []

    def __bool__(self):
        return True

    def make(self, path, metadata=None):
        values = _Entry()
        self.entries.append((path, metadata, values))
        return values


class _Entry(dict):
    def __setitem__(self, key, value):
        super().__setitem__(key, _value_now(value))


@dataclasses.dataclass
class Snapshot:
    """A checkpoint in memory: what `write` puts on disk, read at one step."""

    step: int
    weights: list  # Keras' weights-file entries: (path, metadata, {key: array})
    arrays: dict  # state.npz: optimizer and seed variables
    state: dict  # state.json, without the file list


def snapshot(model, state):
    """Reads a checkpoint of `model` (weights, optimizer, seeds) and `state`, no copies.

    Args:
        model: a compiled `keras.Model`; its optimizer is built if it is not yet.
        state: dict, JSON-serializable: epoch, batch position, config, history, ...
            (copied: the caller may change it). `global_step` is added from the
            optimizer.
    """
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    step = global_step(opt)
    check_finite(model, step)  # a NaN checkpoint would pass its checksum and resume into NaN
    # The model's weights only: Keras' `save_weights` would add the optimizer's
    # variables (182 MB of MiniLM's 455 MB checkpoint), which `ARRAYS` holds anyway.
    # Keras' own walk (what `save_weights_only` does), into a recorder, not a file.
    recorder = _Recorder()
    saving_lib._save_state(model, weights_store=recorder, assets_store=None, inner_path="",
                           visited_saveables={id(opt)})
    opt_vars, extra = opt.variables, _extra_model_variables(model)
    arrays = {f"opt_{i:05d}": _value_now(v) for i, v in enumerate(opt_vars)}
    arrays.update({f"seed_{i:05d}": _value_now(v) for i, v in enumerate(extra)})
    state = dict(json.loads(files.dumps(state)), global_step=step,
                 optimizer_variables=[v.path for v in opt_vars],
                 seed_variables=[v.path for v in extra], versions=library_versions())
    return Snapshot(step, recorder.entries, arrays, state)


def save(root, model, state):
    """Writes a checkpoint of `model` and `state` under `root` (`snapshot`, then `write`).

    Returns:
        The path of the new checkpoint directory.
    """
    return write(root, snapshot(model, state))


def _write_weights(path, entries):
    store = saving_lib.H5IOStore(path, mode="w")
    try:
        for entry_path, metadata, values in entries:
            entry = store.make(entry_path, metadata=metadata)
            for key, value in values.items():
                entry[key] = value
    finally:
        store.close()


def write(root, snap):
    """Writes `snap` (a `Snapshot`) as a checkpoint under `root`; safe off the main thread.

    Returns:
        The path of the new checkpoint directory.
    """
    os.makedirs(root, exist_ok=True)
    name = f"ckpt-{snap.step:09d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{files.unique_suffix()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        _write_weights(os.path.join(tmp, WEIGHTS), snap.weights)
        with open(os.path.join(tmp, ARRAYS), "wb") as f:
            np.savez(f, **snap.arrays)
        written = {}
        for fname in (WEIGHTS, ARRAYS):
            path = os.path.join(tmp, fname)
            files.fsync_file(path)
            written[fname] = {"bytes": os.path.getsize(path), "sha256": files.sha256(path)}
        files.write_atomic(os.path.join(tmp, STATE), files.dumps(dict(snap.state,
                                                                      files=written)))
        files.fsync_dir(tmp)
        if os.path.exists(final):  # an epoch end right after a step checkpoint: replace it
            stale = os.path.join(root, f".stale-{name}-{files.unique_suffix()}")
            os.replace(final, stale)
            os.replace(tmp, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(tmp, final)
        files.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files.write_atomic(os.path.join(root, POINTER), name + "\n")
    for old in _checkpoint_names(root)[:-KEEP]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return final


def remove_temporaries(root):
    """Removes what a crash mid-save left behind (`.tmp-*`, `.stale-*`); never a checkpoint."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        # .tmp-/.stale-: checkpoint directories; .latest.*.tmp: the pointer's temp file
        # (tfmp.files.write_atomic); latest.tmp-*: the same, from before it existed.
        if name.startswith((".tmp-", ".stale-", POINTER + ".tmp-", f".{POINTER}.")):
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def _checkpoint_names(root):
    try:
        names = os.listdir(root)
    except OSError:
        return []
    return sorted(n for n in names if _NAME.match(n) and os.path.isdir(os.path.join(root, n)))


def _verify(path):
    """The state of checkpoint `path`, or raises ValueError naming the damaged file."""
    state_path = os.path.join(path, STATE)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{state_path}: unreadable ({e})") from None
    listed = state.get("files") if isinstance(state, dict) else None
    if not isinstance(listed, dict) or set(listed) != {WEIGHTS, ARRAYS}:
        raise ValueError(f"{state_path}: no file list")
    if not isinstance(state.get("config"), dict):
        raise ValueError(f"{state_path}: no run config")
    for fname, expected in listed.items():
        if not isinstance(expected, dict):
            raise ValueError(f"{state_path}: the entry of {fname} is not a size and checksum")
        # Only the two fixed names are accepted: nothing outside the checkpoint is read.
        fpath = os.path.join(path, fname)
        if not os.path.isfile(fpath):
            raise ValueError(f"{fpath}: missing")
        if os.path.getsize(fpath) != expected.get("bytes"):
            raise ValueError(f"{fpath}: truncated ({os.path.getsize(fpath)} bytes, "
                             f"{expected.get('bytes')} written)")
        if files.sha256(fpath) != expected.get("sha256"):
            raise ValueError(f"{fpath}: corrupt (checksum differs)")
    return state


def find_latest(root):
    """(path, state) of the newest intact committed checkpoint under `root`, or None.

    The `latest` pointer is the commit: a checkpoint newer than the one it names was
    renamed into place but the save did not finish (a crash in between), so it is
    not used. Checkpoints are tried newest first from the pointed one; each one
    skipped for damage is named in a warning.
    """
    names = _checkpoint_names(root)
    try:
        with open(os.path.join(root, POINTER), encoding="utf-8") as f:
            pointed = f.read().strip()
    except OSError:
        pointed = None
    if pointed in names:  # else (pointer lost or damaged) every checkpoint is a candidate
        names = names[:names.index(pointed) + 1]
    for name in reversed(names):
        path = os.path.join(root, name)
        try:
            return path, _verify(path)
        except ValueError as e:
            warnings.warn(f"Checkpoint {path} is damaged and was skipped: {e}. "
                          "Falling back to the previous checkpoint.", stacklevel=2)
    return None


def restore(model, path, state):
    """Loads weights, optimizer variables and seed states of checkpoint `path` into `model`."""
    opt = model.optimizer
    if not opt.built:
        opt.build(model.trainable_variables)
    try:
        # The optimizer comes from `ARRAYS` (a checkpoint from before 2026-11-30 also
        # has it in the weights file, which is then not read).
        saving_lib.load_weights_only(model, os.path.join(path, WEIGHTS), objects_to_skip=[opt])
    except Exception as e:  # a checksum-valid file that does not fit this model
        raise InputError(f"{os.path.join(path, WEIGHTS)}: does not fit the model ({e}).") from e
    _check_versions(path, state.get("versions"))
    with np.load(os.path.join(path, ARRAYS), allow_pickle=False) as arrays:
        for prefix, variables, names in (
            ("opt", opt.variables, state["optimizer_variables"]),
            ("seed", _extra_model_variables(model), state["seed_variables"]),
        ):
            if len(variables) != len(names):
                raise InputError(
                    f"{os.path.join(path, ARRAYS)}: {len(names)} {prefix} variables saved, "
                    f"the model has {len(variables)}; the checkpoint is from another model.")
            for i, v in enumerate(variables):
                value = arrays[f"{prefix}_{i:05d}"]
                # Same shape is not enough: AdamW's momentum and velocity share one.
                if prefix == "opt" and _role(names[i]) != _role(v.path):
                    raise InputError(
                        f"{os.path.join(path, ARRAYS)}: optimizer variable {i} was saved as "
                        f"{names[i]}, but this optimizer's is {v.path}; the checkpoint is "
                        "from another optimizer or library version. Start a new run.")
                if tuple(value.shape) != tuple(v.shape):
                    raise InputError(
                        f"{os.path.join(path, ARRAYS)}: {names[i]} has shape {value.shape}, "
                        f"the model's {v.path} {tuple(v.shape)}.")
                v.assign(value)


def _check_versions(path, saved):
    now = library_versions()
    changed = {k: (v, now.get(k)) for k, v in (saved or {}).items() if now.get(k) != v}
    if changed:
        warnings.warn(
            f"Checkpoint {path} was written with "
            + ", ".join(f"{k} {a} (now {b})" for k, (a, b) in changed.items())
            + ": the resumed run may not end exactly where an uninterrupted one would.",
            stacklevel=3)


@dataclasses.dataclass
class Position:
    """Where training stands: `epoch` (0-based) and batches already trained in it."""

    epoch: int
    batch: int

    @classmethod
    def from_step(cls, step, steps_per_epoch):
        return cls(step // steps_per_epoch, step % steps_per_epoch)
