"""One export variant as data: the registry row every variant module defines.

    Variant(name="tflite_int8", path="tflite/model_int8.tflite", write=..., read=...,
            gate=Gate(min_agreement=0.98), inputs="tokens")

`write(ctx)` writes the variant's files at `ctx.path` (a `Context`); `read(path)`
loads them back as a predictor, a function from a batch (raw strings when `inputs`
is "texts", int32 token arrays when "tokens") to float32 probabilities, which the
pipeline measures against the Keras model. This module sits below both the variant
modules and the pipeline, so neither has to import the other's registry.
"""

import dataclasses
import os
from typing import Callable

import numpy as np

from tfmp.export.gate import Gate

INPUTS = ("texts", "tokens")
# The staging subdirectory the tokenizer's files are written to for the variants.
TOKENIZER_DIRECTORY = ".tokenizer"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of the export registry (`tfmp.export.pipeline.REGISTRY`)."""

    name: str  # the key in `export_report.json` and in `--variants`
    path: str  # relative to the export directory
    write: Callable  # write(ctx: Context) -> None, files under ctx.path
    read: Callable  # read(path) -> predictor(batch) -> float32 [n, classes]
    gate: Gate
    inputs: str  # what the predictor takes: one of INPUTS
    # Variants exported with this one whenever it is (e.g. the size reference of its gate).
    requires: tuple = ()
    # How the predictor measures the files, when not by running them as shipped.
    measured_with: str | None = None
    # check(label_names) -> None: refuses (UserError) names the files cannot hold,
    # called before any work so a bad name costs nothing (e.g. labels.txt's line breaks).
    check: Callable | None = None
    # skip(float32_classifier) -> str | None: why the variant does not apply to this
    # model (None: it does). A skipped variant writes nothing; the report's "skipped"
    # holds the reason (e.g. tflite_sparse on a model without pruned zeros).
    skip: Callable | None = None

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"{self.name}: inputs must be one of {INPUTS}, got {self.inputs!r}")


@dataclasses.dataclass(frozen=True)
class Context:
    """What a variant's `write` gets: the models, the labels and where to write."""

    classifier: object  # the run's classifier, under its own policy
    float32: object  # the same weights rebuilt under float32 (or `classifier` itself)
    label_names: tuple
    staging: str  # the hidden directory the export is assembled in
    variants: tuple  # every `Variant` of this export, in export order
    variant: Variant | None = None  # the one being written
    calibration: tuple = ()  # texts a variant may tune itself on (the validation split)

    @property
    def path(self):
        """Where the variant being written goes."""
        return self.where(self.variant)

    def where(self, variant):
        return os.path.join(self.staging, variant.path)

    @property
    def tokenizer_directory(self):
        """Where the pipeline writes the tokenizer's files before any variant (removed
        after the last): `families.write_tokenizer_files`."""
        return os.path.join(self.staging, TOKENIZER_DIRECTORY)

    @property
    def tokenizer_files(self):
        """The tokenizer's files (vocab.txt; vocab.json, merges.txt; a SentencePiece model)."""
        from tfmp import families

        family = families.by_backbone(self.classifier.backbone)
        return [os.path.join(self.tokenizer_directory, f) for f in family.tokenizer_files]

    @property
    def vocabulary_file(self):
        """The first of `tokenizer_files` (a BERT's vocab.txt)."""
        return self.tokenizer_files[0]


def softmax(logits):
    """float32 probabilities of `logits`, computed in float64 (for logits readers)."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
