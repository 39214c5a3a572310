"""Knowledge distillation: the student learns from the teacher's logits as well as the labels.

    logits = teacher_logits(teacher_float32, splits.train.texts)
    attach(student, splits.train.texts, logits, temperature=2.0, weight=0.5)
    student.fit(...)                       # tfmp's own loop: checkpoints, monitor, resume

The loss of a training example is
    weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - weight) * CE(label)
(Hinton et al., 2015; T^2 keeps the soft term's gradients the size of the hard one's
as T changes). Validation examples are not in the teacher's table and get the plain
cross-entropy, so `val_loss` means what it means in any run. Transfer-set texts
(`tfmp.compress.transfer`: in the table, no label) get the soft term alone, at weight 1
(0 when `weight` is 0), and the training accuracy does not count them.

The teacher's logits are computed once, in float32, for the training texts
(`teacher_logits`), and looked up by text inside the student's input pipeline (a
`tf.lookup.StaticHashTable` mapped with the preprocessing), so a training step runs
the student only: with 3 epochs that is a third of the teacher forward passes of
online distillation, and the student's examples/s are its own.

Why not `keras.distillation.Distiller` (Keras 3.15): it is a `keras.Model` wrapping
teacher and student with its own `compile`/`train_step`, so the model tfmp fits
would be the wrapper, not the `BertClassifier`. tfmp's loop needs the classifier
itself: its checkpoints (`save_weights` + optimizer slots, resumed exactly), its
loss-scaled AdamW and monitor, keras-hub's raw-string preprocessing and the
`model.keras` the export reads. Distiller also runs the teacher at every step.
Here the classifier stays the fitted model and only its loss changes.
"""

import numpy as np

from tfmp.compress import hidden


def teacher_logits(teacher, texts, batch_size=64):
    """float32 logits [len(texts), classes] of `teacher` (built under float32) on `texts`."""
    from tfmp import data

    # (texts, labels) batches as tfmp's other datasets (no autotuning, `data.make_dataset`);
    # `predict` ignores the placeholder labels.
    split = data.Split(list(texts), np.zeros(len(texts), np.int32))
    return np.asarray(teacher.predict(data.make_dataset(split, None, batch_size), verbose=0),
                      np.float32)


def distillation_loss(labels, student, teacher, found, temperature, weight, labelled=None):
    """Per-example loss (see the module docstring); float32 whatever the policy.

    `labelled` (None: all) is False for transfer-set texts: `labels` is not read for them
    and their loss is `T^2 KL` (0 if `weight` is 0).
    """
    import keras

    ops = keras.ops
    student = ops.cast(student, "float32")  # precision.FLOAT32_ISLANDS["distillation loss"]
    hard = keras.losses.sparse_categorical_crossentropy(labels, student, from_logits=True)
    soft_teacher = ops.softmax(teacher / temperature, axis=-1)
    log_student = ops.log_softmax(student / temperature, axis=-1)
    log_teacher = ops.log_softmax(teacher / temperature, axis=-1)
    kl = ops.sum(soft_teacher * (log_teacher - log_student), axis=-1) * temperature ** 2
    found = ops.cast(found, "float32")
    labelled = 1.0 if labelled is None else ops.cast(labelled, "float32")
    soft_only = (1.0 if weight > 0 else 0.0) * kl
    taught = labelled * (weight * kl + (1.0 - weight) * hard) + (1.0 - labelled) * soft_only
    return found * taught + (1.0 - found) * hard


def attach(student, texts, logits, temperature=2.0, weight=0.5, states=None,
           state_weight=0.0, unlabelled=()):
    """Makes `student` (a compiled `BertClassifier`) train against the teacher's `logits`.

    Only this instance changes, and only its training: its inputs carry the teacher's
    logits alongside the labels, its loss is `distillation_loss`, its metrics see the
    labels. Its layers, weights and saved file are a plain classifier's. With `states`
    (`hidden.teacher_states`, one row per text) and `state_weight` > 0, the loss also has
    `state_weight` times `hidden.state_loss` against them. Texts in `unlabelled` (the
    transfer set, a subset of `texts`) have no label: soft term and states only.
    """
    import keras
    import tensorflow as tf

    unique = {}
    for i, text in enumerate(texts):
        unique.setdefault(text, i)  # duplicates: the teacher's logits of a text are one
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(unique), tf.string), tf.constant(list(unique.values()), tf.int64)),
        default_value=-1)
    rows = tf.constant(np.concatenate([logits, np.zeros_like(logits[:1])]), tf.float32)
    unlabelled = set(unlabelled)
    # Indexed like `rows` (a text's first position in `texts`), plus the not-found row.
    labelled_rows = tf.constant([t not in unlabelled for t in texts] + [True], tf.bool)
    use_states = states is not None and state_weight > 0
    if use_states:
        state_rows = tf.constant(np.concatenate([states, np.zeros_like(states[:1])]),
                                 tf.float32)
        latest = hidden.expose(student)
    parent_preprocess = type(student).preprocess_samples.__get__(student)
    parent_metrics = type(student).compute_metrics.__get__(student)

    def preprocess_samples(x, y=None, sample_weight=None):
        if y is not None and isinstance(x, tf.Tensor) and x.dtype == tf.string:
            index = table.lookup(x)
            row = tf.where(index >= 0, index, len(logits))
            y = {"label": y, "found": index >= 0, "teacher": tf.gather(rows, row),
                 "labelled": tf.gather(labelled_rows, row)}
            if use_states:
                y["states"] = tf.gather(state_rows, row)
        return parent_preprocess(x, y, sample_weight)

    def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y, dict):
            return type(student).compute_loss(student, x, y, y_pred, sample_weight, training)
        per_example = distillation_loss(y["label"], y_pred, y["teacher"], y["found"],
                                        temperature, weight, y["labelled"])
        if use_states:
            per_example = per_example + state_weight * hidden.state_loss(
                latest["states"], y["states"], y["found"])
        if sample_weight is not None:
            per_example = per_example * keras.ops.cast(sample_weight, "float32")
        return keras.ops.mean(per_example)

    def compute_metrics(x, y, y_pred, sample_weight=None):
        if not isinstance(y, dict):
            return parent_metrics(x, y, y_pred, sample_weight)
        if unlabelled:  # accuracy over the labelled texts only
            counted = keras.ops.cast(y["labelled"], "float32")
            sample_weight = counted if sample_weight is None else (
                counted * keras.ops.cast(sample_weight, "float32"))
        return parent_metrics(x, y["label"], y_pred, sample_weight)

    # Instance attributes shadow the class's methods for this object only.
    student.preprocess_samples = preprocess_samples
    student.compute_loss = compute_loss
    student.compute_metrics = compute_metrics
    student._tfmp_distillation = {"temperature": temperature, "weight": weight,
                                  "state_weight": state_weight if use_states else 0.0,
                                  "teacher_examples": len(unique),
                                  "transfer_examples": len(unlabelled)}
    return student
