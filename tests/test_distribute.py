"""`tf.distribute` training: 2 logical CPU replicas match one device; 2 workers agree.

Every test runs TensorFlow in subprocesses: logical devices and a multi-worker
strategy must be set up before TensorFlow starts its devices, which the pytest
process already has. Every wait is bounded.
"""

import json
import os
import socket
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
from conftest import write_sentiment_csv

# Every test starts TensorFlow processes; the replica runs train 8 times in them.
pytestmark = pytest.mark.slow

TIMEOUT = 400  # seconds for one subprocess on 2 cores shared with another test process

# Trains through the Python API with the backbone's dropout off: replicas draw other
# dropout masks than one device does, so only a dropout-free run can be compared
# weight for weight. Each job (name, mode, config) writes <out>/<name>.npz (weights)
# and <out>/<name>.json (optimizer state); mode "interrupt" stops after the first
# epoch's checkpoint, as Ctrl-C would; "resume" continues config["out"] from it.
_TRAIN = """
import json, os, sys
import keras, keras_hub, numpy as np
from tfmp import checkpoint_saver, models
from tfmp.config import TrainConfig
from tfmp.train import train

preset = keras_hub.models.BertBackbone.from_preset
keras_hub.models.BertBackbone.from_preset = lambda *a, **k: preset(*a, dropout=0.0, **k)
epoch_end = checkpoint_saver.CheckpointSaver.on_epoch_end
jobs, out = json.loads(sys.argv[1]), sys.argv[2]
for name, mode, config in jobs:
    if mode == "initial":  # the weights training starts from, as train() builds them
        keras.utils.set_random_seed(config["seed"])
        model = models.load_classifier(config["model"], num_classes=3,
                                       sequence_length=config["seq_len"], dropout=0.0)
        np.savez(os.path.join(out, name + ".npz"), *model.get_weights())
        continue
    def stop(self, epoch, logs=None):
        epoch_end(self, epoch, logs)
        raise KeyboardInterrupt
    checkpoint_saver.CheckpointSaver.on_epoch_end = stop if mode == "interrupt" else epoch_end
    try:
        result = train(TrainConfig.from_json(config), verbose=0,
                       resume=config["out"] if mode == "resume" else None)
    except KeyboardInterrupt:
        continue
    np.savez(os.path.join(out, name + ".npz"), *result.model.get_weights())
    json.dump(dict(result.metrics["optimizer"], strategy=result.metrics["strategy"]),
              open(os.path.join(out, name + ".json"), "w"))
"""


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TFMP_AUTO_PROBE="0",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _run(args, **env):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False,
                          timeout=TIMEOUT, env=_env(**env), cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
    return write_sentiment_csv(tmp_path_factory.mktemp("data") / "tweets.csv", n=120)


def _config(csv, model, out, policy, strategy, **kw):
    # 64 examples / 16 = 4 steps an epoch, 8 in all.
    return {"data": csv, "model": model, "policy": policy, "strategy": strategy,
            "out": str(out), "epochs": 2, "batch_size": 16, "seq_len": 16, "lr": 1e-3,
            "seed": 1, "dropout": 0.0, "max_train_examples": 64, "checkpoint_every": 0, **kw}


POLICIES = ("float32", "mixed_float16")
# Largest |w_mirrored - w_single| after 8 steps (2 epochs; AdamW, lr 1e-3), per policy.
# Not 0: the 2 replicas sum their halves of the batch in another order than one device
# sums the whole, and Adam's first steps (update ~ lr * sign(grad)) amplify that
# rounding for gradients near zero. float16 rounds coarser in the forward pass.
# Measured: 1.2e-7 (float32: one ulp of a weight near 1) and 6.8e-6 (mixed_float16);
# the largest update is 4.5e-3.
TOLERANCE = {"float32": 1e-6, "mixed_float16": 1e-4}


