"""LoRA: low-rank adapters on a frozen backbone, their file, and their merge into the kernels.

    lora.request(classifier, config)     # --lora-rank R: train.py, before compiling
    # compiling applies the "LoRA adapters" row of `models.TRANSFORMS` (`enable_requested`):
    # keras-hub's `backbone.enable_lora(R, target_layer_names=--lora-targets)`
    lora.summary(classifier)             # "LoRA rank 8 on 12 layers ...: 1.9% of ... train"
    lora.save_adapters(classifier, "runs/x/adapters.safetensors", model_dir)
    lora.load_adapters(classifier, "runs/x/adapters.safetensors")
    lora.copy_weights(classifier, clone) # `models.rebuild`: plain kernels W + (alpha/R)·A·B

What trains: A and B of every adapted layer (Keras' `Dense/EinsumDense.enable_lora`) and the
classifier head; the backbone, the adapted layers' biases included, is frozen. The
adapters are float32 under every policy: Keras creates `lora_kernel_a/b` with
`dtype="float32"`, and `enable` refuses any other dtype (tests check each policy), so
small adapter updates are not lost to float16/bfloat16 rounding; like every float32
variable they are cast to the compute dtype inside the forward pass.

`--base-int8` quantizes the backbone's Dense and EinsumDense kernels with Keras'
`quantize("int8")` (per-channel abs-max; embeddings and layer norms stay float) and trains
the adapters on that frozen int8 base: a QLoRA analogue.

Saving: while training, an adapted layer saves W (or its int8 kernel and scale), A and B
as they are (Keras' own `save_own_variables` would merge them, rounded to the compute
dtype), so a checkpoint resumes exactly. A finished run writes the adapters on their own
(`ADAPTERS`: A, B and the head, with the base they apply to) and a `model.keras` of plain
float32 kernels W + (alpha/R)·A·B, merged in float32 (`copy_weights`, via
`models.rebuild`): it loads, exports and serves like any run. An int8 base is
dequantized (int8 / scale) before the merge, so its export is a float32 model.
"""

import dataclasses
import functools
import json
import os

import keras
import numpy as np

from tfmp import files, precision
from tfmp.errors import InputError, UserError

ADAPTERS = "adapters.safetensors"
FORMAT = "tfmp-lora-1"
# keras-hub's own default for BERT (`default_lora_layer_names`): attention query and value.
DEFAULT_TARGETS = ("query", "value")
_REQUEST = "_tfmp_lora_request"


@dataclasses.dataclass(frozen=True)
class Request:
    """LoRA asked for by a run: `rank`, target layer names, and an int8 base or not."""

    rank: int
    targets: tuple = DEFAULT_TARGETS
    base_int8: bool = False


def request(classifier, config):
    """Marks `classifier` for LoRA as `config` says (nothing when `config.lora_rank` is 0).

    The adapters are added when the model is compiled for training, by the
    `enable_requested` row of `tfmp.models.TRANSFORMS`.
    """
    if config.lora_rank:  # past Keras' attribute tracking: a setting, not a saved state
        object.__setattr__(classifier, _REQUEST, Request(
            config.lora_rank, tuple(config.lora_targets), config.base_int8))


def enable_requested(classifier):
    """The transform row: `enable` what `request` asked for, once."""
    req = getattr(classifier, _REQUEST, None)
    if req is not None and not adapted(classifier):
        enable(classifier, req.rank, req.targets, req.base_int8)


def adapted_layers(model):
    """The Dense/EinsumDense layers of `model` with LoRA enabled, in layer order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if getattr(layer, "lora_enabled", False)]


def adapted(model):
    return bool(adapted_layers(model))


def _candidates(backbone):
    """{name: [layers]} of the backbone's layers that can take an adapter."""
    found = {}
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and layer.weights:
            found.setdefault(layer.name, []).append(layer)
    return found


