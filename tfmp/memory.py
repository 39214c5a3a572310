"""A run's training memory: the settings that cut it, and its measured peak.

    memory.configure(model, config, log)   # --remat and --grad-accum on a compiled model
    peak = memory.PeakMemory()             # a fit callback; peak.summary() -> report

Two settings trade compute for activation memory, and neither changes what is
computed: `--remat` (`tfmp.remat`: each transformer block keeps only its input and
recomputes the rest in the backward pass; bitwise the same gradients) and
`--grad-accum N` (`tfmp.accumulate`: each batch runs as N micro-batches; the same
gradients to float32 rounding).

`PeakMemory` measures what the fit needed, two ways: the process's resident
high-water mark (VmHWM; reset when the fit starts where Linux allows, so it is the
fit's own peak rather than the whole process's), which is what a machine must have,
and TensorFlow's allocator peak on the device it trains on, which counts tensors only
(weights, AdamW slots, gradients, activations) and leaves out the runtime, Python and
the allocator's slack. The run report shows both (`report.json: memory`).
"""

import keras

from tfmp import accumulate, remat

# What --remat recomputes: whole transformer blocks, the only mode that met the issue's
# <= 0.7x peak under mixed_bfloat16 (README, "Memory"; benchmarks/memory.py).
REMAT_MODE = "blocks"


def configure(model, config, log=print):
    """Applies `config.remat` and `config.grad_accum` to a compiled `model`."""
    if config.remat:
        count = remat.apply(model, REMAT_MODE)
        log(f"Rematerialization: {count} transformer blocks keep only their input and "
            "recompute the rest in the backward pass" if count else
            "Rematerialization: no transformer block found; --remat changes nothing here")
    if config.grad_accum > 1:
        accumulate.install(model, config.grad_accum)
        log(f"Gradient accumulation: each batch of {config.batch_size} runs as "
            f"{config.grad_accum} micro-batches of about "
            f"{config.batch_size / config.grad_accum:g}, one optimizer step per batch")


def peak_memory_mb():
    """This process's VmHWM in MB, read by tfmp's one reader of it (tradeoffs.measure)."""
    from tfmp.tradeoffs.measure import peak_memory_mb as read

    return read()


def reset_peak_rss():
    """Resets this process's VmHWM to its current resident size (Linux >= 4.0).
    Returns False where that is not possible (the peak then counts from the start)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def training_device():
    """The TensorFlow device whose allocator holds the training tensors."""
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def allocator_mb(device, key):
    """TensorFlow's allocator statistic `key` ("current" or "peak") on `device`, in MB;
    None where this TensorFlow build does not keep it."""
    import tensorflow as tf

    try:
        return tf.config.experimental.get_memory_info(device)[key] / 2**20
    except (ValueError, RuntimeError, KeyError):
        return None


class PeakMemory(keras.callbacks.Callback):
    """Peak memory of the training `fit` calls (tfmp fits once per epoch): see module."""

    def __init__(self):
        super().__init__()
        self.started = False
        self.rss_reset = False
        self.rss_before = self.rss_peak = self.allocator_before = self.allocator_peak = None

    def on_train_begin(self, logs=None):
        if self.started:
            return
        import tensorflow as tf

        self.started = True
        self.device = training_device()
        self.rss_reset = reset_peak_rss()
        self.rss_before = peak_memory_mb()
        try:
            tf.config.experimental.reset_memory_stats(self.device)
        except (ValueError, RuntimeError):
            pass
        self.allocator_before = allocator_mb(self.device, "current")

    def on_train_end(self, logs=None):
        rss, allocated = peak_memory_mb(), allocator_mb(self.device, "peak")
        self.rss_peak = max(self.rss_peak or 0.0, rss)
        # 0: nothing went through the counted allocator (a small model's tensors on a
        # CPU often do not): no figure rather than a false 0 MB.
        if allocated:
            self.allocator_peak = max(self.allocator_peak or 0.0, allocated)

    def summary(self, config):
        """The report's `memory` entry (JSON-ready); None if no fit ran."""
        if not self.started:
            return None
        return {
            "peak_rss_mb": _round(self.rss_peak),
            "rss_at_start_mb": _round(self.rss_before),
            "peak_rss_is_the_fits_own": self.rss_reset,
            "allocator_device": self.device,
            "allocator_peak_mb": _round(self.allocator_peak),
            "allocator_at_start_mb": _round(self.allocator_before),
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "remat": REMAT_MODE if config.remat else None,
        }


def _round(value):
    return None if value is None else round(value, 1)


def report_lines(entry):
    """Markdown lines for `report.md`'s memory section (none without a measurement)."""
    if not entry:
        return []
    since = ("since the first fit started" if entry["peak_rss_is_the_fits_own"]
             else "of the whole process")
    lines = ["## Memory", "",
             f"- Peak resident memory while training: **{entry['peak_rss_mb']:,.0f} MB** "
             f"(high-water mark {since}; {entry['rss_at_start_mb']:,.0f} MB when it started)."]
    if entry["allocator_peak_mb"] is not None:
        lines.append(f"- TensorFlow's allocator peak on {entry['allocator_device']}: "
                     f"{entry['allocator_peak_mb']:,.0f} MB of tensors "
                     f"({entry['allocator_at_start_mb']:,.0f} MB held when training started).")
    micro = (f"{entry['grad_accum']} micro-batches per batch of {entry['batch_size']}"
             if entry["grad_accum"] > 1 else f"batch {entry['batch_size']}, no accumulation")
    lines += [f"- Settings: {micro}; rematerialization: {entry['remat'] or 'off'}.", ""]
    return lines
