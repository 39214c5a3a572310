"""The transfer set: texts the teacher did not train on, taught by its logits alone.

    texts = choose(config, splits, 3000, LEFT_OUT)   # training-split texts the teacher left out

A teacher's soft targets on the very texts it was fitted to are close to its labels, so
they tell a student little that the labels do not (Hinton et al., 2015, distilled on a
transfer set; DistilBERT and TinyBERT add unlabelled or augmented text). These texts
join the student's training split with no label: their loss is the soft term alone
(`distil.distillation_loss`, `labelled` False), and the training accuracy ignores them.

Sources: `LEFT_OUT`, the training-split texts of the teacher's data that
`max_train_examples` left out (the demo teacher fits 3,000 of 11,710 airline tweets),
or any dataset `tfmp train --data` reads ("tweets", a .csv/.tsv/.jsonl file; its labels
are never read into the loss). Either way no text of the teacher's training, validation
or test split is taken, so validation and test accuracy stay those of unseen text. The
choice is a fixed function of the teacher's seed: every student seed, and a resumed
run, get the same texts.
"""

import dataclasses

import numpy as np

from tfmp import data, readers
from tfmp.errors import InputError, UserError

LEFT_OUT = "left-out"


def _source_texts(config, source):
    """The candidate texts of `source` for the teacher run's `TrainConfig` `config`."""
    if source == LEFT_OUT:
        whole = dataclasses.replace(config, max_train_examples=None)
        return data.prepare_data(whole)[2].train.texts
    try:
        return readers.load_examples(source, text_column=config.text_column,
                                     label_column=config.label_column,
                                     encoding=config.encoding).texts
    except InputError as e:
        raise UserError(f"--transfer-data: {e}") from None


def choose(config, splits, count, source=LEFT_OUT):
    """`count` texts of `source`, none in `splits` (train, validation or test), in order.

    Args:
        config: the teacher run's `TrainConfig` (its data, columns and seed).
        splits: the teacher run's `data.Splits`.
        count: how many; 0 gives [].
        source: `LEFT_OUT`, or a dataset name or file `tfmp.readers.load_examples` reads.

    Raises:
        UserError: `source` has fewer than `count` such texts (duplicates counted once).
    """
    if count == 0:
        return []
    taken = set(splits.train.texts) | set(splits.validation.texts) | set(splits.test.texts)
    candidates = [t for t in dict.fromkeys(_source_texts(config, source)) if t not in taken]
    if len(candidates) < count:
        where = ("training-split texts the teacher left out (its max_train_examples is "
                 f"{config.max_train_examples})" if source == LEFT_OUT else
                 f"texts in {source} outside the teacher's training, validation and test "
                 "splits")
        raise UserError(f"--transfer-examples {count}: there are only {len(candidates)} "
                        f"{where}. Give at most {len(candidates)}, or another --transfer-data.")
    rng = np.random.default_rng([config.seed & 0xFFFFFFFF, 0x7EA5])
    return [candidates[i] for i in np.sort(rng.choice(len(candidates), count, replace=False))]


def extend(split, texts):
    """`split` with `texts` appended: class id 0 (never read), dataset position -1."""
    n = len(texts)
    indices = (None if split.indices is None else
               np.concatenate([split.indices, np.full(n, -1, split.indices.dtype)]))
    return data.Split(list(split.texts) + list(texts),
                      np.concatenate([split.label_ids, np.zeros(n, np.int32)]), indices)