@pytest.fixture(scope="module")
def runs(csv, tiny_bert_dir, tmp_path_factory):
    """Weights and optimizer state of each run, by name; see the jobs below."""
    root = tmp_path_factory.mktemp("mirrored")

    def config(name, policy, strategy, **kw):
        return _config(csv, tiny_bert_dir, root / name, policy, strategy, **kw)

    # Every run is 2 epochs. One device: both policies (float32's is also what the
    # resumed runs must end at), and a run interrupted after epoch 1 that two replicas
    # then resume (and the other way round).
    single = [("initial", "initial", config("initial", "float32", "none"))]
    single += [(f"none-{p}", "train", config(f"none-{p}", p, "none")) for p in POLICIES]
    single += [("none-cut", "interrupt", config("cut-on-1", "float32", "none"))]
    mirrored = [(f"mirrored-{p}", "train", config(f"mirrored-{p}", p, "mirrored"))
                for p in POLICIES]
    mirrored += [
        ("resumed-on-2", "resume", config("cut-on-1", "float32", "mirrored")),
        ("mirrored-cut", "interrupt", config("cut-on-2", "float32", "mirrored")),
        ("resumed-on-1", "resume", config("cut-on-2", "float32", "none"))]
    _run(["-c", _TRAIN, json.dumps(single), str(root)])
    _run(["-c", _TRAIN, json.dumps(mirrored), str(root)], TFMP_LOGICAL_CPUS="2")
    found = {}
    for name in os.listdir(root):
        stem, ext = os.path.splitext(name)
        if ext == ".npz":
            found[stem] = _arrays(str(root / name))
        elif ext == ".json":
            found[stem + "_state"] = _read_json(root / name)
    return found


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _arrays(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.mark.parametrize("policy", POLICIES)
def test_two_replicas_train_the_weights_one_device_trains(runs, policy):
    state = runs[f"mirrored-{policy}_state"]
    assert state["strategy"]["replicas"] == 2 and state["iterations"] == 8, state
    assert runs[f"none-{policy}_state"]["strategy"]["replicas"] == 1
    diff = _max_diff(runs[f"none-{policy}"], runs[f"mirrored-{policy}"])
    moved = _max_diff(runs[f"none-{policy}"], runs["initial"])
    print(f"{policy}: max |mirrored - single| = {diff:.2e}; max update {moved:.2e}")
    assert diff <= TOLERANCE[policy], diff
    # The runs trained (not two untouched models), and by far more than they differ:
    # measured 4.5e-3 moved vs 6.8e-6 apart under mixed_float16 (float16 keeps 11 bits,
    # and two replicas sum the gradients in another order).
    assert moved > max(20 * diff, 1e-3)


@pytest.mark.parametrize("resumed", ["resumed-on-2", "resumed-on-1"])
def test_a_checkpoint_resumes_under_another_strategy_to_the_uninterrupted_result(
        runs, resumed):
    # Cut after epoch 1 on one device and resumed on two replicas, or the reverse:
    # both end where the uninterrupted one-device run did, all 8 steps taken.
    assert runs[resumed + "_state"]["iterations"] == 8
    diff = _max_diff(runs["none-float32"], runs[resumed])
    print(f"{resumed}: max |resumed - uninterrupted| = {diff:.2e}")
    assert diff <= TOLERANCE["float32"], diff


# Non-finite gradients on replica 1 only, at the second of three steps.
_NONFINITE = """
import json, sys
import keras, numpy as np, tensorflow as tf
from tfmp import distribute, optimizer, precision
from tfmp.config import TrainConfig

dist = distribute.resolve("mirrored")
with dist.strategy.scope():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    opt = optimizer.build_optimizer(precision.resolve("mixed_float16"), total_steps=3,
                                    config=TrainConfig(lr=0.1, warmup_ratio=0.0))

    def loss(y, p):
        # y[:, 1] is 1 only in the second batch; only replica 1 turns it into inf.
        base = keras.ops.mean(keras.ops.square(y[:, :1] - p))
        context = tf.distribute.get_replica_context()  # None while Keras builds
        replica = context.replica_id_in_sync_group if context else 0
        poison = tf.logical_and(tf.equal(replica, 1), tf.reduce_max(y[:, 1]) > 0)
        return base * tf.where(poison, float("inf"), 1.0)  # not where(.., base * inf, ..): 0 * inf

    model.compile(optimizer=opt, loss=loss, auto_scale_loss=False)
distribute.build_from_first_replica(model)
x = np.arange(36, dtype="float32").reshape(12, 3) / 36
y = np.stack([x.sum(1), np.repeat([0.0, 1.0, 0.0], 4)], 1).astype("float32")
seen = []

class Record(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        k = self.model.layers[0].kernel.value
        seen.append({
            "replicas": [r.numpy().tolist() for r in dist.strategy.experimental_local_results(k)],
            "scale": float(opt.dynamic_scale.numpy()),
            "skipped": int(opt.skipped_steps.numpy()),
            "iterations": int(opt.iterations.numpy())})

model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
json.dump(seen, open(sys.argv[1], "w"))
"""


def test_inf_gradients_on_one_replica_skip_the_step_on_both_and_halve_scale_once(tmp_path):
    out = tmp_path / "steps.json"
    _run(["-c", _NONFINITE, str(out)], TFMP_LOGICAL_CPUS="2")
    first, bad, last = _read_json(out)
    assert first["skipped"] == 0 and first["iterations"] == 1 and first["scale"] == 2.0**15
    # Step 2 overflowed on replica 1 only: skipped everywhere, the scale halved once,
    # and neither replica's weights moved.
    assert bad["skipped"] == 1 and bad["iterations"] == 1 and bad["scale"] == 2.0**14
    assert bad["replicas"][0] == bad["replicas"][1] == first["replicas"][0]
    # Step 3 is clean again and applied on both.
    assert last["skipped"] == 1 and last["iterations"] == 2 and last["scale"] == 2.0**14
    assert last["replicas"][0] == last["replicas"][1] != bad["replicas"][0]


# --- Two workers on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy. ---

def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(csv, model, out, scratch, extra=(), per_worker_env=({}, {}), **env):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        cmd = [sys.executable, "-m", "tfmp", "train", "--data", csv, "--model", model,
               "--policy", "float32", "--strategy", "multi_worker", "--seq-len", "16",
               "--batch-size", "8", "--lr", "1e-3", "--seed", "1", "--out", str(out),
               "--checkpoint-every", "0", *extra]
        procs.append(subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_env(TF_CONFIG=tf_config, TFMP_WORKER_DIR=str(scratch / f"w{i}"),
                     **dict(env, **per_worker_env[i])),
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return procs


def _finish(procs, timeout):
    deadline = time.monotonic() + timeout
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a worker did not finish in time: "
                        + " | ".join(q.communicate()[1][-1500:] for q in procs))
    return outputs


def _keras_weights(path):
    with zipfile.ZipFile(path) as z, z.open("model.weights.h5") as f, h5py.File(f) as h5:
        found = {}
        h5.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                      if isinstance(obj, h5py.Dataset) else None)
    return found


