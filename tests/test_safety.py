"""What a user or a scheduler does by habit never loses work (issue: re-runs, --overwrite,
two writers, SIGTERM, power loss, NaN, auto, restore checks).

Each test stands for one finding of the reliability review; the README's "What tfmp
promises" table names them. Processes and files are real where the finding is about
processes and files: subprocesses are killed or signalled, directories are real.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from conftest import write_sentiment_csv

from tfmp import checkpoint, checkpoint_saver, cli, files, optimizer, rundir
from tfmp.config import TrainConfig
from tfmp.errors import InputError, TrainingStopped, UserError
from tfmp.hardware import Hardware
from tfmp.models import load_model
from tfmp.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("safety") / "tweets.csv", n=120)


def _config(csv, model, out, **kw):
    # 96 training examples / 16 = 6 steps an epoch.
    settings = dict(data=csv, model=model, policy="float32", out=str(out), epochs=2,
                    batch_size=16, seq_len=16, lr=5e-3, seed=3, checkpoint_every=0)
    settings.update(kw)
    return TrainConfig(**settings)


def _interrupt_after_first_epoch(monkeypatch):
    """Makes the next train() stop with Ctrl-C right after its first epoch's checkpoint."""
    epoch_end = checkpoint_saver.CheckpointSaver.on_epoch_end

    def stop(self, epoch, logs=None):
        epoch_end(self, epoch, logs)
        monkeypatch.setattr(checkpoint_saver.CheckpointSaver, "on_epoch_end", epoch_end)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_saver.CheckpointSaver, "on_epoch_end", stop)


