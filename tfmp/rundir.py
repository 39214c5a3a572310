"""The run directory: `<out>.partial` staging, the run files, the final rename, the resume point.

    out = check_out(config, protected)            # refuses an unsafe or occupied --out
    with files.DirLock(out):                      # one writer per run directory
        point = interrupted_run(out)              # a re-run of an interrupted run resumes
        staging = open_staging(out, dist, resuming)   # <out>.partial (the chief's)
        write_run_files(staging, ...)             # config.json, metrics.json, ...
        finish(staging, out, dist)                # fsync, COMPLETE, <out>.partial -> <out>

A run is assembled in `<out>.partial/` and renamed to `<out>` only when it is
complete and on disk (`tfmp.files.publish`), so a failed run never leaves a
directory that looks finished; its checkpoints (`tfmp.checkpoint`) live in
`<out>.partial/checkpoints/` until the finished run is in place.

`--overwrite` replaces only an empty directory or a tfmp run (recognised by its
files), never a file, a symbolic link, `/`, the home or working directory (or one
of their parents), or a directory holding the data or the model.

Under a multi-worker strategy only the chief writes `<out>`. Every other worker
writes the same files into a scratch directory: `TFMP_WORKER_DIR`, else a temporary
one, removed at the end.
"""

import dataclasses
import os
import platform
import shutil
import sys
import tempfile

import keras

from tfmp import checkpoint, files, hardware
from tfmp.config import TrainConfig, config_differences
from tfmp.errors import InputError, UserError

PARTIAL = ".partial"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
MODEL = "model.keras"


def looks_like_run(path):
    """A finished tfmp run, or one written before runs had a completion marker."""
    return files.is_complete(path) or all(
        os.path.isfile(os.path.join(path, f)) for f in ("config.json", "labels.json", MODEL))


def _is_within(path, parent):
    return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def check_target(given, what, flag, protected=(), replaceable=looks_like_run, overwrite=False):
    """The absolute path of a directory tfmp will create or replace, or a `UserError`.

    Refused whatever the flags: a symbolic link or a file, `/`, the home directory,
    the working directory or one of its parents, and any directory holding one of
    the `protected` paths (the data, the model, the run being exported). An existing
    non-empty directory is replaced only with `overwrite`, and only when
    `replaceable(path)` recognises it as tfmp's own.
    """
    raw = os.fspath(given).rstrip("/\\") or os.sep
    path = os.path.abspath(raw)
    if os.path.islink(raw):
        raise UserError(f"{flag} '{given}' is a symbolic link; give the directory it points "
                        f"to ({os.path.realpath(raw)}) or another path.")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} '{given}' is a file, not a directory; choose another {flag}.")
    real = os.path.realpath(path)
    unsafe = [p for p in (os.sep, os.path.expanduser("~")) if real == os.path.realpath(p)]
    if _is_within(os.path.realpath(os.getcwd()), real):
        unsafe.append("the working directory or a parent of it")
    unsafe += [f"it holds {p}" for p in protected if p and _is_within(os.path.realpath(p), real)]
    if unsafe:
        raise UserError(f"{flag} '{given}' cannot be {what} ({'; '.join(unsafe)}): tfmp "
                        f"replaces that whole directory. Choose a new directory for {flag}.")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise UserError(f"{flag} '{given}' already exists and is not empty. Pass "
                            f"--overwrite to replace it, or choose another {flag}.")
        if not replaceable(path):
            found = sorted(os.listdir(path))
            raise UserError(
                f"{flag} '{given}' is not tfmp's to replace: --overwrite replaces only an "
                f"empty directory or one tfmp wrote, and it holds "
                f"{', '.join(found[:8])}{' ...' if len(found) > 8 else ''}. Choose another "
                f"{flag}.")
    return path


def check_out(config, protected=()):
    """The absolute `--out` of a new run; refuses an unsafe or occupied one up front."""
    return check_target(config.out, "a run directory", "--out", protected,
                        looks_like_run, config.overwrite)


def staging_dir(run_dir):
    """The `<out>.partial` directory of an unfinished run, given it or `<out>`."""
    run_dir = os.path.abspath(os.fspath(run_dir).rstrip("/\\"))
    staging = run_dir if run_dir.endswith(PARTIAL) else run_dir + PARTIAL
    if os.path.isdir(os.path.join(staging, CHECKPOINTS)):
        return staging
    if os.path.isfile(os.path.join(run_dir, MODEL)):
        raise InputError(f"'{run_dir}' is a finished run (it has {MODEL}): nothing to "
                         "resume. Start a new run with another --out.")
    raise InputError(
        f"'{run_dir}' is not a resumable run directory: no {CHECKPOINTS}/ in it or in "
        f"'{run_dir}{PARTIAL}'. Pass the --out of an interrupted `tfmp train`.")


@dataclasses.dataclass
class ResumePoint:
    """Where an interrupted run stands: its staging dir, newest checkpoint and config."""

    staging: str
    checkpoint: str  # path of the checkpoint directory
    state: dict  # its state.json
    config: TrainConfig  # the config the run was started with

    @property
    def out(self):
        return self.staging[:-len(PARTIAL)]


