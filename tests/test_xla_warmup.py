"""The XLA warm-up compiles the fused GELU for exactly the batch shapes training meets,
through the concrete functions the training step itself calls (`tfmp.xla_warmup`).

What it buys (a new batch width costs the step 76-95 ms of compiling without it) is
measured side by side in the README (issue 14), not timed here.
"""

import dataclasses

import numpy as np
import pytest

from tfmp import data, models, xla_kernels, xla_warmup
from tfmp.config import TrainConfig
from tfmp.train import train


@pytest.fixture(scope="module")
def varied_csv(tmp_path_factory):
    """Texts of 1 to 16 words (2-18 tokens), so batches have many widths."""
    import csv
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("varied") / "texts.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(300):
            label = ("negative", "neutral", "positive")[i % 3]
            words = [rng.choice(("late", "seat", "great", "the", "a", "flight"))
                     for _ in range(rng.randint(1, 16))]
            w.writerow([" ".join(words), label])
    return str(path)


@pytest.fixture(scope="module")
def featured(varied_csv, tiny_bert_dir):
    """(training split with token features, its token lengths, the preprocessor)."""
    _, _, splits = data.prepare_data(TrainConfig(data=varied_csv, seed=3))
    model = models.load_classifier(tiny_bert_dir, num_classes=3, sequence_length=16)
    features, lengths = data.tokenize(splits.train.texts, model.preprocessor)
    return dataclasses.replace(splits.train, features=features), lengths, model.preprocessor


def _met(split, batch_size, seed, epochs, lengths, steps_per_epoch, start_step=0):
    """(batch, width) of every batch `fit` gets, cut as the model cuts it, in order."""
    shapes = []
    for epoch in range(start_step // steps_per_epoch, epochs):
        skip = start_step % steps_per_epoch if epoch == start_step // steps_per_epoch else 0
        for x, _ in data.epoch_dataset(split, batch_size, seed, epoch, skip, lengths=lengths):
            width = data.trim_padding(x)["token_ids"].shape
            shapes.append((int(width[0]), int(width[1])))
    return list(dict.fromkeys(shapes))


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("start_step", [0, 11])
def test_batch_shapes_are_those_training_meets_in_its_order(featured, grouped, start_step):
    split, lengths, preprocessor = featured
    batch_size, epochs = 16, 3
    steps = -(-len(split) // batch_size)
    expected = _met(split, batch_size, 5, epochs, lengths if grouped else None, steps,
                    start_step)
    assert len(expected) >= 2 and any(b < batch_size for b, _ in expected)  # a partial one too
    got = xla_warmup.batch_shapes(split, batch_size, 5, epochs, start_step,
                                  lengths if grouped else None, seq_len=16)
    assert got == expected
    if grouped:  # without features (texts past the memory cap) the lengths give them
        texts_only = dataclasses.replace(split, features=None)
        assert xla_warmup.batch_shapes(texts_only, batch_size, 5, epochs, start_step,
                                       lengths, seq_len=16) == expected
    assert xla_warmup.batch_shapes(dataclasses.replace(split, features=None), batch_size, 5,
                                   epochs, start_step, None, seq_len=16) == []


def test_eval_shapes_are_those_validation_and_test_meet(featured, tiny_bert_dir):
    split, _, preprocessor = featured
    halves = split.take(np.arange(0, len(split), 2)), split.take(np.arange(1, len(split), 2))
    expected = {}
    for part in halves:  # as `fit`'s validation and `tfmp.scoring.evaluate` batch them
        ds = data.make_dataset(data.by_length(part, preprocessor), None, 24)
        for x, _ in ds:
            shape = data.trim_padding(x)["token_ids"].shape
            expected.setdefault((int(shape[0]), int(shape[1])), None)
    expected = list(expected)
    assert len(expected) >= 4 and any(b < 24 for b, _ in expected)
    assert xla_warmup.eval_shapes(halves, 24) == expected
    assert xla_warmup.eval_shapes(halves, 24, skip=expected[1:]) == expected[:1]
    assert xla_warmup.eval_shapes([dataclasses.replace(halves[0], features=None)], 24) == []


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_the_step_calls_the_kernels_the_warmup_compiled(varied_csv, tiny_bert_dir,
                                                        tmp_path, monkeypatch, policy, caplog):
    started = []
    begin = xla_warmup.XlaWarmup.on_train_begin

    def record(self, logs=None):
        begin(self, logs)
        started.append(self)

    monkeypatch.setattr(xla_warmup.XlaWarmup, "on_train_begin", record)
    # Fresh kernels: the process's own may hold concrete functions that earlier tests
    # traced in other contexts (eagerly, under another strategy), which this run's step
    # would neither make nor call.
    monkeypatch.setattr(xla_kernels, "_KERNELS", {})
    train(TrainConfig(data=varied_csv, model=tiny_bert_dir, policy=policy, epochs=1,
                      batch_size=16, seq_len=16, max_train_examples=96,
                      out=str(tmp_path / "run")), verbose=0)
    thread = started[0].thread
    thread.join()
    assert len(started) == 1 and thread.error is None
    dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}[policy]
    assert [d for _, d in thread.signatures] == [dtype]
    assert len(thread.shapes) >= 3 and len(thread.forward_shapes) >= 2
    assert len(thread.decays) >= 2 and {d for _, d in thread.decays} == {"float32"}
    assert thread.compiled == len(thread.shapes) + len(thread.forward_shapes) + len(thread.decays)
    assert not set(thread.shapes) & set(thread.forward_shapes)
    # One decay function per shape, by design: TensorFlow must not call that retracing.
    # (Keras' own test function, traced per batch width, still draws the warning.)
    assert not [r for r in caplog.records if "triggered tf.function retracing" in r.getMessage()
                and "_compile_decays" in r.getMessage()]
    # The step traced no GELU of its own for these layers: every concrete function for
    # their (units, dtype) takes (None, None, units), the warm-up's, so the compile
    # cache (keyed by function and shapes) served the step what the thread compiled.
    (units, _), = thread.signatures
    forward, backward = xla_kernels.gelu_kernels()
    for kernel in (forward, backward):
        specs = [c.structured_input_signature[0][0] for c in kernel._list_all_concrete_functions()]
        mine = [s for s in specs if s.shape[-1] == units and s.dtype.name == dtype]
        assert [s.shape.as_list() for s in mine] == [[None, None, units]], specs
    # Likewise the weight decay: one concrete function per decayed variable's shape, the
    # warm-up's (a variable passed in, not its value, would trace another).
    specs = [c.structured_input_signature[0]
             for c in xla_kernels.decay_kernel()._list_all_concrete_functions()]
    for shape, dtype in thread.decays:
        mine = [(v.dtype.name, a.shape.as_list(), a.dtype.name)
                for v, a in specs if v.shape.as_list() == list(shape)]
        assert mine == [(dtype, [], dtype)], specs


def test_a_stopped_warmup_compiles_nothing_more():
    compiler = xla_warmup._Compiler([(8, "float32")], [(2, w) for w in range(2, 40, 2)])
    compiler.stopping.set()
    compiler.start()
    compiler.join()
    assert compiler.compiled == 0 and compiler.error is None
    assert np.all(np.diff([w for _, w in compiler.shapes]) > 0)
