"""`CompressConfig`: the settings of one compression, built alike by the CLI and Python.

Each field is a setting's name, default and help (`tfmp compress --the-setting`).
What the student trains on (data, splits, seed, sequence length, policy, batch size)
is the teacher run's own: the test split must be the one the teacher never saw.
"""

import dataclasses
import math

from tfmp.config import _setting  # one field-with-help shape for both configs
from tfmp.errors import UserError


@dataclasses.dataclass
class CompressConfig:
    """Settings of one `tfmp compress`. Every default is the command's without the flag."""

    teacher: str = _setting(None, "the finished run to compress")
    out: str = _setting(None, "run directory to write")
    # --- Structured pruning ---
    keep_layers: tuple | None = _setting(
        None, "comma-separated teacher layer indices to keep (0 is the first)")
    drop_layers: int = _setting(
        0, "drop this many encoder layers, chosen by measured loss on training batches")
    ffn_keep: float = _setting(
        1.0, "share of feed-forward neurons kept in each layer, by first-order Taylor score")
    heads_keep: float = _setting(
        1.0, "share of attention heads kept in each layer, by first-order Taylor score")
    prune_vocab: bool = _setting(
        False, "keep only the wordpieces the training split uses (and single characters)")
    importance_examples: int = _setting(
        512, "training examples the importance scores are measured on")
    # --- Sharing and sparsity ---
    share_layers: int = _setting(
        1, "tie groups of this many adjacent kept layers to one set of weights (ALBERT)")
    sparsity: float = _setting(
        0.0, "share of each encoder weight matrix set to zero by magnitude, held in training")
    # --- Distillation and fine-tuning ---
    temperature: float = _setting(2.0, "distillation temperature")
    distil_weight: float = _setting(
        0.5, "weight of the teacher's soft targets in the loss; 0: labels only, no teacher")
    hidden_weight: float = _setting(
        0.0, "weight of matching the teacher's [CLS] hidden state at each kept layer (mean "
        "squared difference); 0: logits only")
    transfer_examples: int = _setting(
        0, "texts the teacher did not train on, added to the training split with the "
        "teacher's soft targets and no label (a transfer set); 0: none")
    transfer_data: str = _setting(
        "left-out", "where the transfer texts come from: left-out (training-split texts the "
        "teacher's --max-train-examples left out), a built-in dataset or a data file (its "
        "labels are not used); never a text of the teacher's train, validation or test split")
    epochs: int | None = _setting(None, "fine-tuning epochs (default: the teacher's)")
    seed: int | None = _setting(
        None, "seed of the student's dropout and batch order (default: the teacher's); the "
        "splits and the pruning plan stay the teacher's")
    lr: float | None = _setting(None, "peak learning rate (default: the teacher's)")
    checkpoint_every: int | None = _setting(
        None, "optimizer steps between checkpoints (default: the teacher's)")
    overwrite: bool = _setting(False, "replace an existing --out")

    def options(self):
        """The fields that decide the student (a resumed run must have the same)."""
        d = dataclasses.asdict(self)
        for k in ("teacher", "out", "overwrite", "checkpoint_every"):
            d.pop(k)
        d["keep_layers"] = list(self.keep_layers) if self.keep_layers is not None else None
        return d

    def validate(self):
        """Raises `UserError` for settings wrong whatever the teacher (checked first)."""
        if not self.teacher:
            raise UserError("Give the run directory to compress (the teacher).")
        if not self.out:
            raise UserError("--out is required (the run directory to write).")
        if self.keep_layers is not None:
            if len(self.keep_layers) == 0:
                raise UserError("--keep-layers keeps no layer: give at least one index "
                                "(e.g. --keep-layers 0,2,4).")
            if self.drop_layers:
                raise UserError("Give --keep-layers or --drop-layers, not both.")
            if len(set(self.keep_layers)) != len(self.keep_layers):
                raise UserError(f"--keep-layers {self.keep_layers} repeats a layer.")
        for name in ("ffn_keep", "heads_keep"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise UserError(f"--{name.replace('_', '-')} must be a fraction in (0, 1], "
                                f"got {value}.")
        checks = [
            (self.drop_layers >= 0, f"--drop-layers must be 0 or more, got {self.drop_layers}."),
            (self.share_layers >= 1,
             f"--share-layers must be 1 or more, got {self.share_layers}."),
            (0 <= self.sparsity < 1, f"--sparsity must be in [0, 1), got {self.sparsity}."),
            (self.temperature > 0 and math.isfinite(self.temperature),
             f"--temperature must be positive, got {self.temperature}."),
            (0 <= self.distil_weight <= 1,
             f"--distil-weight must be in [0, 1], got {self.distil_weight}."),
            (self.hidden_weight >= 0 and math.isfinite(self.hidden_weight),
             f"--hidden-weight must be 0 or more, got {self.hidden_weight}."),
            (self.importance_examples >= 1,
             f"--importance-examples must be 1 or more, got {self.importance_examples}."),
            (isinstance(self.transfer_examples, int) and self.transfer_examples >= 0,
             f"--transfer-examples must be a whole number 0 or more, got "
             f"{self.transfer_examples}."),
            (not self.transfer_examples or self.distil_weight > 0 or self.hidden_weight > 0,
             f"--transfer-examples {self.transfer_examples}: transfer texts have no label, "
             "so with --distil-weight 0 and --hidden-weight 0 they teach nothing; give a "
             "--distil-weight above 0."),
            (bool(self.transfer_data), "--transfer-data is empty: give left-out, a built-in "
             "dataset or a data file."),
            (self.epochs is None or self.epochs >= 1,
             f"--epochs must be at least 1, got {self.epochs}."),
            (self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (self.seed is None or (isinstance(self.seed, int) and self.seed >= 0),
             f"--seed must be a whole number 0 or more, got {self.seed}."),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def check_against(self, depth, heads):
        """Raises `UserError` for settings the teacher (`depth` layers, `heads` heads) refuses."""
        if self.keep_layers is not None:
            bad = [i for i in self.keep_layers if not 0 <= i < depth]
            if bad:
                raise UserError(f"--keep-layers {','.join(map(str, self.keep_layers))}: "
                                f"{bad[0]} is out of range; the teacher has {depth} layers "
                                f"(0 to {depth - 1}).")
        if self.drop_layers >= depth:
            raise UserError(f"--drop-layers {self.drop_layers} would keep no layer: the "
                            f"teacher has {depth}; drop at most {depth - 1}.")
        kept = len(self.keep_layers) if self.keep_layers is not None else depth - self.drop_layers
        if self.share_layers > kept:
            raise UserError(f"--share-layers {self.share_layers} is more than the {kept} "
                            "layers kept.")
        if kept % self.share_layers:
            raise UserError(f"--share-layers {self.share_layers} does not divide the {kept} "
                            "layers kept into equal groups.")
        if round(self.heads_keep * heads) < 1:
            raise UserError(f"--heads-keep {self.heads_keep} keeps no head of {heads}.")
