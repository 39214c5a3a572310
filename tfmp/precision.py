"""Precision policies: which one, why, and whether it needs loss scaling.

Every decision about numeric precision in tfmp is made here; the optimizer, model and
export modules ask a `Policy` instead of looking at policy names themselves. Two fixed
float32 islands hold under every policy and are named here so this stays the one list:
the `logits` layer (`models.BertClassifier`: the loss and softmax need float32), and the
arithmetic inside the training step's fused GELU (`layers.fused_gelu_approximate`: it
reads and writes the compute dtype, and float32 inside is free once XLA fuses the loop).

    policy = resolve("auto")          # Policy(name="mixed_bfloat16", reason="...")
    with policy_scope(policy):        # sets keras' global policy, restores it on exit
        model = ...                   # layers built here compute in policy.compute_dtype
"""

import contextlib
import dataclasses
import os
import time

import keras

from tfmp.errors import PolicyError

# Policies tfmp trains with. Each keeps float32 variables ("master weights"); only the
# compute dtype changes.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CHOICES = ("auto",) + POLICIES

# Names Keras accepts but tfmp refuses, and why.
_PURE_LOW_PRECISION = {
    "float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
}

# A CPU with AVX512-BF16 but no AMX gets mixed_bfloat16 from `auto` only when a
# bfloat16 matmul measured here beats float32 by this factor: the dot-product
# instruction alone does not guarantee TensorFlow's kernels use it, and casts cost.
_CPU_BF16_MIN_SPEEDUP = 1.2


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


@dataclasses.dataclass(frozen=True)
class Policy:
    """A resolved precision policy.

    Args:
        name: str. One of `POLICIES`.
        reason: str. Why this policy was chosen, in words (printed and saved).
        float32_layers: tuple of str. Layer names (or path patterns) pinned to
            float32 whatever the policy, e.g. from `tfmp diagnose`.
    """

    name: str
    reason: str = ""
    float32_layers: tuple = ()

    @property
    def loss_scaling(self):
        # float16 has 5 exponent bits: small gradients underflow to zero unless the
        # loss is scaled up first. bfloat16 has float32's 8 exponent bits, so no.
        return self.name == "mixed_float16"

    @property
    def compute_dtype(self):
        return keras.DTypePolicy(self.name).compute_dtype

    @property
    def variable_dtype(self):
        return keras.DTypePolicy(self.name).variable_dtype

    def to_json(self):
        return {
            "name": self.name,
            "reason": self.reason,
            "loss_scaling": self.loss_scaling,
            "compute_dtype": self.compute_dtype,
            "variable_dtype": self.variable_dtype,
            "float32_layers": list(self.float32_layers),
        }


def resolve(name="auto", hardware=None, float32_layers=()):
    """Turns a policy name into a `Policy`, choosing from the hardware for `"auto"`.

    Args:
        name: str. `"auto"` or one of `POLICIES`.
        hardware: `Hardware` or None. What `auto` decides from; detected if None.
        float32_layers: layer names to keep in float32 under any policy.

    Raises:
        PolicyError: for pure `float16`/`bfloat16` or an unknown name.
    """
    if isinstance(name, Policy):
        return name
    name = str(name).strip()
    if name in _PURE_LOW_PRECISION:
        raise PolicyError(
            f"Policy '{name}' keeps the weights themselves in {name}: AdamW updates "
            f"smaller than the weight's rounding step (about 1/256 of it in bfloat16, "
            f"1/2048 in float16) are lost, and fine-tuning stalls. Use "
            f"'{_PURE_LOW_PRECISION[name]}' ({name} compute, float32 weights) instead."
        )
    if name not in CHOICES:
        raise PolicyError(
            f"Unknown policy '{name}'. Choose one of: {', '.join(CHOICES)}."
        )
    if name == "auto":
        hardware = hardware or detect_hardware()
        name, reason = choose(hardware)
    else:
        reason = "chosen by the user"
    return Policy(name=name, reason=reason, float32_layers=tuple(float32_layers))


def choose(hardware):
    """The `auto` rule: returns (policy name, reason) for the given `Hardware`."""
    if hardware.tpu:
        return "mixed_bfloat16", "TPU found: its matrix units compute in bfloat16."
    if hardware.gpus:
        name, (major, minor) = hardware.gpus[0]
        cc = f"{major}.{minor}"
        if major >= 8:
            return "mixed_bfloat16", (
                f"GPU {name} (compute capability {cc} >= 8.0) has bfloat16 tensor "
                "cores; bfloat16 needs no loss scaling."
            )
        if major == 7:
            return "mixed_float16", (
                f"GPU {name} (compute capability {cc}) has float16 tensor cores but "
                "no bfloat16; float16 is used with dynamic loss scaling."
            )
        return "float32", (
            f"GPU {name} (compute capability {cc} < 7.0) has no tensor cores: "
            "mixed precision would only add casts."
        )
    cpu = hardware.cpu_model or "this CPU"
    if "amx_bf16" in hardware.cpu_flags:
        return "mixed_bfloat16", f"CPU {cpu} has AMX bfloat16 matrix units."
    if "avx512_bf16" in hardware.cpu_flags:
        speedup = hardware.cpu_bf16_speedup
        if speedup is None:
            return "float32", (
                f"CPU {cpu} has AVX512-BF16, but the bfloat16 speed probe was not run "
                "(TFMP_AUTO_PROBE=0), so float32 is kept: it is never slower."
            )
        if speedup >= _CPU_BF16_MIN_SPEEDUP:
            return "mixed_bfloat16", (
                f"CPU {cpu} has AVX512-BF16 and a bfloat16 matmul ran {speedup:.2f}x "
                "the float32 rate here; bfloat16 needs no loss scaling."
            )
        return "float32", (
            f"CPU {cpu} has AVX512-BF16, but a bfloat16 matmul ran only "
            f"{speedup:.2f}x the float32 rate here (needs {_CPU_BF16_MIN_SPEEDUP}x), "
            "so mixed precision would not pay."
        )
    return "float32", (
        f"No GPU or TPU, and CPU {cpu} has no bfloat16 or float16 arithmetic "
        "(no AVX512-BF16 or AMX): mixed policies would train no faster and only add "
        "casts. They pay on GPUs (compute capability >= 7) and TPUs."
    )


def detect_hardware(probe=None):
    """Looks at the accelerators and CPU this process sees.

    Args:
        probe: bool or None. Measure the CPU's bfloat16/float32 matmul ratio when the
            CPU has AVX512-BF16 (about half a second). None reads `TFMP_AUTO_PROBE`
            (default on).
    """
    import tensorflow as tf

    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append(
            (
                details.get("device_name", device.name),
                tuple(details.get("compute_capability", (0, 0))),
            )
        )
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


def _read_cpuinfo():
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
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


@contextlib.contextmanager
def policy_scope(policy):
    """Sets Keras' global policy for the block and restores the previous one after."""
    policy = resolve(policy)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy.name)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def set_global_policy(policy="auto"):
    """Resolves `policy`, sets it as Keras' global policy and returns the `Policy`."""
    policy = resolve(policy)
    keras.mixed_precision.set_global_policy(policy.name)
    return policy
