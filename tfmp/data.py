"""Labelled text examples: naming their labels, splitting them, batching them.

Reading files is in `tfmp.readers`; `load_examples` is re-exported here.

Every problem with an input file is an `InputError` that names the file, the row (CSV/TSV: the
header is row 1 and row N is the N-th record, which is the line number unless a quoted field
spans lines; JSONL: the line number), the column, and what to do about it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import unicodedata
from typing import Sequence

import numpy as np

from tfmp import files
from tfmp.errors import InputError
from tfmp.grouping import epoch_order, length_grouped_order  # noqa: F401  (re-exported)
from tfmp.readers import (  # noqa: F401  (re-exported)
    AIRLINE_HANDLES, BUILTIN_DATASETS, Examples, _listed, _MAX_LISTED, _SHORT, _read_bytes,
    load_examples)
from tfmp.tokens import (  # noqa: F401  (re-exported)
    TOKEN_KEYS, even_width, token_lengths, tokenize, trim_padding)

# What a label name may not hold: labels.txt has one name per line (any line break that
# Python's splitlines knows would shift the class ids after it), and labels.json is UTF-8,
# which cannot hold an unpaired surrogate.
_UNPRINTABLE = {"Cc": "a control character", "Zl": "a line separator",
                "Zp": "a paragraph separator", "Cs": "an unpaired surrogate"}


def label_problem(name: str) -> str | None:
    """Why `name` cannot be a label name (e.g. "holds a control character ('\\n', U+000A)"), or None."""
    for c in name:
        kind = _UNPRINTABLE.get(unicodedata.category(c))
        if kind:
            return f"holds {kind} ({c!r}, U+{ord(c):04X})"
    return None


def check_label_names(labels: Sequence[str], source: str, rows: Sequence[int]) -> None:
    """Raises `InputError` naming the rows whose label cannot be a label name (`label_problem`)."""
    problems = {name: label_problem(name) for name in set(labels)}
    bad = [i for i, name in enumerate(labels) if problems[name]]
    if bad:
        name = labels[bad[0]]
        raise InputError(
            f"{source}: row {rows[bad[0]]}: label {name!r:.80} {problems[name]}; label names are "
            f"written one per line (labels.txt), so they must be printable. Fix the label on "
            f"that row ({len(bad)} row(s) in all: rows {_listed([rows[i] for i in bad])}).")


class LabelMap:
    """The order of label names: class id i is `names[i]`.

    Examples:
        >>> LabelMap.from_labels(["positive", "negative", "neutral"]).names
        ('negative', 'neutral', 'positive')
    """

    def __init__(self, names: Sequence[str]):
        names = tuple(str(n) for n in names)
        duplicates = sorted(n for n, c in collections.Counter(names).items() if c > 1)
        if duplicates:
            raise InputError(f"Label names must be unique; repeated: {duplicates}. Pass each label once to --labels.")
        if len(names) < 2 or any(not n.strip() for n in names):
            raise InputError(f"A label map needs at least 2 non-empty names, got "
                             f"{_SHORT.repr(list(names))}.")
        for name, problem in ((n, label_problem(n)) for n in names):
            if problem:
                raise InputError(f"Label name {name!r:.80} {problem}; label names are written one "
                                 "per line (labels.txt): pass printable names.")
        self.names = names
        self._ids = {n: i for i, n in enumerate(names)}

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def ids(self, labels: Sequence[str], source: str = "", rows: Sequence[int] | None = None) -> np.ndarray:
        """Class ids (int32) of `labels`; `rows` are the file rows named when a label is unknown."""
        labels = [str(label) for label in labels]
        unknown = [i for i, label in enumerate(labels) if label not in self._ids]
        if unknown:
            values = sorted({labels[i] for i in unknown})
            where = [rows[i] for i in unknown] if rows else unknown
            noun = "rows" if rows else "positions"
            raise InputError(
                f"{source or 'labels'}: {len(unknown)} label(s) not in the label map: "
                f"{_SHORT.repr(values[:_MAX_LISTED])}{' ...' if len(values) > _MAX_LISTED else ''} "
                f"({noun} {_listed(where)}). Known labels: {_SHORT.repr(list(self.names))}. "
                f"Fix those rows, or pass --labels name1,name2,... to set the label map."
            )
        return np.fromiter((self._ids[label] for label in labels), dtype=np.int32, count=len(labels))

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> LabelMap:
        names = sorted({str(label) for label in labels})
        # Sentiment reads naturally from bad to good; any other set is simply sorted.
        if set(names) == {"negative", "neutral", "positive"}:
            names = ["negative", "neutral", "positive"]
        return cls(names)

    def to_json(self) -> dict:
        return {"names": list(self.names)}

    @classmethod
    def from_json(cls, d: dict, source: str = "label map") -> LabelMap:
        if not isinstance(d, dict) or not isinstance(d.get("names"), list):
            raise InputError(
                f'{source}: expected a JSON object like {{"names": ["negative", ...]}}, got {d!r:.200}.')
        return cls(d["names"])

    def save(self, path: str | os.PathLike) -> None:
        # Atomic: a crash never leaves a half-written map.
        files.write_atomic(path, json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LabelMap:
        text = _read_bytes(pathlib.Path(path), os.fspath(path)).decode("utf-8", errors="replace")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{os.fspath(path)}: line {e.lineno}: not valid JSON ({e.msg}).") from None
        return cls.from_json(d, os.fspath(path))

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelMap) and self.names == other.names

    def __hash__(self) -> int:
        return hash(self.names)

    def __repr__(self) -> str:
        return f"LabelMap({list(self.names)!r})"


@dataclasses.dataclass
class Split:
    """One part of a dataset: texts, their class ids, and their positions in the full dataset."""

    texts: list[str]
    label_ids: np.ndarray  # int32, one per text
    indices: np.ndarray | None = None  # positions in the texts given to `split_examples`
    # {"token_ids": int [n, width], ...} once a run tokenized the texts (`tokenize`)
    features: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.label_ids = np.asarray(self.label_ids, dtype=np.int32).reshape(-1)
        if len(self.texts) != len(self.label_ids):
            raise ValueError(f"Split has {len(self.texts)} texts but {len(self.label_ids)} label ids.")

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, order) -> Split:
        """The examples at positions `order`, in that order (features and indices too)."""
        order = np.asarray(order, dtype=np.int64)
        return Split([self.texts[i] for i in order], self.label_ids[order],
                     None if self.indices is None else np.asarray(self.indices)[order],
                     None if self.features is None else
                     {k: v[order] for k, v in self.features.items()})


@dataclasses.dataclass
class Splits:
    train: Split
    validation: Split
    test: Split


def split_examples(
    texts: Sequence[str],
    label_ids: Sequence[int] | np.ndarray,
    *,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_train_examples: int | None = None,
) -> Splits:
    """Seeded, stratified train/validation/test split; each split keeps the dataset's order.

    `max_train_examples` subsamples only the training split (stratified, seeded), so a capped
    run is evaluated on exactly the validation and test examples of an uncapped one.
    """
    from sklearn.model_selection import train_test_split

    texts, label_ids = list(texts), np.asarray(label_ids, dtype=np.int32).reshape(-1)
    if len(texts) != len(label_ids):
        raise ValueError(f"split_examples got {len(texts)} texts but {len(label_ids)} label ids.")
    if not (0 < test_fraction < 1 and 0 <= validation_fraction < 1 and validation_fraction + test_fraction < 1):
        raise InputError(
            f"Need 0 < test fraction < 1, 0 <= validation fraction < 1 and their sum < 1; got test "
            f"{test_fraction}, validation {validation_fraction}. Fix --test-fraction / --validation-fraction."
        )
    if max_train_examples is not None and max_train_examples < 1:
        raise InputError(f"max_train_examples must be at least 1, got {max_train_examples}.")
    classes, counts = np.unique(label_ids, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist()))
    # sklearn needs 2 of every class to stratify one cut, and we cut twice when validating.
    need = 3 if validation_fraction > 0 else 2
    too_few = InputError(
        f"Too few examples to split: found {len(texts)} with per-class counts (label id: count) "
        f"{per_class}. A stratified train/validation/test split needs at least {need} examples of "
        f"every class and at least {len(classes)} (one per class) in every split. Add examples, "
        f"drop rare classes, or change --validation-fraction / --test-fraction / --max-train-examples."
    )
    if len(texts) == 0 or counts.min() < need or len(classes) < 2:
        raise too_few
    index = np.arange(len(texts))
    empty = np.zeros(0, dtype=np.int64)
    try:
        train, test = train_test_split(index, test_size=test_fraction, stratify=label_ids, random_state=seed)
        validation = empty
        if validation_fraction > 0:
            train, validation = train_test_split(train, test_size=validation_fraction / (1 - test_fraction),
                                                 stratify=label_ids[train], random_state=seed)
        if max_train_examples is not None and max_train_examples < len(train):
            train, _ = train_test_split(train, train_size=max_train_examples,
                                        stratify=label_ids[train], random_state=seed)
    except ValueError as e:  # sklearn's message speaks of its arguments, not of the user's data
        raise too_few from e

    def part(idx):
        idx = np.sort(idx)
        return Split([texts[i] for i in idx], label_ids[idx], idx)

    return Splits(train=part(train), validation=part(validation), test=part(test))


EVAL_BATCH_SIZE = 64  # validation and test scores (forward only)


def make_dataset(split: Split, preprocessor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 trim: bool = True, drop_remainder: bool = False):
    """A `tf.data.Dataset` of batches `(texts, label_ids)`, or of preprocessed `(x, y)`.

    With `preprocessor=None` the batches hold raw strings, or the split's `features`:
    a keras-hub classifier's `fit`/`evaluate`/`predict` map their own preprocessor
    over them (`tfmp.BertClassifier` takes features as they are and trims the padding).
    With a preprocessor, batches are tokenized here, and with `trim` each is cut to
    its longest sequence (`trim_padding`).

    tf.data's autotuning is off: with it, a spent iterator's teardown at the end of a
    `fit` waited 6-36 s in half of the demo's runs (README, issue 14).
    """
    import keras  # here: reading and checking data does not pay for starting TensorFlow
    import tensorflow as tf

    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}.")
    if len(split) == 0:
        raise InputError("Cannot make a dataset from an empty split; give it a non-zero fraction or add examples.")
    if drop_remainder and len(split) < batch_size:
        raise InputError(
            f"The split has {len(split)} examples, fewer than one batch of {batch_size}, and the last "
            f"partial batch is dropped; lower --batch-size or add examples."
        )
    labels = tf.constant(split.label_ids, dtype=tf.int32)
    if split.features is not None:  # tokenized once: no tokenizer graph in this pipeline
        ds = tf.data.Dataset.from_tensor_slices((split.features, labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(split.texts, tf.string), labels))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if preprocessor is not None and split.features is not None:
        ds = ds.map(lambda x, y: (trim_padding(x) if trim else x, y))
    elif preprocessor is not None:
        def preprocess(texts, labels):
            x, y, weight = keras.utils.unpack_x_y_sample_weight(preprocessor(texts, labels))
            return keras.utils.pack_x_y_sample_weight(trim_padding(x) if trim else x, y, weight)

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def by_length(split, preprocessor, lengths=None):
    """`split` reordered shortest text first, for validation during training and for
    test scores (`tfmp.scoring`): each batch is trimmed to its longest text, so
    neighbours of similar length pad less, and the scores do not depend on the order.
    The demo's validation: 15.0 s -> 8.6 s; its test `predict`: 11.0 s -> 5.8 s."""
    if len(split) < 2 or (preprocessor is None and split.features is None):
        return split
    if lengths is None and split.features is not None:  # the width each text pads to
        lengths = split.features["padding_mask"].sum(axis=1)
    lengths = token_lengths(split.texts, preprocessor) if lengths is None else lengths
    return split.take(np.argsort(lengths, kind="stable"))


