"""The export directory: who may write it, where it is assembled, how it is put in place.

    with claim("saved_models/demo", overwrite, protected=(run_dir,)) as target:
        with staging(target) as tmp:              # .demo.partial-<host>-<pid>-<random>
            ...write every variant into tmp...
            publish(tmp, target, run_dir)        # fsync, COMPLETE, swap in
    check_export("saved_models/demo")             # what a reader calls first

`claim` refuses, before any work, a target that is not tfmp's to replace (a symbolic
link, a file, the run being exported, a directory tfmp did not write; see
`tfmp.rundir.check_target`), holds `<target>.lock` for the whole export so a second
export of the same target is refused naming the first, and sweeps what an export
killed on this host left beside the target. A finished export holds a `COMPLETE`
marker of kind "export", written last (`tfmp.files.publish`).
"""

import contextlib
import json
import os
import shutil
import warnings

from tfmp import files, rundir
from tfmp.errors import InputError, UserError

KIND = "export"
REPORT = "export_report.json"
FLAG = "--out-root/--name"
PARTIAL = ".partial-"  # staging: .<name>.partial-<host>-<pid>-<random>
ASIDE = ".old-"  # an old export being replaced (tfmp.files.publish): <name>.old-<...>


def looks_like_export(path):
    """A finished tfmp export, or one written before exports had a completion marker.

    A run also has a COMPLETE marker, so the marker must say "export"; an export from
    before markers is recognised by its report, and never when it looks like a run.
    """
    if files.read_marker(path).get("kind") == KIND:
        return True
    if rundir.looks_like_run(path):
        return False
    try:
        with open(os.path.join(path, REPORT), encoding="utf-8") as f:
            return isinstance(json.load(f).get("variants"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def check_export(path):
    """Raises `InputError` unless `path` is a finished export; what readers call first."""
    files.check_complete(os.fspath(path), KIND)
    if files.read_marker(path).get("kind") != KIND:
        raise InputError(f"'{os.fspath(path)}' is not a tfmp export (its {files.MARKER} "
                         "marker is not an export's: a run directory?). Pass a directory "
                         "written by `tfmp export`.")


def check_target(target, overwrite=False, protected=()):
    """The absolute export directory `target`, or a `UserError` if tfmp may not write it."""
    parent = os.path.dirname(os.path.abspath(os.fspath(target)))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out-root '{parent}' is a file, not a directory; choose another "
                        "--out-root.")
    return rundir.check_target(target, "an export directory", FLAG, protected,
                               looks_like_export, overwrite)


def sweep(target):
    """Clears what exports killed on this host left beside `target`; True if one was recovered.

    A killed export leaves its staging directory; one killed between the two renames
    of `files.publish` leaves a complete staging directory, no target and the old
    export renamed aside: the complete one is put in place, as the dead export was
    about to. Only leftovers of dead processes of this host are touched.
    """
    parent, name = os.path.split(target)
    if not os.path.isdir(parent):
        return False
    recovered = False
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}{PARTIAL}"):
            if not files.left_by_dead_process(entry[len(f".{name}{PARTIAL}"):]):
                continue
            if files.read_marker(path).get("kind") == KIND and files.recover(path, target):
                recovered = True
                warnings.warn(f"'{target}': a finished export was left unrenamed by a "
                              f"process that died ({path}); it is now put in place.",
                              stacklevel=2)
            else:
                shutil.rmtree(path, ignore_errors=True)
    for entry in sorted(os.listdir(parent)):
        # An old export renamed aside goes once the new one is in place.
        if (entry.startswith(f"{name}{ASIDE}") and os.path.isdir(target)
                and files.left_by_dead_process(entry[len(name) + len(ASIDE):])):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    return recovered


@contextlib.contextmanager
def claim(target, overwrite=False, protected=()):
    """Holds export directory `target` for one export; yields its absolute path.

    Checked before the lock (refusing an unsafe target without creating anything
    beside it) and again under it: another export may have finished in between.
    """
    target = check_target(target, overwrite, protected)
    with files.DirLock(target, rundir.command_line() or f"export to {target}"):
        if sweep(target) and not overwrite:
            raise UserError(
                f"'{target}' had finished, but its final rename was cut short (a crash or "
                "a kill); it is now put in place, complete. Use it, or pass --overwrite "
                "to export again.")
        yield check_target(target, overwrite, protected)


@contextlib.contextmanager
def staging(target):
    """A new hidden directory beside `target`, removed on the way out unless published.

    Its name holds this host and pid (`files.unique_suffix`), so a later export can
    tell the leftovers of a dead process from those of a live one.
    """
    parent, name = os.path.split(target)
    path = os.path.join(parent, f".{name}{PARTIAL}{files.unique_suffix()}")
    os.makedirs(path)
    try:
        yield path
    finally:
        # A complete one is kept: `publish` failed after marking it, and once this
        # process is gone the next export's `sweep` puts it in place if no export is.
        if not files.is_complete(path):
            shutil.rmtree(path, ignore_errors=True)


def publish(path, target, run_dir=None):
    """Puts the complete export `path` in place at `target`, durably (`files.publish`)."""
    return files.publish(path, target, {"kind": KIND, "run_dir": run_dir})
