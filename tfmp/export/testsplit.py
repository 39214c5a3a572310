"""The run's test split, rebuilt for `tfmp export` and checked against what the run recorded.

    split, source = rebuild(run_dir, run_config, label_names)

A run's config.json records its data as `data.path` (the absolute path of the data
file, or the name of a built-in corpus), `data.sha256` (of the file; None for a
built-in) and `data.test_indices` (the test split's positions in the loaded
examples). The export reads the file at that path, not `--data` resolved against
today's working directory, and refuses (exit 2) a file that was edited, is missing or
was replaced, or a split that no longer comes out the same: any of these would
give the export's gate and accuracy the wrong examples, or the wrong label ids,
without a word. A run written before these were recorded is rebuilt as before,
with a warning that nothing was verified.
"""

import dataclasses
import os
import warnings

from tfmp import data, files
from tfmp.config import TrainConfig
from tfmp.errors import InputError

RECORDED = ("path", "sha256", "test_indices")


def rebuild(run_dir, run_config, label_names):
    """(the run's test split, the data source it came from); `InputError` if it is not."""
    splits, source = rebuild_splits(run_dir, run_config, label_names)
    return splits.test, source


def rebuild_splits(run_dir, run_config, label_names):
    """(the run's splits, its data source), the test split verified (see `rebuild`).

    Args:
        run_dir: str. The run directory (for messages).
        run_config: dict. Its config.json.
        label_names: sequence of str. Its labels.json names, in id order.
    """
    config = TrainConfig.from_json(run_config["config"])
    recorded = run_config.get("data") or {}
    if not all(k in recorded for k in RECORDED):
        warnings.warn(
            f"The run in '{run_dir}' was written before tfmp recorded its data's path, "
            f"hash and test split: its test split is rebuilt from --data {config.data!r} "
            f"as found from today's working directory ({os.getcwd()}), not verified. "
            "If that file changed since training, the export's accuracy and gate are "
            "measured on the wrong examples.", stacklevel=2)
        source = config.data
    else:
        source = _verified_source(run_dir, config.data, recorded)
    _, label_map, splits = data.prepare_data(dataclasses.replace(config, data=source))
    if tuple(label_map.names) != tuple(label_names):
        raise InputError(
            f"The labels of '{source}' ({list(label_map.names)}) are not the labels the "
            f"run in '{run_dir}' was trained with ({list(label_names)}, labels.json): "
            "its label ids would mean other classes. Export with the data it was "
            "trained on.")
    if "test_indices" in recorded:
        _check_indices(run_dir, source, recorded, splits.test)
    return splits, source


def _verified_source(run_dir, given, recorded):
    """The data the run was trained on, verified by its sha256 (a built-in: its name)."""
    path, expected = recorded["path"], recorded["sha256"]
    if expected is None:  # a built-in corpus: the split check below is its fingerprint
        return path
    whose = f"'{path}', the data the run in '{run_dir}' was trained on,"
    if os.path.isfile(path):
        actual = files.sha256(path)
        if actual != expected:
            raise InputError(
                f"{whose} was edited since training: its sha256 is {actual}, the run "
                f"recorded {expected}. Its test split would not be the run's. Restore "
                "the file as it was to export this run.")
        return path
    # Not where it was: a file of the same content under the name it was given as is
    # the same data (moved), verified by its hash.
    candidate = os.path.abspath(given)
    found = os.path.isfile(candidate) and candidate != path
    if found and files.sha256(candidate) == expected:
        warnings.warn(f"{whose} is no longer there; using '{candidate}', which has the "
                      "same sha256 (the file was moved).", stacklevel=3)
        return candidate
    raise InputError(
        f"{whose} is missing (moved or deleted since training)"
        + (f"; '{candidate}' (--data {given!r} from today's working directory) is a "
           "file with different content" if found else "")
        + f". Put the file back at '{path}' (a copy or a symbolic link will do; its "
        f"sha256 must be {expected}) to export this run.")


def _check_indices(run_dir, source, recorded, split):
    """Refuses a rebuilt test split whose positions are not the recorded ones."""
    expected = [int(i) for i in recorded["test_indices"]]
    actual = [] if split.indices is None else [int(i) for i in split.indices]
    if actual == expected:
        return
    differ = sum(a != b for a, b in zip(actual, expected)) + abs(len(actual) - len(expected))
    cause = ("the built-in corpus changed" if recorded.get("sha256") is None
             else "the file is unchanged, so its splitting changed")
    raise InputError(
        f"The test split rebuilt from '{source}' is not the one the run in '{run_dir}' "
        f"was tested on: {differ} of {len(expected)} positions differ ({len(actual)} "
        f"examples now). {cause[0].upper() + cause[1:]} since training (another tfmp "
        "version, or an edited config.json). Export with the tfmp version that trained "
        "the run.")
