"""A quiet start: TensorFlow's C++ start-up lines are hidden unless the user asks for them.

    quiet.start(verbose=False)     # before TensorFlow is first imported (tfmp.cli does it)

TensorFlow (and LiteRT) write log lines from C++ straight to file descriptor 2 when
they load, several before absl's logging is initialised, so `TF_CPP_MIN_LOG_LEVEL`
does not hide them all: on a machine without a GPU one reads
`E0000 ... failed call to cuInit: INTERNAL: CUDA error`, which looks like a failure
to a new user. `start` passes file descriptor 2 through a filter that drops those
lines (`NATIVE_LINE`) and lets every other byte through in order; Python's own
`sys.stderr` (tfmp's messages, warnings, tracebacks) writes to the real stderr,
untouched. Nothing is filtered with `--verbose`, when the user set
`TF_CPP_MIN_LOG_LEVEL` themselves (they chose what to see), or when TensorFlow is
already imported (its start-up lines are already out, and a host such as pytest
owns the descriptors).
"""

import atexit
import io
import os
import re
import sys
import threading

ENV = "TF_CPP_MIN_LOG_LEVEL"
# absl/glog lines (`E0000 00:00:1795990549.837609   29751 cuda_platform.cc:52] ...`,
# severity I, W or E: F is a crash and stays), absl's notice before its
# initialisation, the continuation of the CPU-feature notice, and LiteRT's banner.
NATIVE_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-]+:\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .* rebuild TensorFlow with"
    rb"|INFO: Created TensorFlow Lite .*delegate for CPU)")
_PIPE_BYTES = 1 << 20  # room for start-up bursts written while the GIL is held


def wanted(verbose=False, environ=None):
    """Whether to filter: not when asked to be verbose or when the user set `ENV`."""
    environ = os.environ if environ is None else environ
    return not verbose and ENV not in environ and "tensorflow" not in sys.modules


def start(verbose=False):
    """Hides native start-up lines for the rest of the process (see the module doc)."""
    if not wanted(verbose):
        return False
    os.environ[ENV] = "2"  # what absl honours once initialised: no INFO or WARNING
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
    except (OSError, ValueError, AttributeError):
        return False  # no usable descriptor 2: nothing to filter
    try:
        import fcntl

        fcntl.fcntl(write_end, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BYTES)
    except (ImportError, OSError):
        pass
    # Python writes to the real stderr directly; only native writes meet the filter.
    sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(real), "wb", buffering=0),
                                  encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                  errors="backslashreplace", line_buffering=True)
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_forward, args=(read_end, real), daemon=True,
                              name="tfmp-quiet-stderr")
    thread.start()
    atexit.register(_stop, real, thread)
    return True


def keep(line):
    """Whether a line written to descriptor 2 reaches the terminal."""
    return NATIVE_LINE.match(line) is None


def _forward(read_end, real):
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if keep(line))
            if out:
                os.write(real, out)
        if pending and keep(pending):
            os.write(real, pending)


def _stop(real, thread):
    """Puts the real stderr back and lets the filter write what is left."""
    try:
        os.dup2(real, 2)  # closes the pipe's last write end: the reader sees EOF
    except OSError:
        return
    thread.join(timeout=2)