def _check(backbone, rank, targets):
    candidates = _candidates(backbone)
    unknown = [t for t in targets if t not in candidates]
    if unknown:
        raise InputError(f"--lora-targets {','.join(unknown)}: no such Dense/EinsumDense layer in "
                         f"the backbone; choose from {','.join(sorted(candidates))}.")
    for name in targets:
        shape = candidates[name][0].kernel.shape
        limit = min(int(np.prod(shape[:-1])), int(shape[-1]))
        if rank > limit:
            raise InputError(f"--lora-rank {rank} exceeds what layer {name!r} (kernel "
                             f"{tuple(shape)}) can use ({limit}); use --lora-rank {limit} or less.")


def _quantize_int8(backbone):
    """The backbone's Dense and EinsumDense kernels to int8 (Keras' per-channel abs-max)."""
    if precision.emulate_float16(backbone.dtype_policy.name):
        # float16_cpu swaps in matmuls on float kernels, which an int8 kernel is not.
        raise UserError("--base-int8 with mixed_float16 on a CPU without float16 arithmetic "
                        "is not supported; use --policy mixed_bfloat16 or float32.")
    backbone.quantize("int8", filters=lambda layer: isinstance(
        layer, (keras.layers.Dense, keras.layers.EinsumDense)))


def enable(classifier, rank, targets=DEFAULT_TARGETS, base_int8=False):
    """Freezes the backbone and adds rank-`rank` adapters to its layers named `targets`.

    Raises `InputError` for a target that names no layer, or a rank above a kernel's.
    Returns the adapted layers.
    """
    backbone = classifier.backbone
    _check(backbone, rank, targets)
    if base_int8:
        _quantize_int8(backbone)
    # keras-hub's enable_lora: every backbone layer frozen, the targets trainable.
    backbone.enable_lora(rank, target_layer_names=list(targets))
    layers = adapted_layers(backbone)
    for layer in layers:
        if layer.bias is not None:  # adapters only: the base, biases included, is frozen
            layer.bias.trainable = False
        bad = [v.path for v in (layer.lora_kernel_a, layer.lora_kernel_b) if v.dtype != "float32"]
        if bad:
            # precision.FLOAT32_ISLANDS["LoRA adapters"]
            raise TypeError(f"LoRA weights {bad} are not float32; tfmp keeps adapters float32.")
        # Checkpoints save W, A and B as they are (see the module docstring).
        layer.save_own_variables = functools.partial(keras.layers.Layer.save_own_variables, layer)
        layer.load_own_variables = functools.partial(keras.layers.Layer.load_own_variables, layer)
    return layers


def _count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def describe(classifier):
    """What the run's LoRA is and how much of the model trains (config.json's `lora`)."""
    layers = adapted_layers(classifier)
    first = layers[0]
    adapters = [v for layer in layers for v in (layer.lora_kernel_a, layer.lora_kernel_b)]
    trainable, total = _count(classifier.trainable_weights), _count(classifier.weights)
    return {"rank": int(first.lora_rank), "alpha": float(first.lora_alpha),
            "targets": sorted({layer.name for layer in layers}), "layers": len(layers),
            "base_int8": first.quantization_mode == "int8",
            "adapter_parameters": _count(adapters), "trainable_parameters": trainable,
            "total_parameters": total, "trainable_share": trainable / total}


def summary(classifier):
    d = describe(classifier)
    return (f"LoRA: rank {d['rank']} on {d['layers']} layers ({', '.join(d['targets'])})"
            f"{' over an int8 base' if d['base_int8'] else ''}: {d['trainable_parameters']:,} "
            f"of {d['total_parameters']:,} parameters train ({100 * d['trainable_share']:.2f}%: "
            "the adapters and the classifier head).")


def save_adapters(classifier, path, model_dir):
    """Writes what trained (A, B, the head) to `path` (safetensors) with the base it applies
    to (`model_dir` and its model.safetensors' SHA-256). Returns `describe` + file facts."""
    from safetensors.numpy import save_file

    record = describe(classifier)
    tensors = {v.path: keras.ops.convert_to_numpy(v).astype(np.float32)
               for v in classifier.trainable_weights}
    base = os.path.join(model_dir, "model.safetensors")
    record.update(file=os.path.basename(path), base_model_dir=os.path.abspath(model_dir),
                  base_sha256=files.sha256(base) if os.path.isfile(base) else None)
    save_file(tensors, path, metadata={"format": FORMAT, "lora": json.dumps(record)})
    record["file_bytes"] = files.size(path)
    return record