def resume_point(run_dir):
    """The `ResumePoint` of `run_dir`: the `--out` of an interrupted run or its `<out>.partial`."""
    staging = staging_dir(run_dir)
    root = os.path.join(staging, CHECKPOINTS)
    found = checkpoint.find_latest(root)
    if found is None:
        raise UserError(f"'{root}' holds no intact checkpoint, so there is nothing to resume. "
                        "Start the run again without --resume (with --overwrite).")
    return _point(staging, *found)


def _point(staging, path, state):
    # checkpoint.find_latest vouches for the state's shape, not for a hand-edited config.
    source = os.path.join(path, checkpoint.STATE)
    return ResumePoint(staging, path, state, TrainConfig.from_json(state["config"], source))


def interrupted_run(out):
    """The `ResumePoint` of an interrupted run at `out` (its newest intact checkpoint), or None."""
    root = os.path.join(out + PARTIAL, CHECKPOINTS)
    found = checkpoint.find_latest(root) if os.path.isdir(root) else None
    if found is None:
        return None
    return _point(out + PARTIAL, *found)


def _finish_cut_short(config, out, log):
    """Completes a run whose last rename a crash cut short, and clears what it left aside."""
    recovered = files.recover(out + PARTIAL, out)
    parent, name = os.path.split(out)
    if files.is_complete(out) and os.path.isdir(parent):
        for leftover in os.listdir(parent):
            if leftover.startswith(name + ".old-"):  # the run it replaced, renamed aside
                shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    if recovered and not config.overwrite:
        raise UserError(
            f"'{out}' had finished, but its final rename was cut short (a crash or a "
            "kill); it is now in place, complete. Use it, or pass --overwrite to "
            "train it again.")
    if recovered:
        log(f"'{out}' had finished but was not renamed into place; it is now, and "
            "--overwrite replaces it.")


def continue_interrupted(config, out, log=print):
    """The resume point of an interrupted run at `out` that this config would continue.

    A scheduler that re-runs the same command after a pre-emption gets the run
    resumed; a different config is refused (exit 2) rather than the interrupted
    run's checkpoints deleted. `--overwrite` starts over.
    """
    _finish_cut_short(config, out, log)
    point = interrupted_run(out)
    if point is None or config.overwrite:
        return None
    step = point.state.get("global_step")
    diffs = config_differences(point.config, dataclasses.replace(
        config, policy=point.config.policy))
    if point.config.policy != config.policy and point.state.get("policy") != config.policy:
        diffs.append(f"policy: {point.config.policy!r} in the checkpoint, {config.policy!r} now")
    if diffs:
        raise UserError(
            f"'{point.staging}' holds an interrupted run (step {step}) whose config differs "
            f"from this one ({'; '.join(diffs)}). Continue it as it was with `tfmp train "
            f"--resume {out}`, or pass --overwrite to discard it and start over.")
    log(f"Found an interrupted run of this config in {point.staging} at step {step}: "
        "resuming it (pass --overwrite to start over instead).")
    return point


def open_staging(out, dist, resuming):
    """Creates (or, resuming, keeps) the directory this process writes the run into."""
    if dist.is_chief:
        staging = out + PARTIAL
    else:  # the same writes, where no one reads them
        scratch = os.environ.get("TFMP_WORKER_DIR") or tempfile.mkdtemp(
            prefix=f"tfmp-worker{dist.worker_index}-")
        staging = os.path.join(os.path.abspath(scratch), "run" + PARTIAL)
    if resuming:
        checkpoint.remove_temporaries(os.path.join(staging, CHECKPOINTS))
    else:
        shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, exist_ok=True)
    return staging


def versions():
    """Library versions and the machine, as a run records them."""
    import keras_hub
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "machine": platform.machine(),
        "processor": hardware.cpu_model() or platform.processor(),
        "cpus": os.cpu_count(),
        "onednn": hardware.onednn_enabled(),
    }


def command_line():
    return " ".join(sys.argv) if sys.argv else ""


def write_run_files(staging, run_config, metrics, history, label_map, classification_report):
    """Writes config.json, labels.json, metrics.json, history.json and the text report."""
    files.write_json(os.path.join(staging, "config.json"), run_config)
    label_map.save(os.path.join(staging, "labels.json"))
    files.write_json(os.path.join(staging, "metrics.json"), metrics)
    files.write_json(os.path.join(staging, "history.json"), history)
    files.write_atomic(os.path.join(staging, "classification_report.txt"),
                       classification_report)


def finish(staging, out, dist):
    """Puts a complete run in place durably, then drops its checkpoints.

    Returns `out`, or None on a non-chief worker (whose scratch directory goes).
    """
    if not dist.is_chief:
        if not os.environ.get("TFMP_WORKER_DIR"):
            shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
        return None
    model = os.path.join(staging, MODEL)
    files.publish(staging, out, {"model_sha256": files.sha256(model)})
    # Only now that the finished run (model.keras) is durable do its checkpoints
    # (weights + optimizer slots) go: until here they are the way back.
    shutil.rmtree(os.path.join(out, CHECKPOINTS), ignore_errors=True)
    files.fsync_dir(out)
    return out
