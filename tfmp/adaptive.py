"""Per-layer precision from a calibration pass: `tfmp train --precision-map adaptive`.

    policy = calibrate(model, train_ds, policy, batches=2)   # Policy with a layer_map
    precision.apply_pins(model, policy)                      # done by calibrate too
    print(describe(policy))

Before the first step, a few training batches run through `tfmp.diagnose`'s probes
(largest activation and gradient against 65504, share of values below 2**-24). Each
float16 layer short of range or precision gets a policy of its own by
`precision.adaptive_choice` (bfloat16 where the hardware has it and only range is
short, else float32), at the scope `precision.pin_scope` gives (a transformer block
for a leaf inside one). The map is `Policy.layer_map`: written to config.json,
`precision_map.json` (with its Keras `DTypePolicyMap`) and every checkpoint, so a
resumed run and an export rebuild the same model. Under float32 or bfloat16 compute
there is no float16 range to run out of, and nothing is measured.

The same rule serves recovery (`tfmp.recovery`): `pins_from(diagnosis)` turns a
diagnosis taken at an overflow into new rows.
"""

import dataclasses
import time

from tfmp import diagnose, files, precision
from tfmp.hardware import bfloat16_supported, detect_hardware

FILE = "precision_map.json"  # in the run directory


def pins_from(diagnosis, known=(), hardware=None):
    """[(path, policy, reason)] for the float16 layers of `diagnosis` that need their own
    policy, one row per `precision.pin_scope`, leaving out the paths in `known`."""
    bf16 = bfloat16_supported(hardware or detect_hardware(probe=False))
    rows = {}
    for entry in diagnosis["layers"]:
        choice = precision.adaptive_choice(
            entry, diagnosis["loss_scale"], bf16, diagnosis["margin"],
            culprit=entry["path"] == diagnosis["first_nonfinite_layer"])
        if choice is None:
            continue
        scope = precision.pin_scope(entry["path"])
        if scope in known:
            continue
        name, reason = choice
        if scope in rows:  # float32 wins over bfloat16 within a block; the first reason
            old_name, old_reason, more = rows[scope]  # is kept, the others counted
            name = "float32" if "float32" in (name, old_name) else name
            if "within" in old_reason or "within" not in reason:  # a measured range
                reason = old_reason  # says more than "first non-finite"
            rows[scope] = (name, reason, more + 1)
        else:
            rows[scope] = (name, reason, 0)
    return [(scope, name, reason + (f" (and {more} more of its layers)" if more else ""))
            for scope, (name, reason, more) in rows.items()]


def calibrate(model, data, policy, batches=2, loss_scale=None, log=print):
    """Measures `batches` batches of `data` and pins `model`'s layers that need it.

    Returns (the `Policy` with its `layer_map`, the diagnosis or None, seconds).
    """
    if not policy.loss_scaling:
        log(f"Precision map: {policy.name} computes in {policy.compute_dtype}, which has "
            "float32's range: nothing to calibrate, no layer pinned.")
        return policy, None, 0.0
    start = time.perf_counter()
    result = diagnose.diagnose(model, data, loss_scale=loss_scale, batches=batches,
                               actual=False)  # the float32 copy only: see _measure
    rows = pins_from(result)
    policy = dataclasses.replace(policy, layer_map=tuple(policy.layer_map) + tuple(rows))
    precision.apply_pins(model, policy)
    seconds = time.perf_counter() - start
    log(describe(policy, result, seconds))
    return policy, result, seconds


def describe(policy, diagnosis=None, seconds=None):
    """What the map pins and why, in words (printed by `tfmp train`)."""
    head = "Precision map (adaptive"
    if diagnosis is not None:
        head += f", {diagnosis['batches']} calibration batches"
        head += f" in {seconds:.1f} s" if seconds is not None else ""
    head += "): "
    if not policy.layer_map:
        peak = max([e["max_abs_activation"] or 0.0 for e in (diagnosis or {}).get("layers", [])]
                   + [0.0])
        return head + (f"every layer stays {policy.compute_dtype}; the largest activation "
                       f"measured is {peak:.3g}, {precision.FLOAT16_MAX / max(peak, 1e-30):.0f}x "
                       f"below 65504 (pins need < {precision.DEFAULT_MARGIN:g}x).")
    return head + "; ".join(f"{path} -> {name} ({reason})"
                            for path, name, reason in policy.layer_map)


def dtype_policy_map(policy):
    """The per-layer policies of `policy` as a Keras `DTypePolicyMap` (default: its own)."""
    from keras.dtype_policies import DTypePolicyMap

    policy_map = DTypePolicyMap(default_policy=policy.name)
    for pattern in policy.float32_layers:
        policy_map[pattern] = "float32"
    for path, name, _ in policy.layer_map:
        policy_map[path] = name
    return policy_map


def write(run_dir, policy, diagnosis=None):
    """Writes `precision_map.json`: the rows, the Keras `DTypePolicyMap`, the measurements."""
    import keras

    files.write_json(f"{run_dir}/{FILE}", {
        "policy": policy.name,
        "layer_map": [{"path": p, "policy": n, "reason": r} for p, n, r in policy.layer_map],
        "dtype_policy_map": keras.saving.serialize_keras_object(dtype_policy_map(policy)),
        "calibration": diagnosis,
    })
