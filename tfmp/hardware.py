"""What this machine has, as `--policy auto` sees it: accelerators, CPU flags, a bf16 probe.

    hardware = detect_hardware()      # Hardware(gpus=(), cpu_flags={...}, cpu_bf16_speedup=2.1)
    list_gpus()                       # [(name, (major, minor))]

Facts only: which policy they lead to is `tfmp.precision.choose`'s decision.
"""

import dataclasses
import os
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


def accelerator_visible():
    """True if a GPU or TPU device file (or a TPU name) is visible: checked without TensorFlow."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/accel[0-9]*")
                or os.environ.get("TPU_NAME"))


def use_one_inter_op_thread():
    """On a CPU-only host, run TensorFlow's independent ops one at a time (call before
    TensorFlow starts; a user's own TF_NUM_INTEROP_THREADS wins). Returns whether it did.

    The default pool runs as many ops at once as there are cores, and those ops'
    own threads share the same cores. On this 2-core EPYC, 32-step mixed_bfloat16 runs
    of `tfmp train` (1,000 airline tweets, alternating) took 30.8 / 31.4 s with the
    default and 26.5 / 24.8 s with one inter-op thread: the steps are as fast (7.5 vs
    7.9 s) and the time between them (callbacks, input pipeline, epoch end) fell from
    8.0-8.3 s to 1.5-3.4 s. A GPU or TPU host keeps TensorFlow's default, which overlaps
    its host-side work with the device's.
    """
    if "TF_NUM_INTEROP_THREADS" in os.environ or accelerator_visible():
        return False
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    return True


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
