"""Shared fixtures: tiny random BERT checkpoints in Hugging Face format.

Most tests use a 2-layer, 32-wide BERT so the suite stays fast on 2 CPU cores; only
tests whose point is realism load the bundled all-MiniLM-L6-v2.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFMP_AUTO_PROBE", "0")

import keras  # noqa: E402
import pytest  # noqa: E402

# A small uncased WordPiece vocabulary: specials, letters, and sentiment-ish words.
WORDS = (
    "the a an i you we it is was to of and or not no very so my your flight "
    "plane bag seat crew delay delayed late cancelled great good love thanks "
    "thank bad worst awful hate rude help please service time hours today "
    "@ # ! ? . , ' united jetblue southwestair americanair usairways virginamerica"
).split()
VOCAB = list(
    dict.fromkeys(  # ordered de-duplication: WordPiece refuses repeated tokens
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + WORDS
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
