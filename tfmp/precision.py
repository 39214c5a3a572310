"""Precision policies: which one, why, whether it needs loss scaling, which layers stay float32.

Every decision about numeric precision in tfmp is made here; the other modules ask this
module instead of looking at policy names themselves:

    policy = resolve("auto")          # Policy(name="mixed_bfloat16", reason="...")
    with policy_scope(policy):        # sets keras' global policy, restores it on exit
        model = ...                   # layers built here compute in policy.compute_dtype
    pin_float32(model, ["bert_backbone/transformer_layer_5"])   # per-layer pins
    needs_float32_pin(entry, margin)  # the rule behind `tfmp diagnose`'s suggestions
    serving_policy("fp16")            # the compute policy of an exported variant

`FLOAT32_ISLANDS` lists the computations that stay float32 under every policy. The
facts `auto` decides from (GPUs, CPU flags, a bfloat16 speed probe) are gathered by
`tfmp.hardware`; the rule that turns them into a policy is `choose`, here.
"""

import contextlib
import dataclasses

# Keras is imported where it is used: `tfmp predict` reads these decisions without it.
from tfmp.errors import PolicyError
from tfmp.hardware import bfloat16_supported, detect_hardware
from tfmp.layerpaths import (  # noqa: F401 (the pinning mechanics)
    computing_in_float32, layer_paths, pin_float32, quantized)

# Policies tfmp trains with. Each keeps float32 variables ("master weights"); only the
# compute dtype changes.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CHOICES = ("auto",) + POLICIES

# Names Keras accepts but tfmp refuses, and why.
_PURE_LOW_PRECISION = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}

# Computations that stay float32 under every policy, where they are built, and why.
# This is the one list: a new island is added here and at its site.
FLOAT32_ISLANDS = {
    "logits": "models.BertClassifier's `logits` Dense: the loss and softmax need "
              "float32 (float16 logits lose small probabilities and overflow past 65504)",
    "fused GELU arithmetic": "layers.fused_gelu_approximate: reads and writes the compute "
                             "dtype; float32 inside is free once XLA fuses the loop",
    "fused matmul epilogue": "fused_matmul: at inference oneDNN adds the bias and applies "
                             "the GELU to the float32 accumulator, then rounds once",
    "served softmax": "export.savedmodel and export.tflite: probabilities are a float32 "
                      "softmax of the logits whatever the compute dtype",
    "diagnosis loss": "diagnose: the probed loss is computed on float32 logits",
    "distillation loss": "compress.distil and compress.hidden: softmax, KL, cross-entropy and "
                         "the hidden-state MSE on float32 values (the teacher's are float32)",
    "LoRA adapters": "lora.enable: A and B are float32 variables under every policy (checked), "
                     "so small adapter updates survive; export merges W + A·B in float32",
    "accumulated gradients": "accumulate: micro-batch gradients summed in float32, then "
                             "unscaled and finite-checked once per optimizer step",
}

# Compression (tfmp.compress) runs the teacher once each for the importance scores and
# the logits the student is distilled from, both under float32 whatever the teacher was
# trained under: paid once, and soft targets and Taylor scores (products of small
# gradients) are where bfloat16's 8 bits would show. The student keeps the run's policy.
TEACHER_POLICY = "float32"

# What to do when float16 keeps overflowing (the guards, loss-scale floor and skip warning).
OVERFLOW_ADVICE = ("Try --policy mixed_bfloat16 (or float32), pin the overflowing layers to "
                   "float32 (--float32-layers, from `tfmp diagnose`), or a lower learning "
                   "rate (--lr).")

# float16's range, against which `diagnose` measures each layer's headroom.
FLOAT16_MAX = 65504.0
FLOAT16_TINY = 2.0**-24  # smallest float16 subnormal; anything smaller becomes 0
# A layer is suggested for float32 when its activations come within this factor of
# FLOAT16_MAX: one batch is a sample, and the next may be larger.
DEFAULT_MARGIN = 4.0

# Exported variants: the Keras policy each graph computes in (variables float32 in all).
# fp32 for CPUs without bfloat16 (and TFLite, whose converter fails on a mixed graph);
# fp16 for GPUs; bf16 for AVX512-BF16/AMX CPUs, TPUs, GPUs of compute capability >= 8.0.
_SERVING_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}

