"""What this machine has, as `--policy auto` sees it: accelerators, CPU flags, a bf16 probe.

    hardware = detect_hardware()      # Hardware(gpus=(), cpu_flags={...}, cpu_bf16_speedup=2.1)
    list_gpus()                       # [(name, (major, minor))]
    prefer_onednn()                   # before TensorFlow's import: oneDNN on x86 with AVX2
    onednn_enabled()                  # TensorFlow's oneDNN CPU kernels on or off

Facts only: which policy they lead to is `tfmp.precision.choose`'s decision.
"""

import dataclasses
import os
import sys
import time


@dataclasses.dataclass(frozen=True)
class Hardware:
    """What `auto` looks at. Built by `detect_hardware()`; tests build their own."""

    gpus: tuple = ()  # ((name, (major, minor)), ...)
    tpu: bool = False
    cpu_model: str = ""
    cpu_flags: frozenset = frozenset()
    # bfloat16 / float32 matmul throughput ratio measured on this CPU, or None if
    # it was not measured (no bf16 instructions, or the probe was turned off).
    cpu_bf16_speedup: float | None = None


def detect_hardware(probe=None):
    """Looks at the accelerators and CPU this process sees.

    Args:
        probe: bool or None. Measure the CPU's bfloat16/float32 matmul ratio when the
            CPU has AVX512-BF16 (about half a second). None reads `TFMP_AUTO_PROBE`
            (default on).
    """
    import tensorflow as tf

    gpus = list_gpus()
    tpu = bool(tf.config.list_physical_devices("TPU"))
    cpu_model, flags = _read_cpuinfo()
    speedup = None
    if probe is None:
        probe = os.environ.get("TFMP_AUTO_PROBE", "1") != "0"
    if not gpus and not tpu and probe and "avx512_bf16" in flags:
        speedup = _bf16_matmul_speedup()
    return Hardware(
        gpus=tuple(gpus),
        tpu=tpu,
        cpu_model=cpu_model,
        cpu_flags=frozenset(flags),
        cpu_bf16_speedup=speedup,
    )


def list_gpus():
    """[(name, (major, minor) compute capability)] of the GPUs this process sees."""
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append((details.get("device_name", device.name),
                     tuple(details.get("compute_capability", (0, 0)))))
    return gpus


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    return _read_cpuinfo()[0]


def _read_cpuinfo():
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass  # not Linux: no flags, so `auto` stays with float32 on CPU
    return model, flags


def _bf16_matmul_speedup(n=1024, repeats=8):
    import tensorflow as tf

    rates = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
        matmul = tf.function(lambda x: tf.matmul(x, x))
        matmul(a).numpy()  # trace and warm up
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                out = matmul(a)
            out.numpy()
            best = min(best, time.perf_counter() - start)
        rates[dtype.name] = repeats / best
    return rates["bfloat16"] / rates["float32"]


def bfloat16_supported(hardware):
    """Whether `hardware` computes bfloat16 natively (GPU >= 8.0, TPU, AMX, AVX512-BF16)."""
    return bool(hardware.tpu or any(major >= 8 for _, (major, _) in hardware.gpus)
                or {"amx_bf16", "avx512_bf16"} & set(hardware.cpu_flags))


def prefer_onednn(environ=None, modules=None):
    """Turns TensorFlow's oneDNN CPU kernels on for this process on x86 CPUs with AVX2.
    TensorFlow turns them on by itself only with AVX512-VNNI/BF16, AVX-VNNI or AMX (there
    setting the variable changes nothing). On an AVX2-only CPU (AMD EPYC, Zen 3) MiniLM
    trained 1.39x faster under float32 with oneDNN and 1.14x under mixed_float16, 0.75x
    under mixed_bfloat16, which runs 6-11x slower than float32 there either way and
    which `auto` does not pick (README, "This machine changed"). TensorFlow reads
    `TF_ENABLE_ONEDNN_OPTS` once, at import, so this sets it only before `tensorflow` is
    imported and only where the user has not set it: `=0` keeps TensorFlow's default.
    Returns True where it set the variable."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if "TF_ENABLE_ONEDNN_OPTS" in environ or "tensorflow" in modules:
        return False
    if "avx2" not in _read_cpuinfo()[1]:
        return False  # not x86 with AVX2: TensorFlow's own choice stands
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return True


def onednn_enabled():
    """Whether this TensorFlow runs oneDNN's CPU kernels and graph fusions (MatMul with
    its bias and GELU) and its counting CPU allocator. TensorFlow turns oneDNN on by
    default only on CPUs with AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX;
    `TF_ENABLE_ONEDNN_OPTS=1` (read at import) turns it on elsewhere. None where this
    TensorFlow does not say (the answer comes from a private module of TensorFlow 2.x)."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def yield_to_training(niceness=19):
    """Lowers the calling thread's CPU priority (Linux sets it per thread), so a helper
    thread (a checkpoint write, an XLA warm-up) takes the cycles training leaves idle
    instead of slowing its steps. Elsewhere a thread's priority is the process's: no-op."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass
