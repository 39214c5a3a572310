"""Tokenizer parity: tfmp's in-graph token ids against Hugging Face's, for every family.

    python benchmarks/tokenizer_parity.py                    # all families, all texts
    python benchmarks/tokenizer_parity.py --families albert --max-texts 500
    python benchmarks/tokenizer_parity.py --model roberta=/path/to/roberta-base

For each family: the checkpoint's tokenizer as tfmp builds it (keras-hub's, in the
TensorFlow graph as tf.data and the SavedModel run it, `tfmp.families.build_tokenizer`), as transformers builds it
(`AutoTokenizer.from_pretrained`, specials included), and as `tfmp predict` runs it
without TensorFlow (`tfmp.serve.tokenizers`, from the files `tfmp export` writes).
Texts: the 14,638 airline tweets and `tests/data/multilingual.txt` (Chinese, Arabic,
Japanese, Korean, Cyrillic, Hindi, Hebrew, Thai, accents, emoji with modifiers and
joiners, mixed case, URLs, @mentions, full-width forms, combining marks). Ids are
compared whole (no truncation): a text counts as identical only if every id matches.

Checkpoints: BERT is the bundled all-MiniLM-L6-v2 (a real tokenizer); the others
have no real tokenizer offline, so each is trained here as its authors built theirs
(`tests/tiny_families.py`: byte-level BPE for RoBERTa, SentencePiece unigram with
fairseq ids for XLM-R, lowercased SentencePiece for ALBERT, uncased WordPiece for
DistilBERT) on 4,000 tweets and the multilingual sample. `--model TYPE=DIR` measures a
real checkpoint instead.
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "albert")


def graph_ids(model_dir, texts, batch_size=512):
    """[[ids]] of tfmp's in-graph tokenizer, packed as the preprocessor packs (start/end)."""
    import tensorflow as tf

    from tfmp import families

    family = families.family_of(model_dir)
    tokenizer = families.build_tokenizer(family, model_dir)
    settings = _specials(family, tokenizer)
    # In a tf.function, as in tf.data and the SavedModel: called eagerly, keras-hub's
    # tokenizers take another (Python) path, with other splitting rules.
    graph = tf.function(lambda x: tokenizer(x))
    out = []
    for start in range(0, len(texts), batch_size):
        rows = graph(tf.constant(texts[start:start + batch_size])).to_list()
        out += [[settings[0]] + [int(i) for i in row] + [settings[1]] for row in rows]
    return out


def _specials(family, tokenizer):
    if family.tokenizer_kind == "wordpiece":
        return tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    return int(tokenizer.start_token_id), int(tokenizer.end_token_id)


def served_ids(model_dir, texts):
    """[[ids]] of the TensorFlow-free tokenizer `tfmp predict` runs on an export."""
    import tensorflow as tf  # noqa: F401  (only to build the settings, as export does)

    from tfmp import families
    from tfmp.serve import tokenizers

    family = families.family_of(model_dir)
    preprocessor = family.preprocessor_class()(families.build_tokenizer(family, model_dir),
                                               sequence_length=8)
    with tempfile.TemporaryDirectory() as directory:
        families.write_tokenizer_files(family, preprocessor.tokenizer, directory)
        settings = families.tokenizer_settings(family, preprocessor)
        with open(os.path.join(directory, tokenizers.SETTINGS), "w") as f:
            json.dump(settings, f)
        tokenizer = tokenizers.from_directory(directory)
        return [[settings["start"]] + list(ids) + [settings["end"]]
                for ids in tokenizer.tokenize(texts)]


def hf_ids(model_dir, texts):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(list(texts), add_special_tokens=True)["input_ids"]


def compare(a, b, texts, examples=3):
    """(share of texts whose ids are identical, [(text, a ids, b ids)] of a few differences)."""
    same = [x == y for x, y in zip(a, b)]
    diffs = [(t, x, y) for t, x, y, s in zip(texts, a, b, same) if not s][:examples]
    return sum(same) / max(len(same), 1), diffs


def checkpoint_dirs(families, root, given=None):
    """{model_type: checkpoint dir}: given ones, the bundled MiniLM for BERT, else trained."""
    import tiny_families

    from tfmp import models

    given = dict(given or {})
    out = {}
    for family in families:
        if family in given:
            out[family] = given[family]
        elif family == "bert":
            out[family] = models.default_model_dir()
        else:
            path = os.path.join(root, family)
            if not os.path.isfile(os.path.join(path, "config.json")):
                tiny_families.write_family_checkpoint(family, path)
            out[family] = path
    return out


def measure(model_dir, corpora):
    """[{family, corpus, texts, vs_hf, vs_served, examples}] for one checkpoint."""
    from tfmp import families

    family = families.family_of(model_dir).model_type
    rows = []
    for corpus, texts in corpora.items():
        graph, hf, served = (graph_ids(model_dir, texts), hf_ids(model_dir, texts),
                             served_ids(model_dir, texts))
        vs_hf, examples = compare(graph, hf, texts)
        vs_served, served_examples = compare(served, graph, texts)
        rows.append({"family": family, "corpus": corpus, "texts": len(texts),
                     "vs_hf": vs_hf, "vs_served": vs_served, "examples": examples,
                     "served_examples": served_examples})
    return rows


def table(rows):
    lines = ["| family | texts | in-graph = Hugging Face | TF-free (predict) = in-graph "
             "| a difference (text: in-graph ids / HF ids) |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        example = ""
        if r["examples"]:
            text, a, b = r["examples"][0]
            first = next(i for i, (x, y) in enumerate(zip(a + [None], b + [None])) if x != y)
            example = (f"`{text[:40]!r}`: ... {a[max(0, first - 1):first + 3]} / "
                       f"{b[max(0, first - 1):first + 3]}")
        lines.append(f"| {r['family']} | {r['texts']:,} {r['corpus']} | {r['vs_hf']:.2%} "
                     f"| {r['vs_served']:.2%} | {example} |")
    return "\n".join(lines)


def main(argv=None):
    import tiny_families

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--model", action="append", default=[], help="TYPE=DIR")
    parser.add_argument("--max-texts", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="where trained tokenizers are kept")
    parser.add_argument("--json", default=None)
    a = parser.parse_args(argv)
    airline = tiny_families.airline_texts()[:a.max_texts]
    corpora = {"airline": airline, "multilingual": tiny_families.multilingual_texts()}
    root = a.workdir or tempfile.mkdtemp(prefix="tfmp_parity_")
    given = dict(m.split("=", 1) for m in a.model)
    rows = []
    for family, path in checkpoint_dirs(a.families.split(","), root, given).items():
        rows += measure(path, corpora)
        print(table(rows[-2:]).splitlines()[-2:], flush=True, file=sys.stderr)
    print(table(rows))
    for r in rows:
        for text, graph, hf in r["examples"]:
            print(f"{r['family']} {r['corpus']}: {text!r}\n  in-graph {graph}\n  HF       {hf}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
