"""Layer paths and per-layer policy pins: the mechanics `tfmp.precision` decides with.

    layer_paths(model)                 # [("bert_backbone/transformer_layer_3", layer), ...]
                                       # (other families: "roberta_backbone/...", ...)
    pin_float32(model, ["bert_backbone/transformer_layer_5"])     # or dtype="mixed_bfloat16"
    with computing_in_float32(model): ...   # every float layer in float32, then as before

Which layers to pin, and to what, is decided in `tfmp.precision` (which re-exports
them); this module only names layers and sets their policies.
"""

import contextlib
import re

# Keras is imported where it is used: `tfmp predict` imports tfmp.precision without it.
from tfmp.errors import UserError


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
    import keras
    from keras.src.utils.naming import to_snake_case  # Keras' own default names

    auto = to_snake_case(type(layer).__name__)  # "XLMRobertaBackbone" -> "xlm_roberta_backbone"
    if isinstance(layer, keras.Model) and re.fullmatch(rf"{auto}(_\d+)?", layer.name):
        return auto
    return layer.name


def _matches(pattern, path):
    # Exact path, a parent path (pins everything under it), or a regex on the path.
    return (path == pattern or path.startswith(pattern + "/")
            or re.fullmatch(pattern, path) is not None)


def pin_float32(model, patterns, dtype="float32"):
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
    import keras

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
            if layer.dtype_policy.name != dtype:
                layer.dtype_policy = keras.DTypePolicy(dtype)
                pinned.append(path)
    return pinned


@contextlib.contextmanager
def computing_in_float32(model):
    """Every floating-point layer of `model` computes in float32 inside the block, then
    has its own policy object back (a `DTypePolicyMap` included, untouched).

    Exact for the reason `pin_float32` is: variables are float32 under every mixed
    policy. `tfmp.diagnose` measures a model this way instead of building a float32
    copy (a third of a 2-batch calibration on MiniLM). Not for int8 (quantized)
    layers, whose kernels only their own policy reads: see `quantized`.
    """
    import keras

    layers = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
              if layer.compute_dtype in ("float16", "bfloat16", "float32")]  # not tokenizers
    saved = [layer._dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer._dtype_policy = keras.DTypePolicy("float32")
        yield model
    finally:
        for layer, policy in zip(layers, saved):
            layer._dtype_policy = policy


def quantized(model):
    """Whether any layer of `model` is quantized (its policy, or its entry in a map)."""
    return any(layer.quantization_mode is not None
               for layer in model._flatten_layers(include_self=True, recursive=True))
