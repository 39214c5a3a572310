"""Tiny random checkpoints of every family, with real tokenizers trained here.

    write_family_checkpoint("roberta", path)     # config.json, model.safetensors, vocab.json, ...
    tokenizer_texts()                            # airline tweets + the multilingual sample

Offline there are no real RoBERTa, XLM-R, ALBERT or DistilBERT tokenizers, so each is
trained here the way its authors built theirs: a byte-level BPE (`tokenizers`) for
RoBERTa, SentencePiece unigram models for XLM-R (with fairseq's ids: <s> <pad> </s>
<unk> first, `sentencepiece.bpe.model`) and ALBERT (`spiece.model`, lowercased text,
<pad> <unk> [CLS] [SEP] [MASK] first), WordPiece for DistilBERT (uncased, as
distilbert-base-uncased). Each is trained on airline tweets plus `MULTILINGUAL`, and
written in the files both the Hugging Face tokenizer class and keras-hub's converter
read; `tokenizer.json` is written by transformers itself (`save_pretrained`), as a
Hub checkpoint has it. The weights are a randomly initialised keras-hub backbone
written with `tfmp.export.hfweights` (XLM-R then gets a non-zero token-type row,
moved out of its position table, so that loading must fold it back as keras-hub does).
"""

import io
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MULTILINGUAL = os.path.join(HERE, "data", "multilingual.txt")
SIZES = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64)


def multilingual_texts():
    with open(MULTILINGUAL, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def airline_texts():
    from tfmp.readers import load_examples

    return list(load_examples("airline").texts)


def tokenizer_texts(n_airline=4000):
    """What the tokenizers are trained on: `n_airline` tweets and the multilingual sample."""
    return airline_texts()[:n_airline] + multilingual_texts() * 3


def _train_wordpiece(texts, directory, vocab_size):
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(lowercase=True, strip_accents=None)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t, _ in vocab))
    from transformers import DistilBertTokenizerFast

    DistilBertTokenizerFast.from_pretrained(directory, do_lower_case=True).save_pretrained(
        directory)
    return len(vocab)


def _train_bpe(texts, directory, vocab_size):
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=[
        "<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer.save_model(directory)  # vocab.json, merges.txt
    from transformers import RobertaTokenizerFast

    RobertaTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    return tokenizer.get_vocab_size()


def _train_sentencepiece(texts, path, vocab_size, **specials):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=0.9995, normalization_rule_name="nmt_nfkc",
        num_threads=1, minloglevel=2, hard_vocab_limit=False, **specials)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return spm.SentencePieceProcessor(model_file=path).get_piece_size()


def _xlmr_tokenizer(texts, directory, vocab_size):
    path = os.path.join(directory, "sentencepiece.bpe.model")
    pieces = _train_sentencepiece(texts, path, vocab_size, unk_id=0, bos_id=1, eos_id=2,
                                  pad_id=-1)
    from transformers import XLMRobertaTokenizerFast

    XLMRobertaTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    return pieces + 2  # fairseq: <pad> added after <s>, <mask> at the end


def _albert_tokenizer(texts, directory, vocab_size):
    path = os.path.join(directory, "spiece.model")
    # ALBERT's authors lowercased the text they trained on (HF's tokenizer lowercases too).
    pieces = _train_sentencepiece([t.lower() for t in texts], path, vocab_size, pad_id=0,
                                  unk_id=1, bos_id=2, eos_id=3, bos_piece="[CLS]",
                                  eos_piece="[SEP]", control_symbols=["[MASK]"])
    from transformers import AlbertTokenizerFast

    AlbertTokenizerFast.from_pretrained(directory).save_pretrained(directory)
    return pieces


TOKENIZERS = {"distilbert": _train_wordpiece, "bert": _train_wordpiece,
              "roberta": _train_bpe, "xlm-roberta": _xlmr_tokenizer,
              "albert": _albert_tokenizer}


def write_tokenizer(model_type, directory, texts=None, vocab_size=2000):
    """Trains `model_type`'s tokenizer into `directory`; returns the vocabulary size."""
    os.makedirs(directory, exist_ok=True)
    texts = tokenizer_texts() if texts is None else texts
    return TOKENIZERS[model_type](texts, directory, vocab_size)


def _backbone(model_type, vocabulary_size, max_sequence_length):
    import keras_hub

    common = dict(vocabulary_size=vocabulary_size, max_sequence_length=max_sequence_length,
                  **SIZES)
    if model_type == "distilbert":
        return keras_hub.models.DistilBertBackbone(**common)
    if model_type == "roberta":
        return keras_hub.models.RobertaBackbone(**common)
    if model_type == "xlm-roberta":
        return keras_hub.models.XLMRobertaBackbone(**common)
    if model_type == "albert":
        # 2 layers sharing 1 group, with a factorised 16-wide embedding (ALBERT's two ideas).
        return keras_hub.models.AlbertBackbone(embedding_dim=16, num_groups=1,
                                               num_inner_repetitions=1, **common)
    return keras_hub.models.BertBackbone(**common)


def write_family_checkpoint(model_type, path, max_sequence_length=64, seed=0, texts=None,
                            vocab_size=2000):
    """A random `model_type` checkpoint in Hugging Face format, with a trained tokenizer."""
    import keras
    from safetensors.numpy import save_file

    from tfmp import files
    from tfmp.export import hfweights

    path = str(path)
    vocabulary_size = write_tokenizer(model_type, path, texts, vocab_size)
    keras.utils.set_random_seed(seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        backbone = _backbone(model_type, vocabulary_size, max_sequence_length)
        # With the model prefix ("roberta."), as the Hub's ...ForMaskedLM checkpoints are.
        config, tensors = hfweights.hf_backbone(backbone, prefix=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    if model_type == "xlm-roberta":
        # As in a real XLM-R: token type 0 has its own (non-zero) row.
        row = np.random.default_rng(seed).normal(0, 0.02, (1, SIZES["hidden_dim"]))
        tensors["roberta.embeddings.token_type_embeddings.weight"] = row.astype(np.float32)
        tensors["roberta.embeddings.position_embeddings.weight"][2:] -= row[0].astype(np.float32)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    files.write_json(os.path.join(path, "config.json"), config)
    return path
