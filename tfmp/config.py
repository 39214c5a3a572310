"""`TrainConfig`: the settings of one run, built alike by the CLI, notebooks and Python.

Each field is the one place for a setting's name, default and help: `tfmp.cli`
generates the `tfmp train` flags (and the shared `tfmp diagnose` ones) from them, so
`--seq-len` is `TrainConfig.seq_len` everywhere. Also here: which fields may change
when a run is resumed (`RESUMABLE_FIELDS`), and the fingerprint that checks it.
"""

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import types

from tfmp.errors import UserError

# Settings that name a path: the Python API may pass a pathlib.Path for them.
_PATH_FIELDS = ("data", "model", "out")
# What each annotated type accepts, in words (for the message) and as a test. Ints are
# accepted where a float is expected (JSON writes 1.0 as 1 in some hands); bool, although
# an int to Python, is not a number here.
_KINDS = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)),
    float: ("a finite number", lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
            and math.isfinite(v)),
    str: ("a string", lambda v: isinstance(v, str)),
    tuple: ("a list of strings", lambda v: isinstance(v, (tuple, list))
            and all(isinstance(x, str) for x in v)),
}


def _setting(default, help, **cli):
    """A field with its `--flag` help; `cli` holds extra argparse hints (choices, ...)."""
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass
class TrainConfig:
    """Settings of one run. Every default is what `tfmp train` uses without the flag."""

    # --- Data ---
    data: str = _setting("airline", "airline, tweets, or a .csv/.tsv/.jsonl file")
    text_column: str | None = _setting(None, "text column of a data file (default: text)")
    label_column: str | None = _setting(
        None, "label column of a data file (default: label; sentiment for the built-ins)")
    labels: tuple | None = _setting(
        None, "comma-separated label names in id order (default: taken from the data)")
    encoding: str = _setting("utf-8", "data file encoding (the built-ins are Latin-1)")
    on_decode_error: str = _setting(
        "replace", "undecodable bytes: replace and count, or refuse",
        choices=("replace", "strict"))
    # --- Model and precision ---
    model: str | None = _setting(
        None, "Hugging Face BERT checkpoint directory (default: the bundled all-MiniLM-L6-v2)")
    policy: str = _setting("auto", "precision policy; auto picks from the hardware and says why")
    float32_layers: tuple = _setting(
        (), "comma-separated layer paths or patterns to keep in float32 (from `tfmp diagnose`)")
    # Off by default: it changes nothing under float32/bfloat16 compute, and an ordinary
    # run pins nothing (README, "Adaptive precision"); it is the cure for float16 overflow.
    precision_map: str = _setting(
        "none", "adaptive: measure a few batches before training and give each layer short "
        "of float16 range its own policy (float32, or bfloat16 where the hardware has it), "
        "printed with the reason; none: one policy for every layer",
        choices=("none", "adaptive"))
    # 2: on MiniLM the largest activation of 2 batches was within 0.3% of 8's and the pins
    # the same for 1, 2, 4 and 8 (README, "Adaptive precision"); each batch costs ~1.5 steps.
    calibration_batches: int = _setting(
        2, "--precision-map adaptive: training batches measured before the first step")
    # A healthy float16 run skips a handful of steps in thousands; 8 within 50 is a burst
    # (the scale has fallen 256x), well before --max-skip-share stops the run.
    recovery_burst: int = _setting(
        8, "--precision-map adaptive: skipped steps within --recovery-window that make "
        "training diagnose, pin the offending layers, restore the last checkpoint and go "
        "on; 0: off")
    recovery_window: int = _setting(50, "steps within which --recovery-burst counts")
    # --- Batches ---
    epochs: int = _setting(2, "passes over the training split")
    batch_size: int = _setting(32, "global batch size (split across replicas)")
    # Airline tweets are ~30 WordPiece tokens; 64 truncates <1%.
    seq_len: int = _setting(64, "tokens per text after truncation")
    # Batch texts of similar length together (each batch is padded only to its own
    # longest text): shuffle, sort pools of `length_pool` batches by length, shuffle the
    # batches. benchmarks/grouping.py measures padding and accuracy against random
    # batches over several seeds; the README has the latest numbers.
    length_grouping: bool = _setting(
        True, "batch texts of similar length together (fewer padded tokens, same test "
        "accuracy over 3 seeds); --no-length-grouping for fully random batches")
    length_pool: int = _setting(
        8, "with --length-grouping: batches per pool sorted by length (larger pads less, "
        "is less random)")
    # --- Memory (neither changes what is computed: tfmp.memory) ---
    grad_accum: int = _setting(
        1, "micro-batches per --batch-size batch, run one after another, one optimizer "
        "step on their summed gradients: --batch-size 32 --grad-accum 4 trains as "
        "--batch-size 32 with the activations of 8 examples alive at a time")
    remat: bool = _setting(
        False, "keep only each transformer block's input and recompute the rest in the "
        "backward pass: less activation memory (most where sequences are long), for about "
        "one more forward pass of compute")
    # --- Optimizer ---
    lr: float = _setting(5e-5, "peak AdamW learning rate")
    weight_decay: float = _setting(0.01, "decoupled weight decay of matrices")
    warmup_ratio: float = _setting(0.1, "share of all steps spent in linear warmup")
    clipnorm: float | None = _setting(
        1.0, "global-norm clipping of unscaled gradients; 0 turns it off", zero_is_none=True)
    dropout: float = _setting(0.1, "dropout on the pooled output")
    # --- LoRA (tfmp.lora) ---
    lora_rank: int = _setting(
        0, "train rank-R LoRA adapters (float32) on the frozen backbone's --lora-targets, "
        "and the classifier head, instead of every weight; 0: full fine-tuning")
    lora_targets: tuple = _setting(
        ("query", "value"), "with --lora-rank: comma-separated backbone layer names to adapt "
        "(query, key, value, attention_output, feedforward_intermediate_dense, "
        "feedforward_output_dense, pooled_dense)")
    base_int8: bool = _setting(
        False, "with --lora-rank: freeze an int8 base (Keras quantize) under the adapters")
    # --- Splits ---
    max_train_examples: int | None = _setting(None, "cap on the training split only")
    validation_fraction: float = _setting(0.1, "share of the data held out for validation")
    test_fraction: float = _setting(0.1, "share of the data held out for the test report")
    seed: int = _setting(0, "seed of the splits, initialisation, dropout and batch order")
    # --- Loss scaling and guards (mixed_float16 only) ---
    # benchmarks/lossscale.py measures the four rules on a real run; the README has
    # the numbers behind this default.
    loss_scale: str = _setting(
        "dynamic", "dynamic (halve on overflow, double after --dynamic-growth-steps), "
        "hysteresis (halve only at the --loss-scale-hysteresis-th overflow), delayed (from "
        "a rolling max of the unscaled gradients) or a number: a static scale, e.g. 256")
    loss_scale_hysteresis: int = _setting(
        2, "--loss-scale hysteresis: overflows until the scale halves (the halving one counted)")
    loss_scale_window: int = _setting(
        16, "--loss-scale delayed: steps of gradient maxima the scale is set from")
    loss_scale_margin: float = _setting(
        8.0, "--loss-scale delayed: factor kept between the largest scaled gradient and 65504")
    initial_loss_scale: float = _setting(2.0**15, "loss scale at the first step")
    dynamic_growth_steps: int = _setting(
        2000, "clean steps after which the loss scale doubles")
    min_loss_scale: float = _setting(1.0, "below this loss scale, training stops with an error")
    # Stop when more than this share of the last `skip_window` steps overflowed; a
    # healthy run skips a handful in thousands.
    skip_window: int = _setting(100, "steps over which the overflow skip rate is measured")
    max_skip_share: float = _setting(
        0.5, "stop when more than this share of the last --skip-window steps overflowed")
    # Each measurement reads every weight and AdamW slot (~0.3 s for MiniLM).
    lost_update_every: int = _setting(
        200, "steps between lost-update measurements (share of AdamW updates below half "
        "an ulp of their weight, per variable, in TensorBoard); 0: off")
    # One probed forward and backward pass (~2 steps' time) per column.
    headroom_every: int = _setting(
        200, "under a loss scale: steps between columns of the per-layer float16 headroom "
        "image in TensorBoard (precision/headroom); 0: off")
    # --- Run ---
    # A MiniLM checkpoint (weights + AdamW slots) is ~270 MB and ~1 s to write.
    checkpoint_every: int = _setting(
        500, "optimizer steps between checkpoints, besides each epoch end; 0: epoch ends only")
    strategy: str = _setting(
        "auto", "tf.distribute strategy; auto: multi_worker if TF_CONFIG names several "
        "workers, else tpu, else mirrored on 2+ GPUs, else none. --batch-size is the "
        "global batch")
    out: str = _setting("runs/run", "run directory to write (required unless --resume)")
    overwrite: bool = _setting(False, "replace an existing --out")

    def to_json(self):
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels) if self.labels else None
        d["float32_layers"] = list(self.float32_layers)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_json(cls, d, source="the saved config"):
        """The config in `d` (as `to_json` wrote it), checked: a `UserError` names a field
        of the wrong type (a hand-edited config.json), where it came from and what to do."""
        if not isinstance(d, dict):
            raise UserError(f"{source}: expected a JSON object of TrainConfig fields, got "
                            f"{type(d).__name__}. Restore it from the run's config.json.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UserError(f"{source}: unknown TrainConfig fields: {', '.join(unknown)}.")
        d = dict(d)
        if d.get("float32_layers") is None:  # written as null by hand: no pins
            d.pop("float32_layers", None)
        check_types(d, f"{source}: ")
        d["labels"] = tuple(d["labels"]) if d.get("labels") else None
        d["float32_layers"] = tuple(d.get("float32_layers") or ())
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        # Saved before --length-pool existed: grouping then sorted pools of 50 batches, and
        # a resumed run must rebuild exactly those batches.
        d.setdefault("length_pool", 50)
        return cls(**d)

    def validate(self):
        check_types(dataclasses.asdict(self), "")
        check_layer_patterns(self.float32_layers)
        check_loss_scale(self.loss_scale)
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.length_pool >= 1,
             f"--length-pool must be at least 1, got {self.length_pool}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (1 <= self.grad_accum <= self.batch_size,
             f"--grad-accum must be between 1 and --batch-size ({self.batch_size}): each "
             f"micro-batch needs a row; got {self.grad_accum}."),
            (self.seq_len >= 8, f"--seq-len must be at least 8, got {self.seq_len}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}."),
            (self.max_train_examples is None or self.max_train_examples >= 1,
             f"--max-train-examples must be at least 1, got {self.max_train_examples}."),
            (self.checkpoint_every >= 0,
             f"--checkpoint-every must be 0 or more, got {self.checkpoint_every}."),
            (self.loss_scale_hysteresis >= 1 and self.loss_scale_window >= 1
             and self.loss_scale_margin >= 1,
             "--loss-scale-hysteresis and --loss-scale-window must be at least 1, "
             "--loss-scale-margin at least 1."),
            (self.precision_map in ("none", "adaptive") and self.calibration_batches >= 1,
             f"--precision-map must be none or adaptive (got {self.precision_map!r}) and "
             f"--calibration-batches at least 1 (got {self.calibration_batches})."),
            (self.lora_rank >= 0, f"--lora-rank must be 0 (off) or more, got {self.lora_rank}."),
            (not self.lora_rank or (self.lora_targets and all(self.lora_targets)),
             "--lora-targets must name at least one layer (e.g. query,value)."),
            (self.lora_rank or not self.base_int8,
             "--base-int8 freezes an int8 base under LoRA adapters: give --lora-rank R too."),
            (self.on_decode_error in ("replace", "strict"),
             f"--on-decode-error must be 'replace' or 'strict', got {self.on_decode_error!r}."),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


