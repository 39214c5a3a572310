"""Pre-emption as Ctrl-C, raised where it is safe: between training steps.

    with signals.interruptible():
        model.fit(..., callbacks=[signals.StopAtBatchEnd(), ...])

Every scheduler (Kubernetes, Slurm, Vertex AI, a closing terminal) stops a job with
SIGTERM or SIGHUP, whose default action kills the process at once. Inside
`interruptible()` they, and Ctrl-C (SIGINT), raise `tfmp.errors.Interrupted` (a
`KeyboardInterrupt`), which `tfmp.train` answers by saving a checkpoint.

While `fit` runs, the exception is not raised from the signal handler: a Python
exception injected while TensorFlow executes a step can surface as `SystemError`
("bad argument to internal function") instead, skipping the checkpoint. The signal
is recorded, and `StopAtBatchEnd` raises it when the step in flight has finished. A
second signal before then raises at once (a user who presses Ctrl-C twice means it).
"""

import contextlib
import signal
import threading

import keras

from tfmp.errors import Interrupted

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                if hasattr(signal, name))

_state = {"pending": None, "defer": False}


def _handle(signum, frame):
    if _state["defer"] and _state["pending"] is None:
        _state["pending"] = signum  # StopAtBatchEnd raises it after this step
        return
    _state["pending"] = None
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible():
    """Within the block, SIGINT/SIGTERM/SIGHUP raise `Interrupted`; handlers restored after.

    Only the main thread may set handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _state.update(pending=None, defer=False)
    try:
        yield
    finally:
        _state.update(pending=None, defer=False)
        for s, handler in previous.items():
            signal.signal(s, handler)


class StopAtBatchEnd(keras.callbacks.Callback):
    """Raises a signal recorded during a training or validation step once it is done."""

    def on_train_begin(self, logs=None):
        _state["defer"] = True

    def _raise_pending(self):
        signum = _state["pending"]
        if signum is not None:
            _state.update(pending=None, defer=False)
            raise Interrupted(signum)

    def on_train_batch_end(self, batch, logs=None):
        self._raise_pending()

    def on_test_batch_end(self, batch, logs=None):
        self._raise_pending()

    def on_epoch_end(self, epoch, logs=None):
        self._raise_pending()

    def on_train_end(self, logs=None):
        _state["defer"] = False
        self._raise_pending()