# An AVX512-BF16 CPU without AMX gets mixed_bfloat16 from `auto` only where a bfloat16
# matmul beats float32 by this factor here: TensorFlow may not use the instruction.
_CPU_BF16_MIN_SPEEDUP = 1.2


@dataclasses.dataclass(frozen=True)
class Policy:
    """A resolved precision policy.

    Args:
        name: str. One of `POLICIES`.
        reason: str. Why this policy was chosen, in words (printed and saved).
        float32_layers: tuple of str. Layer names (or path patterns) pinned to
            float32 whatever the policy, e.g. from `tfmp diagnose`.
        layer_map: tuple of (path, policy name, reason). Per-layer policies chosen by
            a calibration pass (`tfmp.adaptive`), applied after `float32_layers`.
    """

    name: str
    reason: str = ""
    float32_layers: tuple = ()
    layer_map: tuple = ()

    @property
    def loss_scaling(self):
        return needs_loss_scaling(self.name)

    @property
    def compute_dtype(self):
        import keras

        return keras.DTypePolicy(self.name).compute_dtype

    @property
    def variable_dtype(self):
        import keras

        return keras.DTypePolicy(self.name).variable_dtype

    def to_json(self):
        return {
            "name": self.name,
            "reason": self.reason,
            "loss_scaling": self.loss_scaling,
            "compute_dtype": self.compute_dtype,
            "variable_dtype": self.variable_dtype,
            "float32_layers": list(self.float32_layers),
            "layer_map": [list(row) for row in self.layer_map],
        }


# The `*_fp16w` export variants store float16 variables, half the bytes of the others
# (float32 variables under every policy). Keras has no float16-variable, float32-compute
# policy, so they compute in float16; LayerNormalization and attention softmax keep
# float32 statistics, logits stay float32. Serving only, never trained (_PURE_LOW_PRECISION).
HALF_WEIGHTS_POLICY = Policy("float16", reason="export: float16 variables (half the file), "
                             "float16 compute; serving only")


def needs_loss_scaling(policy_name):
    """Whether training under the Keras policy `policy_name` scales its loss."""
    # float16 has 5 exponent bits: small gradients underflow to zero unless the loss
    # is scaled up first. bfloat16 has float32's 8 exponent bits, so no.
    return policy_name == "mixed_float16"


def serving_policy(precision):
    """The compute policy of an exported variant stored in `precision` ("fp32", "fp16")."""
    return _SERVING_POLICIES[precision]


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
            f"'{_PURE_LOW_PRECISION[name]}' ({name} compute, float32 weights) instead.")
    if name not in CHOICES:
        raise PolicyError(f"Unknown policy '{name}'. Choose one of: {', '.join(CHOICES)}.")
    if name == "auto":
        hardware = hardware or detect_hardware()
        name, reason = choose(hardware)
    else:
        reason = "chosen by the user" + _emulated_note(name, hardware)
    return Policy(name=name, reason=reason, float32_layers=tuple(float32_layers))


def _emulated_note(name, hardware):
    """A warning for mixed_bfloat16 on a machine that computes no bfloat16 ("" else)."""
    if name != "mixed_bfloat16" or bfloat16_supported(hardware or detect_hardware(probe=False)):
        return ""
    return ("; this machine has no bfloat16 arithmetic (no AVX512-BF16, AMX, TPU or GPU of "
            "compute capability >= 8.0), so TensorFlow emulates it: MiniLM trained 6-11x "
            "slower than under float32 on such a CPU. 'auto' picks float32 here")


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
                "cores; bfloat16 needs no loss scaling.")
        if major == 7:
            return "mixed_float16", (
                f"GPU {name} (compute capability {cc}) has float16 tensor cores but "
                "no bfloat16; float16 is used with dynamic loss scaling.")
        return "float32", (
            f"GPU {name} (compute capability {cc} < 7.0) has no tensor cores: "
            "mixed precision would only add casts.")
    cpu = hardware.cpu_model or "this CPU"
    if "amx_bf16" in hardware.cpu_flags:
        return "mixed_bfloat16", f"CPU {cpu} has AMX bfloat16 matrix units."
    if "avx512_bf16" in hardware.cpu_flags:
        speedup = hardware.cpu_bf16_speedup
        if speedup is None:
            return "float32", (
                f"CPU {cpu} has AVX512-BF16, but the bfloat16 speed probe was not run "
                "(TFMP_AUTO_PROBE=0), so float32 is kept: it is never slower.")
        if speedup >= _CPU_BF16_MIN_SPEEDUP:
            return "mixed_bfloat16", (
                f"CPU {cpu} has AVX512-BF16 and a bfloat16 matmul ran {speedup:.2f}x "
                "the float32 rate here; bfloat16 needs no loss scaling.")
        return "float32", (
            f"CPU {cpu} has AVX512-BF16, but a bfloat16 matmul ran only "
            f"{speedup:.2f}x the float32 rate here (needs {_CPU_BF16_MIN_SPEEDUP}x), "
            "so mixed precision would not pay.")
    return "float32", (
        f"No GPU or TPU, and CPU {cpu} has no bfloat16 or float16 arithmetic "
        "(no AVX512-BF16 or AMX): mixed policies would train no faster and only add "
        "casts. They pay on GPUs (compute capability >= 7) and TPUs.")


