"""Hidden-state distillation: the student's [CLS] state at each depth follows the teacher's.

    states = teacher_states(teacher_float32, splits.train.texts, plan.keep_layers)
    distil.attach(student, texts, logits, states=states, state_weight=1.0)

Student depth i was teacher layer `keep_layers[i]` (pruning keeps the hidden size), so
its [CLS] vector after depth i is pulled towards the teacher's after that layer: the
mean over depths and hidden units of the squared difference, in float32 whatever the
policy (precision.FLOAT32_ISLANDS["distillation loss"]), added to the loss with weight
`--hidden-weight`. Like the logits, the teacher's states are computed once in float32
for the training texts and looked up by text in the input pipeline
([examples, depths, hidden]: 3,000 x 3 x 384 float32 is 14 MB), so a step runs the
student only. Only [CLS] is matched, not every token: that table would be
`seq_len` times larger, and [CLS] is what the classifier reads.

The student's per-depth states are not outputs of its functional graph (the backbone
is one node of the classifier's), so `expose` makes this one instance's `call` run
the same layers one by one (`forward`: the graph's computation, dropout included,
held equal to it by the tests) and keep the states of the latest call for the loss.
Its layers, weights and saved file stay a plain classifier's.
"""

import numpy as np

from tfmp.compress.prune import depth_layers


def forward(classifier, x, training=False):
    """(logits, [[CLS] state after each depth]) of a BERT `classifier` on token inputs `x`."""
    backbone = classifier.backbone
    tokens = backbone.get_layer("token_embedding")(x["token_ids"])
    h = backbone.get_layer("embeddings_add")((
        tokens, backbone.get_layer("position_embedding")(tokens),
        backbone.get_layer("segment_embedding")(x["segment_ids"])))
    h = backbone.get_layer("embeddings_dropout")(
        backbone.get_layer("embeddings_layer_norm")(h), training=training)
    states = []
    for layer in depth_layers(backbone):
        h = layer(h, padding_mask=x["padding_mask"], training=training)
        states.append(h[:, 0, :])  # [CLS]
    pooled = backbone.get_layer("pooled_dense")(h[:, 0, :])
    pooled = classifier.get_layer("classifier_dropout")(pooled, training=training)
    return classifier.get_layer("logits")(pooled), states


def teacher_states(teacher, texts, depths, batch_size=64):
    """float32 [len(texts), len(depths), hidden]: `teacher`'s [CLS] after each of `depths`."""
    import tensorflow as tf

    rows = []
    for start in range(0, len(texts), batch_size):
        x = teacher.preprocessor(tf.constant(list(texts[start:start + batch_size])))
        _, states = forward(teacher, x, training=False)
        rows.append(np.stack([np.asarray(states[d], np.float32) for d in depths], axis=1))
    return np.concatenate(rows)


def state_loss(student_states, teacher_states, found):
    """Per-example mean squared difference over depths and units; 0 where not `found`."""
    import keras

    ops = keras.ops
    student = ops.stack([ops.cast(s, "float32") for s in student_states], axis=1)
    squared = ops.mean(ops.square(student - teacher_states), axis=(1, 2))
    return ops.cast(found, "float32") * squared


def expose(student):
    """Makes this instance's `call` keep its per-depth [CLS] states; returns where they go.

    The returned dict's "states" holds the states of the latest call (inside a traced
    train step: the symbolic states of that step's forward pass, read by its loss).
    """
    latest = {}

    def call(inputs, training=None, mask=None):
        logits, latest["states"] = forward(student, inputs, training=bool(training))
        return logits

    student.call = call  # an instance attribute: this object only, nothing saved
    return latest
