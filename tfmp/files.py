"""Durable, exclusive file-system work: a file is its old content or its whole new one.

    write_atomic(path, text)         # temp file, fsync, rename, fsync the directory
    write_json(path, obj)            # the same, as strict indented JSON
    read_json(path, "Export again.") # parsed JSON, or InputError saying what to do
    sha256(path)                     # hex digest, read in 1 MiB blocks
    with DirLock(out): ...           # one writer per directory, across processes
    publish(staging, target)         # fsync the tree, mark it complete, swap it in
    check_complete(target, "run")    # refuses a directory without its marker

Checkpoints, run files and exports all write through here, so a crash at any moment
leaves no half-written file under its final name, and a directory that looks
finished (it has `COMPLETE`) is finished.
"""

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
import uuid

from tfmp.errors import InputError, UserError

# Written last into a finished run or export, after every other file is durable;
# load_model, export and predict refuse a directory without it.
MARKER = "COMPLETE"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file renamed into place.

    The temporary name is unique (`mkstemp`) and removed if anything fails, so two
    writers never share one and a failed write leaves nothing behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(directory)


def strict_json(obj):
    """`obj` with NaN and infinities as None and numpy scalars as Python numbers.

    Python's json writes bare `NaN`/`Infinity`, which strict readers (browsers, jq,
    Go, Java) reject; a diverged run's history holds them.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "shape", None) == ():
        return strict_json(obj.item())  # a numpy scalar
    return obj


def dumps(obj):
    """Indented strict JSON text (anything not JSON as its `str`), newline-terminated."""
    return json.dumps(strict_json(obj), indent=2, default=str, allow_nan=False) + "\n"


def write_json(path, obj):
    """`obj` as indented strict JSON (see `strict_json`), written atomically."""
    write_atomic(path, dumps(obj))


def read_json(path, remedy):
    """The JSON in `path`; `InputError` naming the file and `remedy` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not readable as JSON ({e}). {remedy}") from None


def _host_tag():
    """This host's name as it may stand in a file name."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    return host or "host"


def unique_suffix():
    """host-pid-random: a temporary name no other process, here or on another host, uses."""
    return f"{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def left_by_dead_process(suffix):
    """Whether a `unique_suffix()` text names a process of this host that is gone.

    A name from another host is never judged dead (its processes cannot be checked
    from here), nor one whose pid is alive, nor text `unique_suffix` did not write.
    `DirLock` judges a stale lock by the same test.
    """
    parts = suffix.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != _host_tag():
        return False
    return not _pid_alive(int(parts[1]))


def size(path):
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, names in os.walk(path) for f in names)


def fsync_tree(path):
    """fsyncs every file and directory under `path` (deepest first), then `path`."""
    for directory, _, names in os.walk(path, topdown=False):
        for name in names:
            full = os.path.join(directory, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(directory)


def _this_host():
    return socket.gethostname()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we can judge: assume alive
    return True


class DirLock:
    """An exclusive lock on writing `path` (a run or export directory): `<path>.lock`.

    Created with O_EXCL, so exactly one process holds it; it names its holder (host,
    pid, start time, command). A lock left by a process that died on this host is
    taken over; one held by a live process, or by any process on another host
    (whose liveness cannot be checked from here), is refused with a `UserError`
    naming the holder and what to do.
    """

    def __init__(self, path, command=""):
        self.path = os.path.abspath(os.fspath(path)).rstrip(os.sep) + ".lock"
        self.command = command
        self._held = False

    def holder(self):
        """The holder's record, or None if there is no readable lock."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as e:  # a file where a directory should be, a read-only place
            raise UserError(f"Cannot create {os.path.dirname(self.path)} for the lock file "
                            f"({e.strerror}). Choose an output directory this user can "
                            "write.") from None
        record = {"host": _this_host(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale():
                    self._refuse()
                continue
            except OSError as e:  # a read-only or missing place: say where, not a traceback
                raise UserError(f"Cannot create the lock file {self.path} ({e.strerror}). "
                                "Choose an output directory this user can write.") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(record))
                f.flush()
                os.fsync(f.fileno())
            self._held = True
            return self
        self._refuse()

    def _take_over_stale(self):
        holder = self.holder()
        if holder is None:  # being written this instant, or damaged: look again
            time.sleep(0.2)
            holder = self.holder()
            if holder is None:
                return self._remove_aside()
        if holder.get("host") == _this_host() and not _pid_alive(int(holder.get("pid", -1))):
            return self._remove_aside()
        return False

    def _remove_aside(self):
        # Renamed before removal: of two processes taking over at once, one rename wins.
        aside = f"{self.path}.stale-{unique_suffix()}"
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return True
        os.remove(aside)
        return True

    def _refuse(self):
        h = self.holder() or {}
        raise UserError(
            f"'{self.path[:-len('.lock')]}' is being written by another tfmp process "
            f"(pid {h.get('pid', '?')} on host {h.get('host', '?')}, since "
            f"{h.get('started', '?')}: {h.get('command') or 'unknown command'}). Wait "
            f"for it to finish, or if that process is gone, delete {self.path}.")

    def release(self):
        if self._held:
            self._held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_marker(path):
    """The record in `path`'s `COMPLETE` marker; {} when it has none or an unreadable one."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_complete(path):
    return os.path.isfile(os.path.join(path, MARKER))


def check_complete(path, kind):
    """Raises `InputError` unless `path` is a finished `kind` ("run", "export")."""
    if not is_complete(path):
        raise InputError(
            f"'{path}' is not a finished tfmp {kind}: it has no {MARKER} marker, which is "
            f"written last, once every file of the {kind} is on disk. It was interrupted "
            f"while being written, or written by tfmp before 0.2. Write it again"
            + (" (`tfmp train`; `--resume` continues an interrupted run)." if kind == "run"
               else " (`tfmp export`)."))


def publish(staging, target, info=None):
    """Makes the complete directory `staging` the directory `target`, durably.

    Every file is fsynced, then the `COMPLETE` marker is written; an existing
    `target` is renamed aside first and removed only after the new one is in place.
    A crash at any moment leaves a complete `target`, or the old one, or (between
    the two renames) the complete staging directory beside the old one renamed
    aside, from which `recover` finishes the job.
    """
    fsync_tree(staging)
    write_json(os.path.join(staging, MARKER), dict(info or {}, finished=time.time()))
    parent = os.path.dirname(os.path.abspath(target))
    aside = None
    if os.path.lexists(target):
        aside = f"{target}.old-{unique_suffix()}"
        os.replace(target, aside)
    os.replace(staging, target)
    fsync_dir(parent)
    if aside:
        shutil.rmtree(aside, ignore_errors=True)
    return target


def recover(staging, target):
    """Finishes a `publish` cut short: a complete `staging` and no `target`. True if it did."""
    if is_complete(staging) and not os.path.lexists(target):
        os.replace(staging, target)
        fsync_dir(os.path.dirname(os.path.abspath(target)))
        return True
    return False