@pytest.fixture(scope="module")
def two_workers(csv, tiny_bert_dir, tmp_path_factory):
    """(scratch root, run) of one 1-epoch run of two workers under --policy auto, read by
    the two tests below. The chief skips the bfloat16 probe (float32 on a CPU); the other
    worker runs it (mixed_bfloat16 on an AVX512-BF16 CPU such as this one's): left to
    itself, each would train under another policy."""
    root = tmp_path_factory.mktemp("two_workers")
    procs = _start_workers(csv, tiny_bert_dir, root / "run", root,
                           ["--policy", "auto", "--epochs", "1", "--max-train-examples",
                            "48", "--quiet"],
                           per_worker_env=({"TFMP_AUTO_PROBE": "0"}, {"TFMP_AUTO_PROBE": "1"}))
    outputs = _finish(procs, TIMEOUT)
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return root, root / "run"


def test_two_workers_end_with_identical_weights_and_only_the_chief_writes(two_workers):
    root, out = two_workers
    # The chief (worker 0) wrote the run; worker 1 wrote only into its scratch dir.
    assert os.path.isfile(out / "model.keras") and not os.path.exists(f"{out}.partial")
    assert sorted(os.listdir(root)) == ["run", "w1"], os.listdir(root)
    chief = _keras_weights(out / "model.keras")
    worker = _keras_weights(root / "w1" / "run.partial" / "model.keras")
    assert chief.keys() == worker.keys() and len(chief) > 10
    for name in chief:  # the all-reduce gives both the same update: bit for bit
        np.testing.assert_array_equal(chief[name], worker[name], err_msg=name)
    metrics = _read_json(out / "metrics.json")
    assert metrics["strategy"]["workers"] == 2 and metrics["strategy"]["replicas"] == 2


def test_a_killed_worker_makes_the_other_fail_with_a_clear_message(csv, tiny_bert_dir,
                                                                    tmp_path):
    out = tmp_path / "run"
    procs = _start_workers(csv, tiny_bert_dir, out, tmp_path,
                           ["--epochs", "20", "--checkpoint-every", "2", "--quiet"],
                           TFMP_COLLECTIVE_TIMEOUT="15")
    chief, worker = procs
    deadline = time.monotonic() + TIMEOUT
    # Training is under way once the chief has written its step-2 checkpoint.
    while not os.path.exists(f"{out}.partial/checkpoints/latest"):
        if time.monotonic() > deadline or chief.poll() is not None:
            for p in procs:
                p.kill()
            pytest.fail("training did not start: " + chief.communicate()[1][-3000:])
        time.sleep(0.5)
    time.sleep(2)
    worker.kill()
    start = time.monotonic()
    try:
        _, err = chief.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        chief.kill()
        pytest.fail("the chief hung after its peer was killed")
    worker.communicate()
    print(f"chief failed {time.monotonic() - start:.0f} s after the kill: "
          f"{err.strip().splitlines()[-1]}")
    assert chief.returncode == 3, err[-3000:]
    assert "lost contact with the others" in err and "--resume" in err, err[-3000:]


@pytest.mark.slow
def test_workers_take_the_chiefs_auto_policy_when_they_would_choose_differently(
        two_workers):
    # Both must train under the chief's choice (see the fixture).
    root, out = two_workers
    chief = _read_json(out / "config.json")["policy"]
    worker = _read_json(root / "w1" / "run.partial" / "config.json")["policy"]
    assert chief["name"] == worker["name"] == "float32", (chief, worker)
    assert "chief" in worker["reason"] or worker["reason"] == chief["reason"]
