"""Pre-emption as Ctrl-C: SIGTERM and SIGHUP raise `Interrupted` while a run trains.

    with signals.interruptible():
        ...   # a SIGTERM here raises tfmp.errors.Interrupted (a KeyboardInterrupt)

Every scheduler (Kubernetes, Slurm, Vertex AI, a closing terminal) stops a job with
SIGTERM or SIGHUP, whose default action kills the process at once. Raised as a
`KeyboardInterrupt` instead, they take the path Ctrl-C takes in `tfmp.train`: a
checkpoint is saved, TensorBoard's files are flushed, and the run can be resumed.
"""

import contextlib
import signal
import threading

from tfmp.errors import Interrupted

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible():
    """Within the block, SIGTERM/SIGHUP raise `Interrupted`; handlers are restored after.

    Only the main thread may set handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
