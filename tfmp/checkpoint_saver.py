"""`CheckpointSaver`: the callback that checkpoints a `fit`, writing in the background.

    saver = CheckpointSaver(root, every=0, state_fn=lambda epoch_logs: {...})
    model.fit(..., callbacks=[saver])   # a checkpoint at each epoch end (and every N steps)
    saver.wait()                        # the last write is on disk (raises its error)
    saver.save()                        # one now, written before it returns

At a checkpoint the training thread only reads the model (`tfmp.checkpoint.snapshot`:
views of the variables' values, which TensorFlow never changes in place while they are
alive); a thread writes, fsyncs and checksums the files while the next steps train. A
MiniLM checkpoint (273 MB) took 0.9 s a save on the training thread before; the
snapshot takes about 0.1 s. The commit is unchanged (`tfmp.checkpoint.write`: temp
directory, fsync, rename, then the `latest` pointer), so a crash during a background
write leaves the previous checkpoint whole, as a crash during a save always did; a
checkpoint counts from the moment its write ends. One write is in flight at a time: the
next checkpoint, `save`, and `wait` wait for it first and raise its error, if any. The
cost is memory: while a write is in flight, each variable training updates keeps its
old buffer for the write, up to one more checkpoint's size (273 MB for MiniLM).
"""

import threading
import time

import keras

from tfmp import checkpoint, hardware
from tfmp.optimizer import global_step


class _Write(threading.Thread):
    """`checkpoint.write(root, snap)` on a thread; `path`, `error` and `seconds` after."""

    def __init__(self, root, snap):
        # Not a daemon: an interpreter that exits mid-write finishes the write first.
        super().__init__(name=f"checkpoint-{snap.step}")
        self.root, self.snap, self.step = root, snap, snap.step
        self.path = self.error = None
        self.seconds = 0.0

    def run(self):
        start = time.perf_counter()
        hardware.yield_to_training()
        try:
            self.path = checkpoint.write(self.root, self.snap)
        except BaseException as e:  # raised on the training thread by `wait`
            self.error = e
        finally:
            self.snap = None  # the arrays hold the variables' old buffers
            self.seconds = time.perf_counter() - start


class CheckpointSaver(keras.callbacks.Callback):
    """Saves a checkpoint every `every` global steps and at each epoch end.

    Args:
        root: str. The checkpoints directory.
        every: int. Global steps (skipped ones included) between checkpoints; 0: only
            at epoch ends.
        state_fn: callable(epoch_logs) returning the dict stored in `state.json`
            (config, seeds, history ...); `epoch_logs` is the finished epoch's logs at
            an epoch end, else None. The batch position is derived from the optimizer.
        background: bool. Write the callback's checkpoints on a thread (module
            docstring); False writes them before training goes on.

    Attributes:
        seconds: float. Time the training thread spent on checkpoints (reading the
            model, waiting for a write).
        write_seconds: float. Time spent writing in the background, overlapped with
            training.
    """

    def __init__(self, root, every, state_fn, background=True):
        super().__init__()
        self.root = root
        self.every = max(int(every), 0)
        self.state_fn = state_fn
        self.background = background
        self.last_saved_step = None
        self.seconds = 0.0
        self.write_seconds = 0.0
        self._pending = None

    def wait(self):
        """Waits for the write in flight; returns its path (None if none was)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        start = time.perf_counter()
        pending.join()
        self.seconds += time.perf_counter() - start
        self.write_seconds += pending.seconds
        if pending.error is not None:
            # Raised here, maybe an epoch after the write began: say which one failed.
            if isinstance(pending.error, Exception):
                pending.error.add_note(
                    f"Writing the checkpoint of step {pending.step} under {self.root} failed in "
                    "the background; nothing of it was committed and the checkpoints before it "
                    "are whole. Fix the cause (disk space, permissions) and resume with "
                    "`tfmp train --resume`.")
            raise pending.error
        return pending.path

    def save(self, epoch_logs=None, background=False):
        """Saves a checkpoint; returns its path (None while it is written in the background)."""
        self.wait()
        start = time.perf_counter()
        step = global_step(self.model.optimizer)
        snap = checkpoint.snapshot(self.model, self.state_fn(epoch_logs))
        if background:
            self._pending = _Write(self.root, snap)
            self._pending.start()
            path = None
        else:
            path = checkpoint.write(self.root, snap)
        self.last_saved_step = step
        self.seconds += time.perf_counter() - start  # what checkpoints cost the run
        return path

    def on_train_batch_end(self, batch, logs=None):
        if self.every and global_step(self.model.optimizer) % self.every == 0:
            self.save(background=self.background)

    def on_epoch_end(self, epoch, logs=None):
        # After validation: the state then holds this epoch's history too.
        self.save(epoch_logs=dict(logs or {}), background=self.background)
