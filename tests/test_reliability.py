"""Crash safety: checkpoints, exact resume after SIGKILL or Ctrl-C, guards, bad input.

The end-to-end tests run `python -m tfmp train` in a subprocess on a tiny BERT, so a
kill is a real kill; every wait is bounded.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfmp import checkpoint
from tfmp.errors import TrainingStopped, UserError
from tfmp.config import TrainConfig, config_differences
from tfmp.models import load_model
from tfmp.train import train

from conftest import write_sentiment_csv  # noqa: E402  (tests/ is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from overflow import scale_block  # noqa: E402

ROWS, BATCH, EPOCHS = 200, 8, 2  # 160 train examples: 20 steps an epoch, 40 in all
STEPS_PER_EPOCH = ROWS * 8 // 10 // BATCH
TIMEOUT = 300  # seconds for one training subprocess on 2 cores shared with another test process


def _train_cmd(csv, model, out, *extra):
    return [sys.executable, "-m", "tfmp", "train", "--data", csv, "--model", model,
            "--policy", "mixed_float16", "--epochs", str(EPOCHS), "--batch-size", str(BATCH),
            "--seq-len", "16", "--lr", "5e-3", "--seed", "3", "--checkpoint-every", "2",
            "--out", str(out), "--quiet", *extra]


def _env():
    # Op determinism: the comparison below can then be bitwise, not just close.
    return dict(os.environ, TF_DETERMINISTIC_OPS="1", TF_CPP_MIN_LOG_LEVEL="2",
                TFMP_AUTO_PROBE="0")


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    return proc


def _latest_step(root):
    names = os.listdir(root) if os.path.isdir(root) else []
    steps = [int(n[5:]) for n in names if n.startswith("ckpt-")]
    return max(steps, default=-1)


def _kill_at_step(cmd, ckpt_root, step):
    """Starts `cmd`, SIGKILLs it once a checkpoint at `step` or later exists."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=_env())
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _latest_step(ckpt_root) >= step:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return proc


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "tweets.csv", n=ROWS)


