"""`CompactBertBackbone`: a BERT backbone with pruned heads and shared (tied) layers.

    backbone = CompactBertBackbone(vocabulary_size=30522, num_layers=6, num_heads=6,
                                   hidden_dim=384, intermediate_dim=768, head_dim=64,
                                   layer_map=(0, 0, 1, 1, 2, 2))

keras-hub's `BertBackbone` fixes the attention head size at `hidden_dim // num_heads`
and builds one encoder layer per depth. A model with half its heads pruned keeps the
teacher's head size (64 for MiniLM) with fewer heads, and a model with ALBERT-style
sharing applies one encoder layer at several depths: neither fits `BertBackbone`'s
config. This class adds exactly those two settings (`head_dim`, `layer_map`) and is
otherwise `BertBackbone` (same layer names, inputs, outputs and `get_config` keys), so
`tfmp.models.rebuild`, `load_model` and the export's SavedModel and TFLite writers
take it like the original. Layer dropping and FFN pruning need none of this: they
are a plain `BertBackbone` with fewer layers or a smaller `intermediate_dim`.
"""

import keras
import keras_hub
from keras_hub.src.layers.modeling.position_embedding import PositionEmbedding
from keras_hub.src.layers.modeling.transformer_encoder import TransformerEncoder
from keras_hub.src.utils.keras_utils import gelu_approximate

_init = keras_hub.src.models.bert.bert_backbone.bert_kernel_initializer


@keras.saving.register_keras_serializable(package="tfmp")
class HeadSizedTransformerEncoder(TransformerEncoder):
    """keras-hub's `TransformerEncoder` with an explicit attention head size.

    Args:
        key_dim: int. Size of each attention head (keras-hub derives it as
            `hidden_dim // num_heads`, which pruning heads would change).
        **kwargs: `TransformerEncoder`'s arguments.
    """

    def __init__(self, key_dim, **kwargs):
        super().__init__(**kwargs)
        self.key_dim = key_dim

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        # The attention block is the only part that differs from the parent's build.
        self._self_attention_layer = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads, key_dim=self.key_dim, dropout=self.dropout,
            kernel_initializer=_init(), dtype=self.dtype_policy, name="self_attention_layer")
        self._self_attention_layer.build(query_shape=inputs_shape, value_shape=inputs_shape)

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name=name)
            layer.build(inputs_shape)
            return layer

        def dropout(name):
            return keras.layers.Dropout(rate=self.dropout, dtype=self.dtype_policy, name=name)

        self._self_attention_layer_norm = norm("self_attention_layer_norm")
        self._self_attention_dropout = dropout("self_attention_dropout")
        self._feedforward_layer_norm = norm("feedforward_layer_norm")
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation, kernel_initializer=_init(),
            dtype=self.dtype_policy, name="feedforward_intermediate_dense")
        self._feedforward_intermediate_dense.build(inputs_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=_init(), dtype=self.dtype_policy,
            name="feedforward_output_dense")
        # (batch, seq, intermediate_dim) into the output projection
        self._feedforward_output_dense.build(tuple(inputs_shape[:-1]) + (self.intermediate_dim,))
        self._feedforward_dropout = dropout("feedforward_dropout")
        self.built = True

    def get_config(self):
        return dict(super().get_config(), key_dim=self.key_dim)


@keras.saving.register_keras_serializable(package="tfmp")
class CompactBertBackbone(keras_hub.models.BertBackbone):
    """`BertBackbone` with a given head size and, optionally, layers shared across depths.

    Args:
        vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, dropout,
            max_sequence_length, num_segments, dtype: as `BertBackbone`; `num_layers` is
            the depth (how many encoder applications).
        head_dim: int. Size of each attention head.
        layer_map: sequence of int or None. `layer_map[d]` is the encoder layer applied
            at depth d; equal entries share one set of weights. None: one layer per depth.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 head_dim, layer_map=None, dropout=0.1, max_sequence_length=512,
                 num_segments=2, dtype=None, **kwargs):
        layer_map = tuple(int(i) for i in (layer_map or range(num_layers)))
        if len(layer_map) != num_layers or sorted(set(layer_map)) != list(
                range(max(layer_map) + 1)):
            raise ValueError(f"layer_map {layer_map} must give each of {num_layers} depths "
                             "a layer, numbering layers 0, 1, ... without gaps")
        # === Layers ===
        self.token_embedding = keras.layers.ReversibleEmbedding(
            input_dim=vocabulary_size, output_dim=hidden_dim, embeddings_initializer=_init(),
            dtype=dtype, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            initializer=_init(), sequence_length=max_sequence_length, dtype=dtype,
            name="position_embedding")
        self.segment_embedding = keras.layers.Embedding(
            input_dim=num_segments, output_dim=hidden_dim, embeddings_initializer=_init(),
            dtype=dtype, name="segment_embedding")
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            axis=-1, epsilon=1e-12, dtype=dtype, name="embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype,
                                                       name="embeddings_dropout")
        self.transformer_layers = [
            HeadSizedTransformerEncoder(
                key_dim=head_dim, num_heads=num_heads, intermediate_dim=intermediate_dim,
                activation=gelu_approximate, dropout=dropout, layer_norm_epsilon=1e-12,
                kernel_initializer=_init(), dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(max(layer_map) + 1)]
        self.pooled_dense = keras.layers.Dense(
            hidden_dim, kernel_initializer=_init(), activation="tanh", dtype=dtype,
            name="pooled_dense")
        # === Functional Model ===
        inputs = {k: keras.Input(shape=(None,), dtype="int32", name=k)
                  for k in ("token_ids", "segment_ids", "padding_mask")}
        tokens = self.token_embedding(inputs["token_ids"])  # (batch, seq, hidden_dim)
        x = self.embeddings_add((tokens, self.position_embedding(tokens),
                                 self.segment_embedding(inputs["segment_ids"])))
        x = self.embeddings_dropout(self.embeddings_layer_norm(x))
        for index in layer_map:
            x = self.transformer_layers[index](x, padding_mask=inputs["padding_mask"])
        pooled = self.pooled_dense(x[:, 0, :])  # (batch, hidden_dim): the [CLS] token
        keras_hub.models.Backbone.__init__(
            self, inputs=inputs, outputs={"sequence_output": x, "pooled_output": pooled},
            dtype=dtype, **kwargs)
        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.head_dim = head_dim
        self.layer_map = layer_map
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.cls_token_index = 0

    def get_config(self):
        return dict(super().get_config(), head_dim=self.head_dim, layer_map=list(self.layer_map))
