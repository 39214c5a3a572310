"""Scores of a classifier on a split: accuracy, macro-F1, scikit-learn's report.

    scores = evaluate(model, splits.test, label_map)
    print(scores["classification_report"])
"""

import numpy as np

from tfmp import data


def evaluate(model, split, label_map, batch_size=64, shard=None):
    """Accuracy, macro-F1 and scikit-learn's classification report on `split`."""
    from sklearn.metrics import classification_report, f1_score

    ds = data.make_dataset(split, None, batch_size)
    if shard is not None:
        ds = shard(ds)
    # (texts, labels) batches, as in fit: `predict` ignores the labels, and inside
    # `models.preprocessing_traced_once` the tokenizer graph fit traced serves again.
    logits = model.predict(ds, verbose=0)
    predicted = np.argmax(logits, axis=-1)
    truth = np.asarray(split.label_ids)
    labels = list(range(label_map.num_classes))
    counts = np.bincount(truth, minlength=label_map.num_classes)
    report_args = dict(labels=labels, target_names=list(label_map.names), zero_division=0)
    return {
        "examples": int(len(truth)),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro",
                                   zero_division=0)),
        "majority_class_share": float(counts.max() / counts.sum()),
        "classification_report": classification_report(truth, predicted, digits=4,
                                                       **report_args),
        "classification_report_dict": classification_report(truth, predicted,
                                                            output_dict=True, **report_args),
    }
