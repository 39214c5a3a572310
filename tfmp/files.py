"""Durable file writes: a file is either its old content or its whole new content.

    write_atomic(path, text)         # temp file, fsync, rename, fsync the directory
    write_json(path, obj)            # the same, as indented JSON
    sha256(path)                     # hex digest, read in 1 MiB blocks

Checkpoints, run files and exports all write through here, so a crash at any moment
leaves no half-written file under its final name.
"""

import hashlib
import json
import os
import tempfile


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


def write_json(path, obj):
    """`obj` as indented JSON (anything else as its `str`), written atomically."""
    write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def size(path):
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _, names in os.walk(path) for f in names)