# CPU flags of float16 arithmetic TensorFlow's CPU kernels could use natively.
_CPU_FLOAT16_FLAGS = ("avx512_fp16", "amx_fp16")


def emulate_float16(policy, hardware=None):
    """Whether float16 matmuls should run on float32 kernels, as tensor cores compute.

    True for mixed_float16 with no GPU or TPU on a CPU without float16 arithmetic
    (no AVX512-FP16 or AMX-FP16): there TensorFlow emulates float16 products in
    software, several times slower than its float32 kernels, while float16 operands
    cast up exactly. `tfmp.float16_cpu` does it; float32 and bfloat16 never.

    Args:
        policy: `Policy` or policy name.
        hardware: `Hardware` or None (detected, without the bfloat16 probe).
    """
    name = policy.name if isinstance(policy, Policy) else str(policy)
    if name != "mixed_float16":
        return False
    hardware = hardware or detect_hardware(probe=False)
    if hardware.gpus or hardware.tpu:
        return False
    return not any(flag in hardware.cpu_flags for flag in _CPU_FLOAT16_FLAGS)


@contextlib.contextmanager
def policy_scope(policy):
    """Sets Keras' global policy for the block and restores the previous one after."""
    import keras

    policy = resolve(policy)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy.name)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)


def set_global_policy(policy="auto"):
    """Resolves `policy`, sets it as Keras' global policy and returns the `Policy`."""
    import keras

    policy = resolve(policy)
    keras.mixed_precision.set_global_policy(policy.name)
    return policy


# --- Per-layer pins ---


def apply_pins(model, policy):
    """Pins `policy.float32_layers`, then `.layer_map`, of `model`; returns the paths."""
    if policy.name == "float32":
        return []
    pinned = pin_float32(model, policy.float32_layers) if policy.float32_layers else []
    for path, name, _ in policy.layer_map:
        pinned += pin_float32(model, [path], dtype=name)
    return pinned


def needs_float32_pin(entry, scale, margin=DEFAULT_MARGIN, culprit=False):
    """The rule behind suggested pins: a float16 layer without `margin`x headroom.

    `entry` is one layer of a diagnosis (max_abs_activation, max_abs_gradient of the
    loss scaled by `scale`, compute_dtype); `culprit` marks the layer where values
    first became non-finite. Gradients are rescued by a smaller loss scale, so only
    their unscaled size counts against the layer.
    """
    if entry["compute_dtype"] != "float16":
        return False
    peak = max(entry["max_abs_activation"] or 0.0, (entry["max_abs_gradient"] or 0.0) / scale)
    return culprit or peak * margin >= FLOAT16_MAX


# --- Lost updates ---

# Stored fraction bits of each variable dtype: its unit in the last place at |w| is
# 2**(floor(log2|w|) - bits). An update below half of it rounds back to w.
_FRACTION_BITS = {"float32": 23, "float16": 10, "bfloat16": 7, "float64": 52}
# A variable "has stopped learning" when at least this share of its updates are lost
# while the learning rate is at least STALL_MIN_LR_SHARE of its peak (the end of a
# linear decay loses everything, by design).
STALL_SHARE = 0.9
STALL_MIN_LR_SHARE = 0.1


