"""Precision policies: which one, why, whether it needs loss scaling, which layers stay float32.

Every decision about numeric precision in tfmp is made here; the optimizer, model,
callbacks, diagnosis and export modules ask this module instead of looking at policy
names themselves:

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
import re

import keras

from tfmp.errors import PolicyError, UserError
from tfmp.hardware import detect_hardware

# Policies tfmp trains with. Each keeps float32 variables ("master weights"); only the
# compute dtype changes.
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
CHOICES = ("auto",) + POLICIES

# Names Keras accepts but tfmp refuses, and why.
_PURE_LOW_PRECISION = {
    "float16": "mixed_float16",
    "bfloat16": "mixed_bfloat16",
}

# Computations that stay float32 under every policy, where they are built, and why.
# This is the one list: a new island is added here and at its site.
FLOAT32_ISLANDS = {
    "logits": "models.BertClassifier's `logits` Dense: the loss and softmax need "
              "float32 (float16 logits lose small probabilities and overflow past 65504)",
    "fused GELU arithmetic": "layers.fused_gelu_approximate: reads and writes the compute "
                             "dtype; float32 inside is free once XLA fuses the loop",
    "served softmax": "export.savedmodel and export.tflite: probabilities are a float32 "
                      "softmax of the logits whatever the compute dtype",
    "diagnosis loss": "diagnose: the probed loss is computed on float32 logits",
    "distillation loss": "compress.distil: the soft targets' softmax, KL and cross-entropy "
                         "are computed on float32 logits (the teacher's are float32 too)",
}

# Compression (tfmp.compress) runs the teacher for two things only, once each: the
# importance scores and the logits the student is distilled from. Both are computed
# under float32 whatever the teacher was trained under: the cost is paid once, and
# soft targets and Taylor scores (products of small gradients) are where 8 bits of
# bfloat16 mantissa would show. The student trains under the teacher run's policy.
TEACHER_POLICY = "float32"

# What to do when float16 keeps overflowing: the guards, the loss-scale floor and the
# skip warning all say it in these words.
OVERFLOW_ADVICE = ("Try --policy mixed_bfloat16 (or float32), pin the overflowing layers to "
                   "float32 (--float32-layers, from `tfmp diagnose`), or a lower learning "
                   "rate (--lr).")

# float16's range, against which `diagnose` measures each layer's headroom.
FLOAT16_MAX = 65504.0
FLOAT16_TINY = 2.0**-24  # smallest float16 subnormal; anything smaller becomes 0
# A layer is suggested for float32 when its activations come within this factor of
# FLOAT16_MAX: one batch is a sample, and the next may be larger.
DEFAULT_MARGIN = 4.0

# Exported variants by compute precision: the Keras policy their graph computes in.
# CPUs without bfloat16 serve float32 (and the TFLite converter fails on a mixed
# graph); the fp16 SavedModel is for GPUs, the bf16 one for CPUs with AVX512-BF16 or
# AMX, TPUs and GPUs from compute capability 8.0. Variables stay float32 in all.
_SERVING_POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}

# A CPU with AVX512-BF16 but no AMX gets mixed_bfloat16 from `auto` only when a
# bfloat16 matmul measured here beats float32 by this factor: the dot-product
# instruction alone does not guarantee TensorFlow's kernels use it, and casts cost.
_CPU_BF16_MIN_SPEEDUP = 1.2


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
        return needs_loss_scaling(self.name)

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


# The `*_fp16w` export variants store float16 variables: half the bytes of every other
# variant (whose variables are float32 under every policy, fp16 compute included).
# Keras has no policy with float16 variables and float32 compute, so they compute in
# float16 as well; Keras' LayerNormalization and attention softmax take their
# statistics in float32, and the logits stay float32 (FLOAT32_ISLANDS["logits"]). For
# serving and storage only: never trained (see _PURE_LOW_PRECISION for why).
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


# --- Per-layer pins ---


def layer_paths(model):
    """[(path, layer)] for every layer under `model`, depth first, "parent/child" names.

    Built from the layer tree rather than `layer.path`, which keras-hub's layers
    (created outside a name scope) leave unset or unqualified.
    """
    out, seen = [], set()

    def visit(layer, prefix):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) in seen:  # a functional model's inputs are also its backbone's
                continue
            seen.add(id(child))
            name = _stable_name(child)
            path = f"{prefix}/{name}" if prefix else name
            out.append((path, child))
            visit(child, path)

    visit(model, "")
    return out


def _stable_name(layer):
    # Keras names a second BertBackbone in a process "bert_backbone_1": drop such an
    # auto-generated suffix from nested models so pins mean the same in every run.
    auto = re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()
    if isinstance(layer, keras.Model) and re.fullmatch(rf"{auto}(_\d+)?", layer.name):
        return auto
    return layer.name


def _matches(pattern, path):
    # Exact path, a parent path (pins everything under it), or a regex on the path.
    return (path == pattern or path.startswith(pattern + "/")
            or re.fullmatch(pattern, path) is not None)


def pin_float32(model, patterns):
    """Sets the layers of `model` matching `patterns` to compute in float32.

    Variables are float32 under every mixed policy, so changing a built layer's
    compute dtype is exact: its inputs are cast to float32 when it is called and the
    next float16 layer casts its output back. Saved models keep the pins.

    Args:
        model: a built `keras.Model`.
        patterns: iterable of str: layer paths (as in `diagnose`'s report), parent
            paths, or regular expressions matched against the whole path.

    Returns:
        The paths of the layers pinned.

    Raises:
        UserError if a pattern is not a valid regular expression or matches no layer.
    """
    # config holds the one wording of a bad pattern; TrainConfig.validate checks them up front.
    from tfmp.config import check_layer_patterns

    patterns = list(patterns)
    check_layer_patterns(patterns)
    layers = layer_paths(model)
    pinned = []
    for pattern in patterns:
        hits = [(p, l) for p, l in layers if _matches(pattern, p)]
        if not hits:
            raise UserError(
                f"--float32-layers: {pattern!r} matches no layer of {model.name}. Use a "
                "path printed by `tfmp diagnose`, e.g. "
                f"{layers[-1][0] if layers else '<layer path>'!r}.")
        for path, layer in hits:
            if layer.compute_dtype != "float32":
                layer.dtype_policy = keras.DTypePolicy("float32")
                pinned.append(path)
    return pinned


def apply_pins(model, policy):
    """Pins `policy.float32_layers` of `model` (nothing under float32). Returns the paths."""
    if policy.float32_layers and policy.name != "float32":
        return pin_float32(model, policy.float32_layers)
    return []


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
