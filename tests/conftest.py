"""Shared helpers and fixtures: a tiny random BERT, a sentiment CSV, one finished run.

Most tests use a 2-layer, 32-wide BERT so the suite stays fast on 2 CPU cores; only
tests whose point is realism load the bundled all-MiniLM-L6-v2.

Tests that only read a finished run (its run directory, metrics, model, report and
TensorBoard logs) share the session's `mixed_float16_run` (and `float32_run`) instead
of training their own, and those that only read its export share `mixed_float16_export`;
tests that kill, resume or otherwise change a run train their own.
Plain helpers are imported with `from conftest import write_sentiment_csv, read_scalars`.
"""

import csv
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFMP_AUTO_PROBE", "0")

# First, as a user's `import tfmp`: it chooses oneDNN before TensorFlow loads.
import tfmp  # noqa: E402,F401
import keras  # noqa: E402
import pytest  # noqa: E402

# Seconds each test file took (sum of its tests, 2 xdist workers, 2026-12-01, the AVX2
# EPYC, quiet: only the order matters). `make test` hands files to its two workers heaviest
# first (--no-loadscope-reorder keeps this order; xdist's own orders files by test count),
# so that the last files to finish are short ones and both workers end together.
FILE_SECONDS = {
    "test_families.py": 437, "test_notebooks.py": 341, "test_compress.py": 265,
    "test_distribute.py": 257, "test_lora.py": 156, "test_export.py": 155,
    "test_safety.py": 137, "test_export_safety.py": 117, "test_reliability.py": 111,
    "test_train.py": 104, "test_bench.py": 99, "test_bench_memory.py": 79, "test_serve.py": 78,
    "test_xla_warmup.py": 56, "test_fused_matmul.py": 52, "test_adaptive.py": 46,
    "test_models.py": 46, "test_tradeoffs.py": 44, "test_callbacks.py": 35,
    "test_accumulate.py": 29,
}


# Files that must run in the same worker: they share a session fixture too costly to
# build twice (`mixed_float16_export`: ~40 s, which `--dist loadfile` built in both
# workers whenever it gave the two files to different ones).
SAME_WORKER = ({"test_export.py", "test_serve.py"},)


def _unit(name):
    """The files that run with test file `name` in one worker, as a sorted tuple."""
    return tuple(sorted(next((g for g in SAME_WORKER if name in g), {name})))


def pytest_collection_modifyitems(config, items):
    """Heaviest units first (a unit: a file, or a `SAME_WORKER` group, by its summed
    seconds); a unit's tests keep their order; unlisted (light) files last."""
    def weight(item):
        unit = _unit(item.path.name)
        return (-sum(FILE_SECONDS.get(f, 0) for f in unit), unit)
    items.sort(key=weight)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, with each `SAME_WORKER` group one unit of work."""
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler for the mode asked
    from xdist.scheduler import LoadFileScheduling

    class FilesAndGroups(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            folder, name = os.path.split(path)
            return "+".join(os.path.join(folder, f) for f in _unit(name))

    return FilesAndGroups(config, log)


# A small uncased WordPiece vocabulary: specials, letters, and sentiment-ish words.
VOCAB_WORDS = (
    "the a an i you we it is was to of and or not no very so my your flight "
    "plane bag seat crew delay delayed late cancelled great good love thanks "
    "thank bad worst awful hate rude help please service time hours today "
    "@ # ! ? . , ' united jetblue southwestair americanair usairways virginamerica"
).split()
VOCAB = list(
    dict.fromkeys(  # ordered de-duplication: WordPiece refuses repeated tokens
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + VOCAB_WORDS
        + list("abcdefghijklmnopqrstuvwxyz0123456789")
        + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    )
)


def write_tiny_checkpoint(path, num_layers=2, hidden_dim=32, num_heads=2,
                          intermediate_dim=64, max_sequence_length=64, seed=0):
    """Writes a randomly initialised BERT in Hugging Face format to `path`."""
    import keras_hub

    from tfmp.export import huggingface as hf

    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=len(VOCAB),
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            max_sequence_length=max_sequence_length,
        )
        hf.save_checkpoint(backbone, VOCAB, str(path))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(autouse=True)
def _restore_global_policy():
    previous = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(previous)


# --- A sentiment CSV a tiny BERT can learn ----------------------------------------------

# One keyword per class decides the label; the filler words carry no signal.
WORDS = {
    "negative": ["worst", "awful", "rude", "hate", "delayed", "cancelled"],
    "neutral": ["seat", "today", "time", "plane", "flight", "hours"],
    "positive": ["great", "love", "thanks", "good", "thank", "help"],
}
FILLER = ["the", "a", "my", "your", "was", "it", "to", "of", "and"]


def write_sentiment_csv(path, n=360, seed=0):
    """Three classes told apart by one keyword among filler: a tiny BERT learns it."""
    rng = random.Random(seed)
    labels = ["negative"] * (n // 2) + ["neutral"] * (n // 4) + ["positive"] * (n - n // 2 - n // 4)
    rng.shuffle(labels)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for label in labels:
            words = rng.sample(FILLER, 4) + [rng.choice(WORDS[label])]
            rng.shuffle(words)
            w.writerow(["@united " + " ".join(words), label])
    return str(path)


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory):
    """360 rows (288 train, 36 validation, 36 test); read-only, shared by the session."""
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "tweets.csv")


# --- TensorBoard logs -----------------------------------------------------------------


def read_scalars(log_dir):
    """{tag: [(step, value)]} read back with TensorBoard's own event reader."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        if events[0].tensor_proto.dtype == tf.string.as_datatype_enum:
            out[tag] = [(e.step, tf.make_ndarray(e.tensor_proto).item().decode())
                        for e in events]
        else:
            out[tag] = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events]
    return out