def check_types(values, where):
    """Raises `UserError` for the first of `values` (TrainConfig fields) whose type does not
    match the field's annotation; `where` starts the message (e.g. the file it came from)."""
    for field in dataclasses.fields(TrainConfig):
        if field.name not in values:
            continue
        value, kinds = values[field.name], _annotation_kinds(field.type)
        if value is None and type(None) in kinds:
            continue
        if field.name in _PATH_FIELDS and isinstance(value, os.PathLike):
            continue
        known = [_KINDS[k] for k in kinds if k in _KINDS]
        if not any(test(value) for _, test in known):
            expected = " or ".join([words for words, _ in known]
                                   + ["null"] * (type(None) in kinds))
            raise UserError(
                f"{where}TrainConfig field {field.name!r} (--{field.name.replace('_', '-')}) is "
                f"{value!r:.80} ({type(value).__name__}); expected {expected}. Fix it where it was "
                f'set (in a saved config.json: "epochs": 2, not "2").')


def _annotation_kinds(annotation):
    """(int,) for `int`, (str, NoneType) for `str | None`, ..."""
    if isinstance(annotation, types.UnionType):
        return annotation.__args__
    return (annotation,)


LOSS_SCALE_MODES = ("dynamic", "hysteresis", "delayed")
MAX_LOSS_SCALE = 2.0**24


