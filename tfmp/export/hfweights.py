"""keras-hub backbones in Hugging Face names: the inverse of keras-hub's converters.

    config, tensors = hf_backbone(backbone)     # {HF name: float32 array}, config.json dict
    tensors.update(hf_head(classifier))         # the classification head, HF names

keras-hub reads Hugging Face checkpoints (`utils/transformers/convert_<family>.py`) but
writes none, so the reverse mapping of each family lives here, one function per
family (`WRITERS`, keyed by `tfmp.families` model_type). Two conversions lose a layout
that the export restores:

- RoBERTa and XLM-R keep 2 position rows before the first token's (padding_idx + 1):
  keras-hub drops them, so they are written back (as zeros: only padding reads them,
  and its output is masked).
- XLM-R: keras-hub folds `token_type_embeddings[0]` into the position table (every
  token has type 0). The export writes that folded table and a zero token-type row:
  HF adds the two again, so every position sees the same sum.
"""

import numpy as np

from tfmp import families

# keras-hub activations -> HF hidden_act: BERT and ALBERT use the tanh approximation.
_GELU = {"gelu_approximate": "gelu_new", "gelu": "gelu"}


def _np(variable):
    return np.asarray(variable.numpy(), np.float32)


def _act(block):
    name = getattr(block.activation, "__name__", str(block.activation))
    return _GELU.get(name, "gelu")


def _dense(t, name, dense, hidden=None):
    """A keras Dense (or EinsumDense of shape (in, heads, head_dim) / (heads, head_dim, out))
    as a torch Linear weight (out, in) and bias."""
    kernel = _np(dense.kernel)
    if kernel.ndim == 3 and hidden is not None:
        # (hidden, heads, head_dim) or (heads, head_dim, hidden) -> (hidden, hidden)
        kernel = kernel.reshape(hidden, -1) if kernel.shape[0] == hidden else \
            kernel.reshape(-1, hidden)
    t[name + ".weight"] = kernel.T
    t[name + ".bias"] = _np(dense.bias).reshape(-1)


def _norm(t, name, norm):
    t[name + ".weight"], t[name + ".bias"] = _np(norm.gamma), _np(norm.beta)


def _encoder_block(t, p, block, hidden, names):
    """One keras-hub TransformerEncoder under prefix `p` with the family's sub-names."""
    attn = block._self_attention_layer
    for key, dense in zip(("q", "k", "v", "o"), (attn.query_dense, attn.key_dense,
                                                attn.value_dense, attn.output_dense)):
        _dense(t, p + names[key], dense, hidden)
    _norm(t, p + names["attention_norm"], block._self_attention_layer_norm)
    _dense(t, p + names["ffn_in"], block._feedforward_intermediate_dense)
    _dense(t, p + names["ffn_out"], block._feedforward_output_dense)
    _norm(t, p + names["output_norm"], block._feedforward_layer_norm)


_BERT_BLOCK = {"q": "attention.self.query", "k": "attention.self.key",
               "v": "attention.self.value", "o": "attention.output.dense",
               "attention_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense",
               "ffn_out": "output.dense", "output_norm": "output.LayerNorm"}


def _common(backbone, eps):
    return {"vocab_size": backbone.vocabulary_size, "num_attention_heads": backbone.num_heads,
            "intermediate_size": backbone.intermediate_dim, "hidden_dropout_prob": backbone.dropout,
            "attention_probs_dropout_prob": backbone.dropout, "layer_norm_eps": eps,
            "initializer_range": 0.02, "hidden_size": backbone.hidden_dim,
            "num_hidden_layers": backbone.num_layers}


def bert(backbone):
    """(config, tensors) of a `BertBackbone` (tensors without the `bert.` prefix)."""
    hidden = backbone.hidden_dim
    block0 = backbone.get_layer("transformer_layer_0")
    config = dict(_common(backbone, 1e-12), model_type="bert", architectures=["BertModel"],
                  max_position_embeddings=backbone.max_sequence_length,
                  type_vocab_size=backbone.num_segments, hidden_act=_act(block0),
                  pad_token_id=0, position_embedding_type="absolute")
    get = backbone.get_layer
    t = {"embeddings.word_embeddings.weight": _np(get("token_embedding").embeddings),
         "embeddings.position_embeddings.weight":
             _np(get("position_embedding").position_embeddings),
         "embeddings.token_type_embeddings.weight": _np(get("segment_embedding").embeddings)}
    _norm(t, "embeddings.LayerNorm", get("embeddings_layer_norm"))
    for i in range(backbone.num_layers):
        _encoder_block(t, f"encoder.layer.{i}.", get(f"transformer_layer_{i}"), hidden,
                       _BERT_BLOCK)
    _dense(t, "pooler.dense", get("pooled_dense"))
    return config, t


def roberta(backbone, model_type="roberta"):
    """(config, tensors) of a `RobertaBackbone` or `XLMRobertaBackbone` (no prefix)."""
    hidden = backbone.hidden_dim
    positions = _np(backbone.embeddings.position_embedding.position_embeddings)
    # HF position ids start at padding_idx + 1 = 2: rows 0-1 only ever meet padding.
    offset = families.FAMILIES[model_type].position_offset
    positions = np.concatenate([np.zeros((offset, hidden), np.float32), positions])
    config = dict(_common(backbone, 1e-5), model_type=model_type,
                  architectures=["XLMRobertaModel" if model_type != "roberta" else "RobertaModel"],
                  max_position_embeddings=backbone.max_sequence_length + offset,
                  type_vocab_size=1, hidden_act=_act(backbone.transformer_layers[0]),
                  pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  position_embedding_type="absolute")
    t = {"embeddings.word_embeddings.weight": _np(backbone.token_embedding.embeddings),
         "embeddings.position_embeddings.weight": positions,
         # keras-hub has none (XLM-R's row 0 is folded into the positions above).
         "embeddings.token_type_embeddings.weight": np.zeros((1, hidden), np.float32)}
    _norm(t, "embeddings.LayerNorm", backbone.embeddings_layer_norm)
    for i, block in enumerate(backbone.transformer_layers):
        _encoder_block(t, f"encoder.layer.{i}.", block, hidden, _BERT_BLOCK)
    return config, t