# --- One finished run per policy, shared by the tests that only read it -----------------

# 4 epochs of 18 steps (288 training examples / 16): enough for the tiny BERT to learn
# the keyword task well above the majority class (test_train checks it).
RUN_SETTINGS = dict(epochs=4, batch_size=16, seq_len=16, lr=5e-3, seed=1)


def train_shared_run(csv_path, model_dir, out, policy):
    from tfmp.config import TrainConfig
    from tfmp.train import train

    return train(TrainConfig(data=csv_path, model=model_dir, policy=policy, out=str(out),
                             **RUN_SETTINGS), verbose=0)


@pytest.fixture(scope="session")
def mixed_float16_run(sentiment_csv, tiny_bert_dir, tmp_path_factory):
    """A finished mixed_float16 run (train()'s result). Read it; never change it."""
    return train_shared_run(sentiment_csv, tiny_bert_dir,
                            tmp_path_factory.mktemp("shared_runs") / "mixed_float16",
                            "mixed_float16")


@pytest.fixture(scope="session")
def float32_run(sentiment_csv, tiny_bert_dir, tmp_path_factory):
    """The same run under float32. Read it; never change it."""
    return train_shared_run(sentiment_csv, tiny_bert_dir,
                            tmp_path_factory.mktemp("shared_runs") / "float32", "float32")


@pytest.fixture(scope="session")
def mixed_float16_export(mixed_float16_run, tmp_path_factory):
    """(report, path) of `mixed_float16_run` exported with every variant, as `tiny`, alone
    in its directory. test_export and test_serve read it (one export, not one each, when
    xdist gives both files to one process); read it, never change it."""
    from tfmp.export import export

    out_root = tmp_path_factory.mktemp("saved_models")
    report = export(mixed_float16_run.run_dir, out_root=str(out_root), name="tiny")
    return report, os.path.join(out_root, "tiny")


# --- Tiny random checkpoints of the other families (tests/tiny_families.py) -------------

OTHER_FAMILIES = ("distilbert", "roberta", "xlm-roberta", "albert")


@pytest.fixture(scope="session")
def tiny_family_dirs(tiny_bert_dir, tmp_path_factory):
    """{model_type: checkpoint dir} of every family: 2 layers, 32 wide, real trained
    tokenizers (BPE, SentencePiece, WordPiece) in the files each HF class reads."""
    from tiny_families import tokenizer_texts, write_family_checkpoint

    texts = tokenizer_texts(n_airline=2000)
    root = tmp_path_factory.mktemp("families")
    dirs = {f: write_family_checkpoint(f, root / f, texts=texts) for f in OTHER_FAMILIES}
    return {"bert": tiny_bert_dir, **dirs}
