"""Structured pruning: a smaller BERT classifier holding the teacher's surviving weights.

    plan = Plan(keep_layers=(0, 2, 4), ffn=..., heads=..., share=1)
    student = build_student(teacher, plan, policy)

A `Plan` names what survives: which encoder layers (by the teacher's depth), and in
each kept layer which feed-forward neurons and which attention heads (the same count
in every layer, so the student is one backbone config; `tfmp.compress.importance`
chooses them). The student's matmuls are smaller, not masked: a kept layer's
intermediate Dense has `len(ffn[j])` units and its attention `len(heads[j])` heads of
the teacher's head size. Without head pruning or sharing the student is a plain
keras-hub `BertBackbone` (Hugging Face export works); with either it is a
`CompactBertBackbone`.

Removing a unit is exactly zeroing it: a neuron with zero input weights and bias
outputs GELU(0) = 0, and a head whose slice of the attention output projection is
zero adds nothing. `mask_teacher` does that to a copy of the teacher, and `forward`
runs a classifier through chosen depths; the tests hold the two equal.
"""

import dataclasses

import keras
import keras_hub
import numpy as np

from tfmp import models, precision
from tfmp.compress import vocab
from tfmp.compress.backbone import CompactBertBackbone


@dataclasses.dataclass(frozen=True)
class Plan:
    """What of the teacher survives.

    Args:
        keep_layers: tuple of int. Teacher depths kept, in order.
        ffn: tuple of tuples of int, or None. Feed-forward neurons kept in each kept
            layer (None: all).
        heads: tuple of tuples of int, or None. Attention heads kept in each kept layer.
        share: int. Adjacent kept layers tied to one set of weights (1: none).
        vocab: tuple of int, or None. Teacher token ids kept, in order
            (`tfmp.compress.vocab`; None: all).
    """

    keep_layers: tuple
    ffn: tuple | None = None
    heads: tuple | None = None
    share: int = 1
    vocab: tuple | None = None

    def to_json(self):
        def lists(v):
            return None if v is None else [list(x) for x in v]
        return {"keep_layers": list(self.keep_layers), "ffn": lists(self.ffn),
                "heads": lists(self.heads), "share": self.share,
                "vocab": None if self.vocab is None else list(self.vocab)}

    @classmethod
    def from_json(cls, d):
        def tuples(v):
            return None if v is None else tuple(tuple(int(i) for i in x) for x in v)
        vocab = d.get("vocab")
        return cls(tuple(int(i) for i in d["keep_layers"]), tuples(d.get("ffn")),
                   tuples(d.get("heads")), int(d.get("share", 1)),
                   None if vocab is None else tuple(int(i) for i in vocab))

    @property
    def layer_map(self):
        return tuple(d // self.share for d in range(len(self.keep_layers)))


def head_dim(backbone):
    return getattr(backbone, "head_dim", None) or backbone.hidden_dim // backbone.num_heads


def depth_layers(backbone):
    """The encoder layer applied at each depth (a shared layer appears more than once)."""
    layer_map = getattr(backbone, "layer_map", None) or range(backbone.num_layers)
    return [backbone.get_layer(f"transformer_layer_{i}") for i in layer_map]


def _student_backbone(teacher_backbone, plan, policy):
    config = dict(teacher_backbone.get_config(), dtype=policy.name,
                  num_layers=len(plan.keep_layers))
    config.pop("name", None)
    if plan.ffn is not None:
        config["intermediate_dim"] = len(plan.ffn[0])
    if plan.heads is not None:
        config["num_heads"] = len(plan.heads[0])
    if plan.vocab is not None:
        config["vocabulary_size"] = len(plan.vocab)
    if plan.heads is None and plan.share == 1 and not isinstance(
            teacher_backbone, CompactBertBackbone):
        return keras_hub.models.BertBackbone.from_config(config)
    config.update(head_dim=head_dim(teacher_backbone), layer_map=plan.layer_map)
    return CompactBertBackbone.from_config(config)


def _copy_layer(source, target, ffn, heads):
    """Copies encoder layer `source` into the smaller `target`, keeping `ffn` and `heads`."""
    attention, small = source._self_attention_layer, target._self_attention_layer
    heads = slice(None) if heads is None else np.asarray(heads)
    for name in ("_query_dense", "_key_dense", "_value_dense"):
        kernel, bias = getattr(attention, name).get_weights()  # (hidden, heads, head_dim), (heads, head_dim)
        getattr(small, name).set_weights([kernel[:, heads], bias[heads]])
    kernel, bias = attention._output_dense.get_weights()  # (heads, head_dim, hidden), (hidden,)
    small._output_dense.set_weights([kernel[heads], bias])
    ffn = slice(None) if ffn is None else np.asarray(ffn)
    kernel, bias = source._feedforward_intermediate_dense.get_weights()  # (hidden, inter), (inter,)
    target._feedforward_intermediate_dense.set_weights([kernel[:, ffn], bias[ffn]])
    kernel, bias = source._feedforward_output_dense.get_weights()  # (inter, hidden), (hidden,)
    target._feedforward_output_dense.set_weights([kernel[ffn], bias])
    for name in ("_self_attention_layer_norm", "_feedforward_layer_norm"):
        getattr(target, name).set_weights(getattr(source, name).get_weights())


_SHARED_LAYERS = ("position_embedding", "segment_embedding",
                  "embeddings_layer_norm", "pooled_dense")


def build_student(teacher, plan, policy):
    """A `BertClassifier` under `policy` holding what `plan` keeps of `teacher`.

    A shared layer (`plan.share` > 1) starts from the first layer of its group: the
    neurons and heads of different layers are not aligned, so averaging them would
    mix unrelated features; distillation then fits the tied weights to the group.
    """
    policy = precision.resolve(policy)
    with precision.policy_scope(policy):
        backbone = _student_backbone(teacher.backbone, plan, policy)
        student = models.BertClassifier(
            backbone=backbone, num_classes=teacher.num_classes,
            preprocessor=(teacher.preprocessor if plan.vocab is None
                          else vocab.pruned_preprocessor(teacher.preprocessor, plan.vocab)),
            activation=keras.activations.serialize(teacher.activation),
            dropout=teacher.dropout, name=teacher.name)
    for name in _SHARED_LAYERS:
        backbone.get_layer(name).set_weights(teacher.backbone.get_layer(name).get_weights())
    embeddings = teacher.backbone.get_layer("token_embedding").get_weights()[0]  # (vocab, hidden)
    rows = slice(None) if plan.vocab is None else np.asarray(plan.vocab)
    backbone.get_layer("token_embedding").set_weights([embeddings[rows]])
    student.get_layer("logits").set_weights(teacher.get_layer("logits").get_weights())
    sources = depth_layers(teacher.backbone)
    done = set()
    for depth, index in enumerate(plan.layer_map):
        if index in done:  # tied: initialised from the first depth of its group
            continue
        done.add(index)
        _copy_layer(sources[plan.keep_layers[depth]], backbone.transformer_layers[index],
                    plan.ffn[depth] if plan.ffn else None,
                    plan.heads[depth] if plan.heads else None)
    precision.apply_pins(student, policy)
    return student


def mask_teacher(teacher, plan):
    """Zeroes, in place, the neurons and heads of the kept layers that `plan` removes."""
    layers = depth_layers(teacher.backbone)
    for j, depth in enumerate(plan.keep_layers):
        layer = layers[depth]
        if plan.ffn is not None:
            dense = layer._feedforward_intermediate_dense
            kernel, bias = dense.get_weights()
            gone = np.setdiff1d(np.arange(bias.shape[0]), plan.ffn[j])
            kernel[:, gone], bias[gone] = 0.0, 0.0
            dense.set_weights([kernel, bias])
        if plan.heads is not None:
            dense = layer._self_attention_layer._output_dense
            kernel, bias = dense.get_weights()  # (heads, head_dim, hidden)
            gone = np.setdiff1d(np.arange(kernel.shape[0]), plan.heads[j])
            kernel[gone] = 0.0
            dense.set_weights([kernel, bias])
    return teacher


def forward(classifier, x, depths=None, training=False):
    """Logits of `classifier` on token inputs `x`, applying only the encoder `depths`.

    `depths` None: all of them (the classifier's own computation, from its layers).
    """
    backbone = classifier.backbone
    tokens = backbone.get_layer("token_embedding")(x["token_ids"])  # (batch, seq, hidden)
    h = backbone.get_layer("embeddings_add")((
        tokens, backbone.get_layer("position_embedding")(tokens),
        backbone.get_layer("segment_embedding")(x["segment_ids"])))
    h = backbone.get_layer("embeddings_layer_norm")(h)
    layers = depth_layers(backbone)
    for depth in (range(len(layers)) if depths is None else depths):
        h = layers[depth](h, padding_mask=x["padding_mask"], training=training)
    pooled = backbone.get_layer("pooled_dense")(h[:, 0, :])  # (batch, hidden): [CLS]
    return classifier.get_layer("logits")(pooled)