@pytest.fixture(scope="module")
def killed_and_resumed(csv, tiny_bert_dir, tmp_path_factory):
    # Block 1 of this BERT overflows float16 (x 1e7, as in test_adaptive), so
    # --precision-map adaptive gives it a policy of its own: the resumed run must
    # rebuild that map from its checkpoint, not calibrate anew, to match bit for bit.
    root = tmp_path_factory.mktemp("kill")
    model = scale_block(tiny_bert_dir, str(root / "overflowing"), 1, 1e7)
    adaptive = ("--precision-map", "adaptive")
    whole = _run(_train_cmd(csv, model, root / "whole", *adaptive))
    assert whole.returncode == 0, whole.stderr[-3000:]

    kill_step = random.Random(5).randint(4, STEPS_PER_EPOCH - 6)  # mid-epoch 1
    out = root / "killed"
    proc = _kill_at_step(_train_cmd(csv, model, out, *adaptive),
                         str(out) + ".partial/checkpoints", kill_step)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])
    assert not out.exists()  # killed before it could finish
    # A copy of the killed run, for the tests of what resume refuses.
    shutil.copytree(str(out) + ".partial", root / "copy.partial")
    resumed = _run([sys.executable, "-m", "tfmp", "train", "--resume", str(out), "--quiet"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"whole": root / "whole", "resumed": out, "copy": root / "copy",
            "kill_step": kill_step}


# killed_and_resumed trains three times in subprocesses (whole, killed, resumed).
@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_result(killed_and_resumed):
    runs = killed_and_resumed
    whole = json.load(open(runs["whole"] / "metrics.json"))
    resumed = json.load(open(runs["resumed"] / "metrics.json"))
    start = resumed["resumed_from_step"]
    total = EPOCHS * STEPS_PER_EPOCH
    print(f"killed after checkpoint step >= {runs['kill_step']}; resumed from step {start}")
    # The kill may land between a checkpoint's rename and its pointer update: the
    # uncommitted one is then ignored and the one before (2 steps earlier) used.
    assert runs["kill_step"] - 2 <= start < total
    # Same number of batches, loss scale and skipped steps.
    assert resumed["optimizer"] == whole["optimizer"]
    w = whole["optimizer"]
    assert w["iterations"] + w["skipped_steps"] == total
    a, b = load_model(runs["whole"]).get_weights(), load_model(runs["resumed"]).get_weights()
    diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
    print(f"max |weight difference| resumed vs uninterrupted: {diff}")
    # Deterministic ops, same dropout seeds, same batches: bitwise equal.
    assert diff == 0.0
    history = {k: json.load(open(runs[k] / "history.json")) for k in ("whole", "resumed")}
    assert history["resumed"].keys() == history["whole"].keys()
    # Validation runs on the same weights at each epoch end: same numbers.
    assert history["resumed"]["val_loss"] == history["whole"]["val_loss"]
    assert not os.path.exists(runs["resumed"] / "checkpoints")  # finished: model.keras stays
    # The precision map: calibrated once, carried through the kill.
    maps = [json.load(open(runs[k] / "config.json"))["policy"]["layer_map"]
            for k in ("whole", "resumed")]
    assert maps[0] == maps[1] and [row[0] for row in maps[0]] == [
        "bert_backbone/transformer_layer_1"]


@pytest.mark.slow
def test_resume_refuses_a_config_that_changes_the_result(killed_and_resumed, csv,
                                                        tiny_bert_dir):
    saved = checkpoint.find_latest(str(killed_and_resumed["copy"]) + ".partial/checkpoints")[1]
    config = TrainConfig.from_json(saved["config"])
    changed = TrainConfig.from_json(dict(saved["config"], batch_size=16, policy="float32"))
    with pytest.raises(UserError) as e:
        train(changed, verbose=0, resume=killed_and_resumed["copy"])
    assert "batch_size: 8 in the checkpoint, 16 now" in str(e.value)
    assert "policy" in str(e.value) and "seq_len" not in str(e.value)
    # What does not change the result may differ.
    assert config_differences(
        config, TrainConfig.from_json(dict(saved["config"], min_loss_scale=2.0))) == []


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(
        killed_and_resumed, tmp_path):
    root = tmp_path / "checkpoints"
    shutil.copytree(str(killed_and_resumed["copy"]) + ".partial/checkpoints", root)
    committed = (root / checkpoint.POINTER).read_text().strip()
    names = sorted(n for n in os.listdir(root) if n.startswith("ckpt-") and n <= committed)
    # A kill between the pointer update and the pruning leaves one extra old checkpoint.
    assert len(names) in (checkpoint.KEEP, checkpoint.KEEP + 1) and names[-1] == committed
    for old in names[:-checkpoint.KEEP]:
        shutil.rmtree(root / old)
    names = names[-checkpoint.KEEP:]
    newest = root / names[-1] / checkpoint.WEIGHTS
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(UserWarning, match=str(newest)):
        path, state = checkpoint.find_latest(str(root))
    assert os.path.basename(path) == names[-2]
    # A corrupt (same size, different bytes) state is caught by its checksum too.
    arrays = root / names[-2] / checkpoint.ARRAYS
    data = bytearray(arrays.read_bytes())
    data[-20] ^= 0xFF
    arrays.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        assert checkpoint.find_latest(str(root)) is None


def test_resume_of_a_directory_without_checkpoints_says_so(tmp_path, capsys):
    from tfmp import cli

    (tmp_path / "notarun").mkdir()
    assert cli.main(["train", "--resume", str(tmp_path / "notarun")]) == 2
    err = capsys.readouterr().err
    assert "not a resumable run directory" in err and "notarun" in err


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(csv, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    ckpts = str(out) + ".partial/checkpoints"
    # Checkpoints only at epoch ends, so the one found after SIGINT is Ctrl-C's own.
    proc = subprocess.Popen(
        _train_cmd(csv, tiny_bert_dir, out, "--checkpoint-every", "0", "--epochs", "20"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(str(out) + ".partial/logs/train"):  # training has begun
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 130, err[-3000:]
    assert "Resume with: tfmp train --resume" in err and "Traceback" not in err
    path, state = checkpoint.find_latest(ckpts)
    assert state["global_step"] == state["epoch"] * STEPS_PER_EPOCH + state["batch_in_epoch"]


def test_loss_scale_collapse_stops_with_advice_after_saving_a_checkpoint(
        csv, tiny_bert_dir, tmp_path):
    # A scale of 1e30 overflows float16 at every step: each one is skipped and halves
    # the scale, so within the 4-step window every step was skipped.
    config = TrainConfig(data=csv, model=tiny_bert_dir, policy="mixed_float16", epochs=1,
                         batch_size=BATCH, seq_len=16, initial_loss_scale=1e30,
                         min_loss_scale=1e-30, skip_window=4, out=str(tmp_path / "run"))
    with pytest.raises(TrainingStopped) as e:
        train(config, verbose=0)
    message = str(e.value)
    assert "of the last 4 steps" in message and "mixed_bfloat16" in message
    assert "--lr" in message and "checkpoint was saved" in message
    path, state = checkpoint.find_latest(str(tmp_path / "run.partial" / "checkpoints"))
    assert state["global_step"] == 5 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["smaller_than_a_batch", "not_bert", "unknown_policy"])
def test_bad_input_exits_2_naming_the_problem_and_leaves_nothing(case, csv, tiny_bert_dir,
                                                               tmp_path, capsys):
    from tfmp import cli

    args = ["--data", csv, "--model", tiny_bert_dir, "--seq-len", "16"]
    if case == "smaller_than_a_batch":
        args += ["--max-train-examples", "10", "--batch-size", "16"]
        words = ["10 examples", "fewer than one batch of 16", "--batch-size"]
    elif case == "not_bert":
        (tmp_path / "gpt").mkdir()
        (tmp_path / "gpt" / "config.json").write_text('{"model_type": "gpt2"}')
        args[3] = str(tmp_path / "gpt")
        words = ["gpt"]
    else:
        with pytest.raises(UserError, match="float8"):
            train(TrainConfig(data=csv, model=tiny_bert_dir, policy="float8",
                              out=str(tmp_path / "run")), verbose=0)
        assert not os.path.exists(tmp_path / "run.partial")
        return
    code = cli.main(["train", *args, "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    assert not os.path.exists(tmp_path / "run")
    assert not os.path.exists(tmp_path / "run.partial")