def check_loss_scale(text):
    """`--loss-scale`: one of `LOSS_SCALE_MODES`, or a static scale (returned as a float)."""
    text = str(text).strip()
    if text in LOSS_SCALE_MODES:
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= MAX_LOSS_SCALE:
        raise UserError(
            f"--loss-scale {text!r}: expected {', '.join(LOSS_SCALE_MODES)} or a static "
            f"scale between 1 and {MAX_LOSS_SCALE:g} (e.g. 256).")
    return value


def check_layer_patterns(patterns):
    """Raises `UserError` for a `--float32-layers` pattern that is not a valid regular
    expression (each is an exact path, a parent path, or a regex on the whole path)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(
                f"--float32-layers: {pattern!r} is not a valid regular expression ({e}). Use a "
                "layer path printed by `tfmp diagnose`, or put a backslash before special "
                r"characters (\( for a literal '(').") from None


# TrainConfig fields that do not change what a run computes: they may differ on resume.
# Every other field (model, data, policy, batch size, sequence length, optimizer,
# seeds, ...) must match, or the resumed run would not be the run that was started.
# `strategy` may change: the batch is global and a checkpoint holds one copy of each
# variable, so a run started on 2 GPUs can resume on 1 (or on 2 hosts).
RESUMABLE_FIELDS = frozenset({
    "out", "overwrite", "min_loss_scale", "skip_window", "max_skip_share",
    "checkpoint_every", "strategy", "lost_update_every", "headroom_every",
    # Same gradients (bitwise; to float32 rounding): a run short of memory may resume
    # with them.
    "remat", "grad_accum",
})


def result_fields(config):
    """The `TrainConfig` fields (as JSON) that change the result of a run."""
    d = config.to_json()
    return {k: d[k] for k in sorted(d) if k not in RESUMABLE_FIELDS}


def config_hash(config):
    text = json.dumps(result_fields(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_differences(saved, given):
    """Names and values of the result-changing fields where `given` differs from `saved`."""
    a, b = result_fields(saved), result_fields(given)
    return [f"{k}: {a[k]!r} in the checkpoint, {b.get(k)!r} now" for k in a if a[k] != b.get(k)]
