"""The parity gate: how close each exported variant must stay to the Keras model.

    failures = check_gate("tflite_int8", row, variant.gate, fp32_size)

`row` holds a variant's measurements on the evaluation split (argmax agreement with
the float32 Keras model, largest probability difference, accuracy drop, file size);
`check_gate` adds the gate and its verdict to it and returns the failures in words.
Each variant's `Gate` sits in its registry row (`tfmp.export.variant.Variant.gate`).
"""

import dataclasses

import numpy as np

from tfmp.errors import UserError

# The variant that `Gate.max_size_ratio` divides by: the float32 TFLite file, the
# unquantized form of the quantized files whose shrinkage the ratio measures.
SIZE_REFERENCE = "tflite_fp32"
# Under this tflite_fp32 size the flatbuffer's graph, not its weights, sets the file
# size, so a size ratio says nothing about quantization and is not gated.
SIZE_GATE_MIN_BYTES = 1 << 20
# Every gate refuses a variant under which any class's recall falls more than this
# (2 points) below the float32 Keras model's: quantization can hurt one class far
# more than overall accuracy shows.
MAX_CLASS_RECALL_DROP = 0.02


class ExportGateError(UserError):
    """A variant disagrees with the Keras model more than its gate allows."""


@dataclasses.dataclass(frozen=True)
class Gate:
    """What a variant must meet against the Keras model on the evaluation split."""

    min_agreement: float  # share of examples with the same argmax
    max_probability_difference: float | None = None  # largest |p - p_keras|
    max_accuracy_drop: float | None = None  # accuracy points (as a fraction) lost
    max_size_ratio: float | None = None  # file size / tflite_fp32 file size
    # recall points (as a fraction) any one class may lose against the Keras model
    max_class_recall_drop: float | None = MAX_CLASS_RECALL_DROP


def class_recalls(predicted, label_ids, label_names):
    """{class name: recall} of argmaxes `predicted` against `label_ids` (None: no examples)."""
    predicted, label_ids = np.asarray(predicted), np.asarray(label_ids)
    out = {}
    for class_id, name in enumerate(label_names):
        members = label_ids == class_id
        out[name] = float(np.mean(predicted[members] == class_id)) if members.any() else None
    return out


def recall_drops(recalls, reference):
    """{class name: reference recall - recall}, for classes with examples."""
    return {name: reference[name] - r for name, r in recalls.items()
            if r is not None and reference.get(name) is not None}


def check_gate(name, row, gate, fp32_size):
    """Fills `row` with the gate and returns the list of its failures in words."""
    failures = []
    if not np.isfinite(row["max_probability_difference"]):
        failures.append("non-finite probabilities")
    # Written as `not (x <= bound)` so that a NaN fails.
    if not row["argmax_agreement"] >= gate.min_agreement:
        failures.append(f"argmax agreement {row['argmax_agreement']:.4f} < {gate.min_agreement}")
    if (gate.max_probability_difference is not None
            and not row["max_probability_difference"] <= gate.max_probability_difference):
        failures.append(f"max probability difference {row['max_probability_difference']:.2e} "
                        f"> {gate.max_probability_difference:.0e}")
    if gate.max_accuracy_drop is not None and not row["accuracy_drop"] <= gate.max_accuracy_drop:
        failures.append(f"accuracy {row['accuracy_drop'] * 100:.2f} points below Keras "
                        f"(at most {gate.max_accuracy_drop * 100:.2f} allowed)")
    drops = row.get("class_recall_drop") or {}
    if gate.max_class_recall_drop is not None:
        for label, drop in sorted(drops.items(), key=lambda kv: -kv[1]):
            # 1e-9: recalls are ratios, so "exactly 2 points" may round to just above.
            if not drop <= gate.max_class_recall_drop + 1e-9:
                failures.append(
                    f"recall of class {label!r} {drop * 100:.2f} points below Keras "
                    f"({row['class_recall'][label]:.4f}; at most "
                    f"{gate.max_class_recall_drop * 100:.2f} allowed)")
    if gate.max_size_ratio is not None:
        row["size_ratio"] = row["size_bytes"] / fp32_size
        if fp32_size < SIZE_GATE_MIN_BYTES:
            row["size_gate"] = f"not applied: tflite_fp32 is under {SIZE_GATE_MIN_BYTES} bytes"
        elif row["size_ratio"] > gate.max_size_ratio:
            failures.append(f"size {row['size_ratio']:.3f}x tflite_fp32 > {gate.max_size_ratio}x")
    row["gate"] = dataclasses.asdict(gate)
    row["passed"] = not failures
    return [f"{name}: {f}" for f in failures]