def half_ulp(values, dtype):
    """Half a unit in the last place of `values` (a float array) stored in `dtype`."""
    import numpy as np

    bits = _FRACTION_BITS[str(dtype)]
    mantissa, exponent = np.frexp(np.abs(np.asarray(values, dtype=np.float32)))
    # |w| = mantissa * 2**exponent, mantissa in [0.5, 1): floor(log2|w|) = exponent - 1.
    return np.where(mantissa == 0, 0.0, np.ldexp(1.0, exponent - 2 - bits))


# --- Adaptive per-layer precision (the calibration pass is tfmp.adaptive) ---

# A float16 layer with this share of non-zero activations below 2**-24 computes in float32.
ADAPTIVE_UNDERFLOW_SHARE = 0.05
ADAPTIVE_UNDERFLOW_MAX = 2.0**-13


def pin_scope(path):
    """The path pinned for a leaf at `path`: its block ("bert_backbone/transformer_layer_3")
    for a leaf inside one, as the block's residual add (not a layer) overflows with it."""
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) >= 3 else path


def adaptive_choice(entry, scale, bfloat16=False, margin=DEFAULT_MARGIN, culprit=False):
    """(policy name, reason) for one measured float16 layer, or None to keep float16.

    Range short (activation, or gradient of the unscaled loss, within `margin`x of
    65504, or the `culprit` where float16 first became non-finite): `mixed_bfloat16` where the hardware has it and few values
    underflow (bfloat16 has float32's range, 3 fewer significant bits), else float32.
    Many values below 2**-24: float32.
    """
    if entry["compute_dtype"] != "float16":
        return None
    act = entry["max_abs_activation"] or 0.0
    grad = (entry["max_abs_gradient"] or 0.0) / scale
    under = entry["activation_underflow_share"]
    if culprit or max(act, grad) * margin >= FLOAT16_MAX:
        what = (f"max |activation| {act:.3g}" if act >= grad
                else f"max |gradient| {grad:.3g} (unscaled)")
        reason = (f"{entry['path']}: {what} is within {margin:g}x of float16's 65504"
                  if max(act, grad) * margin >= FLOAT16_MAX
                  else f"{entry['path']}: first non-finite value in float16")
        if bfloat16 and under < ADAPTIVE_UNDERFLOW_SHARE:
            return "mixed_bfloat16", reason + "; only range is short, so bfloat16"
        return "float32", reason
    # Beside a value above 2**-13, one below 2**-24 is under float16's 11-bit precision
    # anyway (attention probabilities of padding): only a layer living that low loses.
    if under >= ADAPTIVE_UNDERFLOW_SHARE and act < ADAPTIVE_UNDERFLOW_MAX:
        return "float32", (f"{entry['path']}: {under:.1%} of its activations are below "
                           "2**-24 and flush to zero in float16")
    return None


def answer_margin(probabilities):
    """Top-1 minus top-2 probability of each row [n, classes]: how sure each answer is."""
    import numpy as np

    ranked = np.sort(np.asarray(probabilities, np.float64), axis=-1)
    return ranked[:, -1] - ranked[:, -2]


# How far int8 may move this share of validation inputs before they go to float32.
CASCADE_MOVE_QUANTILE = 0.99


def cascade_margin(fast, slow):
    """Below which answer margin the cascade re-runs an input in float32 (issues 17, 14).

    From the validation split's int8 and float32 probabilities [n, classes], the larger
    of: the `CASCADE_MOVE_QUANTILE` quantile of how far int8 moved an input (max - min
    over classes of int8 - float32; a margin beyond it cannot flip the answer), and
    just above twice the largest int8 margin at which int8 disagreed. That largest alone
    let one more test input through on average (the gate allows 1 in 1,000): on the
    demo's 2,928 tweets halved 2,000 ways, it failed 24% of them; this rule none, with
    93.5% of inputs on int8."""
    import numpy as np

    fast, slow = np.asarray(fast, np.float64), np.asarray(slow, np.float64)
    moved = (fast - slow).max(-1) - (fast - slow).min(-1)
    margin = float(np.quantile(moved, CASCADE_MOVE_QUANTILE)) if len(moved) else 0.0
    differs = np.argmax(fast, -1) != np.argmax(slow, -1)
    if differs.any():
        margin = max(margin, float(np.nextafter(2 * answer_margin(fast)[differs].max(), 3.0)))
    return margin