@pytest.fixture(scope="module")
def interrupted(csv, tiny_bert_dir, tmp_path_factory):
    """The `<out>.partial` of a run stopped after its first epoch (6 steps); copy it."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _interrupt_after_first_epoch(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            train(_config(csv, tiny_bert_dir, out), verbose=0)
    return f"{out}.partial"


def _copy_interrupted(interrupted, tmp_path):
    import shutil

    shutil.copytree(interrupted, tmp_path / "run.partial")
    return tmp_path / "run"


@pytest.fixture(scope="module")
def uninterrupted(csv, tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    return train(_config(csv, tiny_bert_dir, out), verbose=0)


# --- 1. Re-running the command of an interrupted run resumes it. ---

def test_rerunning_an_interrupted_run_resumes_it_to_the_uninterrupted_weights(
        csv, tiny_bert_dir, tmp_path, capsys, uninterrupted, interrupted):
    config = _config(csv, tiny_bert_dir, _copy_interrupted(interrupted, tmp_path))
    assert checkpoint.find_latest(str(tmp_path / "run.partial" / "checkpoints"))
    result = train(config, verbose=1)  # the same call, as a scheduler's re-run makes it
    assert "Found an interrupted run of this config" in capsys.readouterr().out
    assert result.metrics["resumed_from_step"] == 6
    for a, b in zip(result.model.get_weights(), uninterrupted.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_rerunning_with_another_config_is_refused_and_keeps_the_checkpoints(
        csv, tiny_bert_dir, tmp_path, interrupted):
    _copy_interrupted(interrupted, tmp_path)
    ckpt = tmp_path / "run.partial" / "checkpoints"
    before = sorted(os.listdir(ckpt))
    with pytest.raises(UserError) as e:
        train(_config(csv, tiny_bert_dir, tmp_path / "run", lr=1e-3), verbose=0)
    message = str(e.value)
    assert "step 6" in message and "--resume" in message and "--overwrite" in message
    assert "lr: 0.005 in the checkpoint, 0.001 now" in message
    assert sorted(os.listdir(ckpt)) == before


# --- 2. --overwrite replaces only what tfmp wrote, and refuses before training. ---

def _unsafe_targets(tmp_path, tiny_bert_dir, csv):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    (tmp_path / "a_file").write_text("x")
    os.symlink(tmp_path / "mine", tmp_path / "link")
    return {
        "root": ("/", "cannot be"),
        "home": (os.path.expanduser("~"), "cannot be"),
        "cwd": (".", "working directory"),
        "parent of cwd": ("..", "working directory"),
        "holds the data": (os.path.dirname(csv), "holds"),
        "holds the model": (os.path.dirname(tiny_bert_dir), "holds"),
        "not a tfmp run": (str(tmp_path / "mine"), "not tfmp's to replace"),
        "a file": (str(tmp_path / "a_file"), "is a file"),
        "a symlink": (str(tmp_path / "link"), "symbolic link"),
    }


@pytest.mark.parametrize("case", ["root", "home", "cwd", "parent of cwd", "holds the data",
                                  "holds the model", "not a tfmp run", "a file", "a symlink"])
def test_overwrite_refuses_what_is_not_a_tfmp_run_before_any_training(
        csv, tiny_bert_dir, tmp_path, monkeypatch, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out, words = _unsafe_targets(tmp_path, tiny_bert_dir, csv)[case]
    snapshot = sorted(os.listdir(tmp_path))
    code = cli.main(["train", "--data", csv, "--model", tiny_bert_dir, "--out", out,
                     "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == snapshot  # nothing written or deleted
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def test_overwrite_replaces_a_finished_run_and_export_refuses_to_overwrite_its_run(
        tmp_path, capsys, uninterrupted):
    config = TrainConfig(out=uninterrupted.run_dir, overwrite=True)
    assert rundir.check_out(config) == uninterrupted.run_dir  # a tfmp run: replaceable
    code = cli.main(["export", uninterrupted.run_dir, "--out-root",
                     os.path.dirname(uninterrupted.run_dir), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert files.is_complete(uninterrupted.run_dir)


# --- 3. One writer per run directory. ---

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from tfmp.files import DirLock
    DirLock(sys.argv[1], "holder").acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
        csv, tiny_bert_dir, tmp_path, capsys, interrupted):
    out = _copy_interrupted(interrupted, tmp_path)
    checkpoints = sorted(os.listdir(tmp_path / "run.partial" / "checkpoints"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        rerun = ["train", "--data", csv, "--model", tiny_bert_dir, "--out", str(out),
                 "--policy", "float32", "--epochs", "2", "--batch-size", "16",
                 "--seq-len", "16", "--lr", "5e-3", "--seed", "3", "--checkpoint-every",
                 "0", "--quiet"]
        for args in (rerun, ["train", "--resume", str(out), "--quiet"]):
            assert cli.main(args) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid}" in err and "holder" in err, err
            assert "Traceback" not in err
        assert sorted(os.listdir(tmp_path / "run.partial" / "checkpoints")) == checkpoints
        holder.kill()
        holder.wait()
        # The holder died without releasing its lock: on this host that lock is stale.
        assert cli.main(rerun) == 0, capsys.readouterr().err
    finally:
        holder.kill()
    assert files.is_complete(out) and not os.path.exists(f"{out}.lock")


# --- 4. Finishing is durable and atomic; only finished runs are read. ---

FINISH_CUT = textwrap.dedent("""
    import json, os, sys
    from tfmp import files
    from tfmp.config import TrainConfig
    from tfmp.train import train

    config, cut = json.loads(sys.argv[1]), sys.argv[2]
    real = os.replace
    def replace(src, dst, *a, **k):
        # Power cut: the process dies at one step of publishing the finished run.
        if cut == "before staging rename" and str(src).endswith(".partial"):
            os._exit(9)
        return real(src, dst, *a, **k)
    os.replace = replace
    train(TrainConfig(**config), verbose=0)
