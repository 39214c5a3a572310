"""The run directory: `<out>.partial` staging, the run files, the final rename, the resume point.

    out = check_out(config)                       # refuses an occupied --out up front
    staging = open_staging(out, dist, resuming)   # <out>.partial (the chief's)
    write_run_files(staging, run_files)           # config.json, metrics.json, ...
    finish(staging, out, dist)                    # <out>.partial -> <out>

A run is assembled in `<out>.partial/` and renamed to `<out>` only when it is
complete, so a failed run never leaves a directory that looks finished; its
checkpoints (`tfmp.checkpoint`) live in `<out>.partial/checkpoints/` until then.

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
from tfmp.config import TrainConfig
from tfmp.errors import InputError, UserError

PARTIAL = ".partial"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
MODEL = "model.keras"


def check_out(config):
    """The absolute `--out` of a new run; refuses an occupied one without --overwrite."""
    out = os.path.abspath(config.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not config.overwrite:
            raise UserError(
                f"Run directory '{config.out}' already exists and is not empty. Pass "
                "--overwrite to replace it, or choose another --out."
            )
    return out


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
    path, state = found
    return ResumePoint(staging, path, state, TrainConfig.from_json(state["config"]))


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
    """Drops the checkpoints of a complete run and renames it into place.

    Returns `out`, or None on a non-chief worker (whose scratch directory goes).
    """
    # The finished run has model.keras; its checkpoints (weights + slots) go.
    shutil.rmtree(os.path.join(staging, CHECKPOINTS), ignore_errors=True)
    if not dist.is_chief:
        if not os.environ.get("TFMP_WORKER_DIR"):
            shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
        return None
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(staging, out)
    return out
