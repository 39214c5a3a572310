"""`TrainConfig`: the settings of one run, built alike by the CLI, notebooks and Python."""

import dataclasses

from tfmp.errors import UserError


@dataclasses.dataclass
class TrainConfig:
    """Settings of one run. Every default is what `tfmp train` uses without the flag."""

    # Data: "airline", "tweets" or a .csv/.tsv/.jsonl path.
    data: str = "airline"
    text_column: str | None = None  # None: "text"
    label_column: str | None = None  # None: "label" ("sentiment" for built-ins)
    labels: tuple | None = None  # label map in id order; None: from the data
    encoding: str = "utf-8"  # of user files; the built-ins are Latin-1
    on_decode_error: str = "replace"  # or "strict": refuse undecodable bytes
    # Model: a Hugging Face BERT checkpoint dir; None is the bundled all-MiniLM-L6-v2.
    model: str | None = None
    # Precision: auto, float32, mixed_float16 or mixed_bfloat16.
    policy: str = "auto"
    # Layers computed in float32 whatever the policy (paths from `tfmp diagnose`).
    float32_layers: tuple = ()
    epochs: int = 2
    batch_size: int = 32
    seq_len: int = 64  # airline tweets are ~30 WordPiece tokens; 64 truncates <1%
    # Batch texts of similar length together (each batch is padded only to its own
    # longest text): shuffle, sort pools of `length_pool` batches by length, shuffle the
    # batches. On 3,000 airline tweets x 2 epochs, 3 seeds: mean padded width 32.6
    # instead of 48.1 (random batches) and 64 (fixed), test accuracy 82.51% vs 81.03%
    # (+1.5 points, sd of the paired difference 2.9: no loss). Pools of 50 batches pad
    # less (29.8) but are less random (sd 3.7). benchmarks/grouping.py measures it.
    length_grouping: bool = True
    length_pool: int = 8
    lr: float = 5e-5  # peak AdamW learning rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent in linear warmup
    clipnorm: float | None = 1.0  # global-norm clipping of unscaled gradients
    dropout: float = 0.1
    max_train_examples: int | None = None  # cap on the training split only
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    # Loss scaling (mixed_float16 only).
    initial_loss_scale: float = 2.0**15
    dynamic_growth_steps: int = 2000
    min_loss_scale: float = 1.0  # below this, training stops with an error
    # Skip-rate guard (mixed_float16 only): stop when more than this share of the last
    # `skip_window` steps overflowed; a healthy run skips a handful in thousands.
    skip_window: int = 100
    max_skip_share: float = 0.5
    # Checkpoint every this many optimizer steps (and at every epoch end); 0: epoch
    # ends only. A MiniLM checkpoint (weights + AdamW slots) is ~270 MB and ~1 s.
    checkpoint_every: int = 500
    # tf.distribute strategy: auto, none, mirrored, multi_worker or tpu (tfmp.distribute);
    # auto is none on one device. `batch_size` is global: split across the replicas.
    strategy: str = "auto"
    out: str = "runs/run"
    overwrite: bool = False  # replace an existing run directory

    def to_json(self):
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels) if self.labels else None
        d["float32_layers"] = list(self.float32_layers)
        return d

    @classmethod
    def from_json(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise UserError(f"Unknown TrainConfig fields: {', '.join(unknown)}.")
        d = dict(d)
        if d.get("labels"):
            d["labels"] = tuple(d["labels"])
        d["float32_layers"] = tuple(d.get("float32_layers") or ())
        # Saved before --length-pool existed: grouping then sorted pools of 50 batches, and
        # a resumed run must rebuild exactly those batches.
        d.setdefault("length_pool", 50)
        return cls(**d)

    def validate(self):
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (self.length_pool >= 1,
             f"--length-pool must be at least 1, got {self.length_pool}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.seq_len >= 8, f"--seq-len must be at least 8, got {self.seq_len}."),
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}."),
            (self.max_train_examples is None or self.max_train_examples >= 1,
             f"--max-train-examples must be at least 1, got {self.max_train_examples}."),
            (self.checkpoint_every >= 0,
             f"--checkpoint-every must be 0 or more, got {self.checkpoint_every}."),
            (self.on_decode_error in ("replace", "strict"),
             f"--on-decode-error must be 'replace' or 'strict', got {self.on_decode_error!r}."),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