def xlm_roberta(backbone):
    return roberta(backbone, "xlm-roberta")


def distilbert(backbone):
    """(config, tensors) of a `DistilBertBackbone` (no `distilbert.` prefix)."""
    hidden = backbone.hidden_dim
    embedding = backbone.get_layer("token_and_position_embedding")
    config = {"model_type": "distilbert", "architectures": ["DistilBertModel"],
              "vocab_size": backbone.vocabulary_size, "dim": hidden,
              "n_layers": backbone.num_layers, "n_heads": backbone.num_heads,
              "hidden_dim": backbone.intermediate_dim, "dropout": backbone.dropout,
              "attention_dropout": backbone.dropout, "seq_classif_dropout": backbone.dropout,
              "max_position_embeddings": backbone.max_sequence_length,
              "activation": _act(backbone.transformer_layers[0]), "initializer_range": 0.02,
              "sinusoidal_pos_embds": False, "pad_token_id": 0}
    t = {"embeddings.word_embeddings.weight": _np(embedding.token_embedding.embeddings),
         "embeddings.position_embeddings.weight":
             _np(embedding.position_embedding.position_embeddings)}
    _norm(t, "embeddings.LayerNorm", backbone.embeddings_layer_norm)
    names = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin",
             "o": "attention.out_lin", "attention_norm": "sa_layer_norm",
             "ffn_in": "ffn.lin1", "ffn_out": "ffn.lin2", "output_norm": "output_layer_norm"}
    for i, block in enumerate(backbone.transformer_layers):
        _encoder_block(t, f"transformer.layer.{i}.", block, hidden, names)
    return config, t


def albert(backbone):
    """(config, tensors) of an `AlbertBackbone` (no `albert.` prefix)."""
    hidden = backbone.hidden_dim
    block0 = backbone.get_layer("group_0_inner_layer_0")
    config = {"model_type": "albert", "architectures": ["AlbertModel"],
              "vocab_size": backbone.vocabulary_size, "embedding_size": backbone.embedding_dim,
              "hidden_size": hidden, "num_hidden_layers": backbone.num_layers,
              "num_attention_heads": backbone.num_heads,
              "intermediate_size": backbone.intermediate_dim,
              "num_hidden_groups": backbone.num_groups,
              "inner_group_num": backbone.num_inner_repetitions,
              "hidden_act": _act(block0), "hidden_dropout_prob": backbone.dropout,
              "attention_probs_dropout_prob": backbone.dropout,
              "max_position_embeddings": backbone.max_sequence_length,
              "type_vocab_size": backbone.num_segments, "layer_norm_eps": 1e-12,
              "initializer_range": 0.02, "classifier_dropout_prob": backbone.dropout,
              "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3,
              "position_embedding_type": "absolute"}
    t = {"embeddings.word_embeddings.weight": _np(backbone.token_embedding.embeddings),
         "embeddings.position_embeddings.weight":
             _np(backbone.position_embedding.position_embeddings),
         "embeddings.token_type_embeddings.weight": _np(backbone.segment_embedding.embeddings)}
    _norm(t, "embeddings.LayerNorm", backbone.embeddings_layer_norm)
    _dense(t, "encoder.embedding_hidden_mapping_in", backbone.embeddings_projection)
    names = {"q": "attention.query", "k": "attention.key", "v": "attention.value",
             "o": "attention.dense", "attention_norm": "attention.LayerNorm", "ffn_in": "ffn",
             "ffn_out": "ffn_output", "output_norm": "full_layer_layer_norm"}
    for g in range(backbone.num_groups):
        for j in range(backbone.num_inner_repetitions):
            _encoder_block(t, f"encoder.albert_layer_groups.{g}.albert_layers.{j}.",
                           backbone.get_layer(f"group_{g}_inner_layer_{j}"), hidden, names)
    _dense(t, "pooler", backbone.pooled_dense)
    return config, t


# {model_type: backbone -> (config.json dict, {HF name without the model prefix: array})}
WRITERS = {"bert": bert, "distilbert": distilbert, "roberta": roberta,
           "xlm-roberta": xlm_roberta, "albert": albert}


def hf_backbone(backbone, prefix=False):
    """(config, tensors) of any family's backbone; `prefix` adds the model's HF prefix."""
    family = families.by_backbone(backbone)
    config, tensors = WRITERS[family.model_type](backbone)
    start = family.weights_prefix if prefix else ""
    return config, {start + k: np.ascontiguousarray(v) for k, v in tensors.items()}


def hf_head(classifier):
    """{HF name: array} of the classifier's head (`tfmp.families.HEADS`), by family."""
    family = families.by_backbone(classifier.backbone)
    logits = classifier.output_dense
    t = {}
    if family.head == "pooled":
        _dense(t, "classifier", logits)
    elif family.head == "first_token_tanh":
        _dense(t, "classifier.dense", classifier.get_layer("pooled_dense"))
        _dense(t, "classifier.out_proj", logits)
    else:  # first_token_relu: DistilBERT's pre_classifier
        _dense(t, "pre_classifier", classifier.get_layer("pooled_dense"))
        _dense(t, "classifier", logits)
    return {k: np.ascontiguousarray(v) for k, v in t.items()}