def load_adapters(classifier, path, model_dir=None):
    """Applies adapters written by `save_adapters` to `classifier` (built from their base).

    Enables LoRA as recorded if the classifier has none. With `model_dir`, refuses a base
    other than the one recorded. Returns the record.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="np") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:
        raise InputError(f"'{path}': not a readable adapters file ({e}).") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"'{path}': not a tfmp adapters file (format {meta.get('format')!r}).")
    record = json.loads(meta["lora"])
    base = model_dir and os.path.join(model_dir, "model.safetensors")
    if base and record.get("base_sha256") and files.sha256(base) != record["base_sha256"]:
        raise InputError(f"'{path}' was trained on {record['base_model_dir']}, not on "
                         f"'{model_dir}' (model.safetensors differs).")
    if not adapted(classifier):
        enable(classifier, record["rank"], tuple(record["targets"]), record["base_int8"])
    variables = {v.path: v for v in classifier.trainable_weights}
    if set(variables) != set(tensors):
        raise InputError(f"'{path}' does not fit this classifier: it holds "
                         f"{sorted(set(tensors) - set(variables))[:3]}..., lacks "
                         f"{sorted(set(variables) - set(tensors))[:3]}....")
    for name, value in tensors.items():
        if tuple(variables[name].shape) != value.shape:
            raise InputError(f"'{path}': {name} is {value.shape}, the classifier's "
                             f"{tuple(variables[name].shape)} (another base or label set?).")
        variables[name].assign(value)
    return record


def merged_kernel(layer):
    """The float32 kernel `layer` computes with: W, int8 / scale for an int8 base, plus
    (alpha/rank)·A·B when adapted (EinsumDense: A is [..., R], B [R, last])."""
    numpy = keras.ops.convert_to_numpy
    mode = layer.quantization_mode
    if mode is None:
        kernel = numpy(layer._kernel).astype(np.float32)
    elif mode == "int8":
        scale = layer.kernel_scale
        if isinstance(layer, keras.layers.EinsumDense):
            scale = layer._adjust_scale_for_dequant(scale)  # broadcast to the kernel's axes
        kernel = numpy(layer._kernel).astype(np.float32) / numpy(scale).astype(np.float32)
    else:
        raise UserError(f"Layer {layer.path}: cannot merge a {mode} kernel; tfmp quantizes "
                        "bases to int8 only.")
    if layer.lora_enabled:
        delta = np.matmul(numpy(layer.lora_kernel_a), numpy(layer.lora_kernel_b))
        kernel = kernel + np.float32(layer.lora_alpha / layer.lora_rank) * delta
    return kernel


def copy_weights(source, clone):
    """Sets `clone`'s weights from `source`; an adapted or int8 layer of `source` gives its
    `merged_kernel`. `clone` is the same classifier built plain (`models.rebuild`)."""
    special = [layer for layer in source._flatten_layers(include_self=False, recursive=True)
               if getattr(layer, "lora_enabled", False)
               or getattr(layer, "quantization_mode", None)]
    if not special:
        clone.set_weights(source.get_weights())
        return
    values = {v.path: v for v in source.weights}
    values.update({layer._kernel.path: merged_kernel(layer) for layer in special})
    missing = [w.path for w in clone.weights if w.path not in values]
    if missing:
        raise ValueError(f"cannot copy weights: {missing[:3]} not in the source model")
    clone.set_weights([np.asarray(keras.ops.convert_to_numpy(values[w.path]))
                       for w in clone.weights])


def report_lines(entry):
    """`report.md`'s LoRA line from `config.json`'s `lora` record (none without LoRA)."""
    if not entry:
        return []
    return [f"- LoRA rank {entry['rank']} on {entry['layers']} layers "
            f"({', '.join(entry['targets'])})"
            f"{' over an int8 base' if entry['base_int8'] else ''}: "
            f"{entry['trainable_share']:.2%} of the parameters trained; `{entry['file']}` "
            f"{entry['file_bytes']:,} bytes; model.keras holds the merged kernels."]
