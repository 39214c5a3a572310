"""What a variant's answers on the test split say against the float32 answers.

    row = score(probabilities, label_ids, labels, reference)

Accuracy, macro-F1, each class's recall and its change against the float32 reference
(in points), and the examples whose answer differs from float32's ("flips").
"""

import numpy as np


def class_recall(predicted, label_ids, num_classes):
    """Recall of each class id (NaN for a class without examples)."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        members = label_ids == c
        if members.any():
            out[c] = np.mean(predicted[members] == c)
    return out


def macro_f1(predicted, label_ids, num_classes):
    """Unweighted mean of each class's F1 (a class never predicted nor present: skipped)."""
    scores = []
    for c in range(num_classes):
        tp = np.sum((predicted == c) & (label_ids == c))
        fp = np.sum((predicted == c) & (label_ids != c))
        fn = np.sum((predicted != c) & (label_ids == c))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def score(probabilities, label_ids, labels, reference):
    """The test-split row of one variant against `reference` (float32 probabilities)."""
    label_ids = np.asarray(label_ids)
    predicted, expected = probabilities.argmax(-1), reference.argmax(-1)
    recall = class_recall(predicted, label_ids, len(labels))
    reference_recall = class_recall(expected, label_ids, len(labels))
    change = {name: float((r - ref) * 100) for name, r, ref in
              zip(labels, recall, reference_recall) if not np.isnan(r)}
    worst = min(change, key=change.get) if change else None
    return {
        "accuracy": float(np.mean(predicted == label_ids)),
        "macro_f1": macro_f1(predicted, label_ids, len(labels)),
        "class_recall": {name: float(r) for name, r in zip(labels, recall) if not np.isnan(r)},
        "class_recall_change_points": change,
        "worst_class": worst,
        "worst_class_change_points": change[worst] if worst else 0.0,
        "flips": int(np.sum(predicted != expected)),
        "agreement": float(np.mean(predicted == expected)),
    }


def flipped(probabilities, reference, texts, label_ids, labels):
    """One record per example whose answer differs from float32's, for flips/*.jsonl."""
    predicted, expected = probabilities.argmax(-1), reference.argmax(-1)
    for i in np.flatnonzero(predicted != expected):
        yield {"test_index": int(i), "text": texts[i], "label": labels[label_ids[i]],
               "float32": labels[expected[i]], "variant": labels[predicted[i]],
               "float32_probability": round(float(reference[i].max()), 4),
               "variant_probability": round(float(probabilities[i].max()), 4)}