def epoch_dataset(split, batch_size, seed, epoch, skip=0, lengths=None, pool_batches=8):
    """The batches of `epoch`, minus the first `skip`.

    The order is a fixed function of (seed, epoch), not of how many times a dataset
    was iterated (as `shuffle(reshuffle_each_iteration=True)` is), so a resumed run
    trains on exactly the batches the interrupted one had not reached. With token
    `lengths`, batches group texts of similar length (`length_grouped_order`).
    """
    order = epoch_order(len(split), batch_size, seed, epoch, lengths, pool_batches)
    return make_dataset(split.take(order), None, batch_size).skip(skip)


def prepare_data(config):
    """Loads, labels and splits the data of a `TrainConfig`: (examples, label_map, splits)."""
    examples = load_examples(
        config.data,
        text_column=config.text_column,
        label_column=config.label_column,
        encoding=config.encoding,
        on_decode_error=config.on_decode_error,
    )
    check_label_names(examples.labels, examples.source, examples.rows)
    try:
        if config.labels:
            label_map = LabelMap(config.labels)
        else:
            label_map = LabelMap.from_labels(examples.labels)
        label_ids = label_map.ids(examples.labels, source=examples.source, rows=examples.rows)
        splits = split_examples(
            examples.texts,
            label_ids,
            validation_fraction=config.validation_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
            max_train_examples=config.max_train_examples,
        )
    except InputError as e:  # one label only, too few examples: say which file holds them
        if str(e).startswith(f"{examples.source}: "):
            raise
        raise InputError(f"{examples.source}: {e}") from None
    return examples, label_map, splits