""")


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFMP_AUTO_PROBE="0",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


@pytest.mark.slow
def test_a_power_cut_while_finishing_leaves_the_old_run_or_a_recoverable_new_one(
        csv, tiny_bert_dir, tmp_path, uninterrupted):
    import shutil

    out = tmp_path / "run"
    config = dict(_config(csv, tiny_bert_dir, out, epochs=1).to_json(), overwrite=True)
    # The old, finished run that --overwrite replaces: a copy of the module's (any
    # finished run will do, and training one costs a whole run).
    shutil.copytree(uninterrupted.run_dir, out)
    old_sha = files.sha256(out / "model.keras")
    proc = subprocess.run([sys.executable, "-c", FINISH_CUT, json.dumps(config),
                           "before staging rename"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    # The old run was renamed aside, the new one is complete but not yet in place.
    asides = [n for n in os.listdir(tmp_path) if n.startswith("run.old-")]
    assert not out.exists() and len(asides) == 1
    assert files.sha256(tmp_path / asides[0] / "model.keras") == old_sha
    assert files.is_complete(f"{out}.partial")
    with pytest.raises(InputError):
        load_model(str(out))
    # The same command again finishes the job instead of training anew...
    with pytest.raises(UserError, match="had finished"):
        train(TrainConfig(**dict(config, overwrite=False)), verbose=0)
    assert files.is_complete(out) and load_model(str(out)) is not None
    assert not os.path.exists(f"{out}.partial")
    assert not [n for n in os.listdir(tmp_path) if n.startswith("run.old-")]


def test_a_run_without_its_completion_marker_is_refused_by_load_and_export(
        tmp_path, capsys, uninterrupted):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(uninterrupted.run_dir, copy)
    os.remove(copy / files.MARKER)
    with pytest.raises(InputError, match="COMPLETE"):
        load_model(str(copy))
    assert cli.main(["export", str(copy), "--out-root", str(tmp_path / "exports")]) == 2
    assert "COMPLETE" in capsys.readouterr().err
    assert not (tmp_path / "exports" / "copy").exists()


# --- 5. SIGTERM (how schedulers pre-empt) saves a checkpoint, flushes, exits 143. ---

@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_flushes_tensorboard_and_the_run_resumes(
        csv, tiny_bert_dir, tmp_path):
    out = tmp_path / "run"
    big = write_sentiment_csv(tmp_path / "big.csv", n=2400)
    cmd = [sys.executable, "-m", "tfmp", "train", "--data", big, "--model", tiny_bert_dir,
           "--policy", "float32", "--epochs", "2", "--batch-size", "8", "--seq-len", "16",
           "--checkpoint-every", "100000", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    logs = out.parent / "run.partial" / "logs" / "train"
    while not (logs.is_dir() and os.listdir(logs)):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.3)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "signal 15" in err and "Resume with" in err and "Traceback" not in err
    found = checkpoint.find_latest(str(out.parent / "run.partial" / "checkpoints"))
    assert found is not None and found[1]["global_step"] > 0
    events = [os.path.join(d, f) for d, _, names in os.walk(logs.parent) for f in names
              if f.startswith("events.out")]
    assert events and all(os.path.getsize(e) > 0 for e in events)
    result = train(resume=str(out), verbose=0)  # in-process: one TensorFlow start less
    assert result.metrics["resumed_from_step"] == found[1]["global_step"]
    assert files.is_complete(out)


# --- 6. A finite loss with an infinite gradient never becomes a saved NaN model. ---

def test_an_infinite_gradient_stops_the_run_and_nothing_nan_is_saved(
        csv, tiny_bert_dir, tmp_path, monkeypatch):
    import tensorflow as tf

    apply = optimizer.AdamW.apply

    def poisoned(self, grads, trainable_variables=None):
        bad = tf.equal(self.iterations, 3)  # the loss of that step is finite
        grads = [tf.where(bad, tf.convert_to_tensor(g) * np.inf, tf.convert_to_tensor(g))
                 for g in grads]
        return apply(self, grads, trainable_variables)

    monkeypatch.setattr(optimizer.AdamW, "apply", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="gradient norm"):
        train(_config(csv, tiny_bert_dir, out, checkpoint_every=2), verbose=0)
    assert not out.exists()
    root = tmp_path / "run.partial" / "checkpoints"
    found = checkpoint.find_latest(str(root))
    assert found is not None and found[1]["global_step"] <= 3  # the last finite one
    saved = np.load(os.path.join(found[0], checkpoint.ARRAYS))
    assert all(np.isfinite(saved[k]).all() for k in saved.files)


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.layers[0].kernel.assign(np.full((3, 2), np.nan, "float32"))
    with pytest.raises(TrainingStopped, match="not finite"):
        checkpoint.save(str(tmp_path / "ckpt"), model, {})
    assert checkpoint.find_latest(str(tmp_path / "ckpt")) is None


# --- 7. `auto` is resolved once: a resume keeps the policy the run started with. ---

def test_auto_is_resolved_once_and_a_resume_keeps_it(csv, tiny_bert_dir, tmp_path,
                                                     monkeypatch):
    from tfmp import precision

    config = _config(csv, tiny_bert_dir, tmp_path / "run", policy="auto")
    monkeypatch.setattr(precision, "detect_hardware", lambda: Hardware(cpu_model="plain"))
    _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=0)
    # Resumed where `auto` would now say mixed_bfloat16 (a bfloat16 GPU).
    monkeypatch.setattr(precision, "detect_hardware",
                        lambda: Hardware(gpus=(("A100", (8, 0)),)))
    result = train(resume=str(tmp_path / "run"), verbose=0)
    assert result.policy.name == "float32"
    assert result.model.backbone.dtype_policy.name == "float32"


# --- 8. A checkpoint whose optimizer slots do not match is refused, not loaded. ---

def test_restore_refuses_swapped_optimizer_slots_and_warns_on_new_versions(
        tmp_path, interrupted):
    _copy_interrupted(interrupted, tmp_path)
    path, state = checkpoint.find_latest(str(tmp_path / "run.partial" / "checkpoints"))
    names = state["optimizer_variables"]
    m = next(i for i, n in enumerate(names) if n.endswith("_momentum"))
    names[m], names[m + 1] = names[m + 1], names[m]  # momentum <-> velocity: same shapes
    state["versions"]["keras"] = "0.0.1"
    with open(os.path.join(path, checkpoint.STATE), "w", encoding="utf-8") as f:
        json.dump(state, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="momentum|velocity"):
            train(resume=str(tmp_path / "run"), verbose=0)
    assert any("keras 0.0.1" in str(w.message) for w in caught)


def test_an_output_under_a_file_is_a_user_error_naming_the_path(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file"):
        files.DirLock(tmp_path / "a_file" / "run").acquire()
    assert (tmp_path / "a_file").read_text() == "x"


def test_left_by_dead_process_judges_only_this_hosts_dead_pids():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    this_host = files.unique_suffix().rsplit("-", 2)[0]
    assert files.left_by_dead_process(f"{this_host}-{dead.pid}-abcd1234")
    assert not files.left_by_dead_process(f"{this_host}-{os.getpid()}-abcd1234")
    assert not files.left_by_dead_process(f"other_host-{dead.pid}-abcd1234")
    assert not files.left_by_dead_process("not-a-suffix")


def test_read_json_names_the_file_and_the_remedy(tmp_path):
    from tfmp.errors import InputError

    path = tmp_path / "config.json"
    path.write_text('{"config": ', encoding="utf-8")
    with pytest.raises(InputError, match=r"config\.json: not readable as JSON .*Train again\."):
        files.read_json(str(path), "Train again.")
    with pytest.raises(InputError, match="No such file"):
        files.read_json(str(tmp_path / "missing.json"), "Train again.")
    path.write_text('{"config": {"a": 1}}', encoding="utf-8")
    assert files.read_json(str(path), "Train again.") == {"config": {"a": 1}}
