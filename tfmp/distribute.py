"""Which `tf.distribute` strategy a run trains under, and which process is the chief.

    dist = distribute.resolve("auto")
    with dist.strategy.scope():
        model = ...; model.compile(...)
    if dist.is_chief:
        ...  # write checkpoints, logs, the run directory

Strategies (`--strategy`):
    auto          multi_worker when `TF_CONFIG` names more than one task, else tpu when
                  a TPU is found, else mirrored when more than one GPU is, else none.
    none          TensorFlow's default strategy: one device.
    mirrored      `MirroredStrategy`: every GPU of this host (or, with
                  `TFMP_LOGICAL_CPUS=N`, N logical CPU devices: a functional check).
    multi_worker  `MultiWorkerMirroredStrategy` over the hosts named in `TF_CONFIG`.
    tpu           `TPUStrategy` on the TPU this host can reach.

`TrainConfig.batch_size` is always the global batch: Keras splits each batch across
the replicas (and, under multi_worker, across hosts), so one step sees the same
examples whatever the number of devices. The learning rate is not rescaled.

Under multi_worker every collective (the gradient all-reduce) times out after
`COLLECTIVE_TIMEOUT` seconds (`TFMP_COLLECTIVE_TIMEOUT`), so a worker that dies makes
the others fail with an error instead of waiting forever.
"""

import dataclasses
import json
import os

from tfmp.errors import TrainingStopped, UserError

CHOICES = ("auto", "none", "mirrored", "multi_worker", "tpu")
COLLECTIVE_TIMEOUT = 120.0  # seconds; a healthy all-reduce of MiniLM takes well under 1


class WorkerLost(TrainingStopped):
    """A collective failed or timed out under multi_worker: another worker is gone."""


def worker_lost(dist, error):
    """The `WorkerLost` to raise for a TensorFlow `error` during multi-worker training."""
    timeout = float(os.environ.get("TFMP_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT))
    first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return WorkerLost(
        f"Worker {dist.worker_index} of {dist.num_workers} lost contact with the others "
        f"({type(error).__name__}: {first_line}). Another worker probably stopped or "
        f"became unreachable (collectives time out after {timeout:g} s, "
        "TFMP_COLLECTIVE_TIMEOUT). Restart every worker with --resume on the chief's "
        "run directory to continue from the last checkpoint.")


@dataclasses.dataclass
class Distribution:
    """A strategy and this process' place in it.

    Args:
        name: str. One of `CHOICES` except "auto": what was created.
        strategy: `tf.distribute.Strategy`.
        reason: str. Why this strategy (what `auto` found, or that it was asked for).
        is_chief: bool. Whether this process writes checkpoints, logs and the run.
        worker_index: int. This worker's index in its task type (0 on one host).
        num_workers: int. Hosts taking part (1 except under multi_worker).
    """

    name: str
    strategy: object
    reason: str
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    def describe(self):
        where = (f"; worker {self.worker_index} of {self.num_workers}"
                 f"{' (chief)' if self.is_chief else ''}" if self.num_workers > 1 else "")
        return f"{self.name}, {self.num_replicas} replica(s){where} ({self.reason})"


def _tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]!r}.") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster", {}), dict):
        raise UserError('TF_CONFIG must be a JSON object like {"cluster": {"worker": '
                        '["host0:port", "host1:port"]}, "task": {"type": "worker", '
                        f'"index": 0}}}}; got {raw[:200]!r}.')
    return config


def _cluster_size(config):
    return sum(len(v) for k, v in config.get("cluster", {}).items()
               if k in ("chief", "worker"))


def chief_of(config):
    """(is_chief, worker index, number of workers) of this process under `config`."""
    cluster = config.get("cluster", {})
    task = config.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    # Keras' and TF's rule: the "chief" task if the cluster has one, else worker 0.
    is_chief = kind == "chief" or ("chief" not in cluster and kind == "worker" and index == 0)
    return is_chief, index, max(_cluster_size(config), 1)


def _logical_cpus(tf):
    """Splits the CPU into `TFMP_LOGICAL_CPUS` devices (before TF initialises them)."""
    count = int(os.environ.get("TFMP_LOGICAL_CPUS", "0") or 0)
    if count < 2:
        return None
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:  # devices already initialised in this process
        raise UserError(
            f"TFMP_LOGICAL_CPUS={count} must take effect before TensorFlow starts its "
            f"devices, and it had already ({e}). Set it before the process runs any "
            "TensorFlow op (e.g. run `tfmp train` in a fresh process).") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _find_tpu(tf):
    """A TPU cluster resolver: this TPU VM's chips, or the TPU named by `TPU_NAME`; or None.

    Nothing else is probed: a resolver without either asks the GCE metadata server,
    which on other machines only costs a network timeout.
    """
    local = bool(tf.config.list_physical_devices("TPU"))
    if not (local or os.environ.get("TPU_NAME")):
        return None
    try:
        return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local" if local else None)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"A TPU is configured (TPU_NAME={os.environ.get('TPU_NAME')!r}) "
                        f"but cannot be reached: {e}. Unset TPU_NAME or use "
                        "--strategy none.") from None


def resolve(name="auto"):
    """Creates the strategy `name` asks for (see the module docstring)."""
    import tensorflow as tf

    if name not in CHOICES:
        raise UserError(f"--strategy must be one of {', '.join(CHOICES)}; got {name!r}.")
    config = _tf_config()
    reason = "asked for with --strategy"
    if name == "auto":
        if _cluster_size(config) > 1:
            name, reason = "multi_worker", f"TF_CONFIG names {_cluster_size(config)} workers"
        elif _find_tpu(tf) is not None:
            name, reason = "tpu", "a TPU was found"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
            reason = f"{len(tf.config.list_physical_devices('GPU'))} GPUs on this host"
        else:
            name, reason = "none", "one device, no TF_CONFIG cluster"

    if name == "none":
        return Distribution("none", tf.distribute.get_strategy(), reason)
    if name == "mirrored":
        devices = _logical_cpus(tf)
        if devices:
            reason += f"; {len(devices)} logical CPU devices (TFMP_LOGICAL_CPUS)"
        return Distribution("mirrored", tf.distribute.MirroredStrategy(devices), reason)
    if name == "multi_worker":
        if _cluster_size(config) < 1:
            raise UserError(
                "--strategy multi_worker needs TF_CONFIG naming the workers, e.g. "
                '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                '"task": {"type": "worker", "index": 0}} (see README, "More than one '
                'machine").')
        timeout = float(os.environ.get("TFMP_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT))
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=options)
        except RuntimeError as e:
            raise UserError(
                "MultiWorkerMirroredStrategy must be created before TensorFlow starts "
                f"its devices ({e}). Run `tfmp train` in a fresh process.") from None
        is_chief, index, workers = chief_of(config)
        return Distribution("multi_worker", strategy, reason, is_chief, index, workers)
    resolver = _find_tpu(tf)  # name == "tpu"
    if resolver is None:
        raise UserError("--strategy tpu, but no TPU was found. Use --strategy auto or none.")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return Distribution("tpu", tf.distribute.TPUStrategy(resolver), reason)


def shard_by_data(dataset):
    """`dataset` with auto-sharding by element: in-memory text has no files to split."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def build_from_first_replica(model):
    """Works around Keras 3.15 failing to build `model` under a multi-replica strategy.

    Before the first step Keras' TF trainer averages the first distributed batch
    across replicas (`strategy.reduce("MEAN", ...)`) only to learn its shapes and
    dtypes; keras-hub's boolean `padding_mask` cannot be averaged ("Value for attr
    'T' of bool is not in the list of allowed values"). The first replica's part of
    the batch has the same structure and dtypes, so it is used instead.
    """
    import tensorflow as tf

    build = model._maybe_symbolic_build

    def first_replica_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tf.nest.map_structure(
                    lambda v: (model.distribute_strategy.experimental_local_results(v)[0]
                               if isinstance(v, tf.distribute.DistributedValues) else v),
                    batch)
                break
        return build(iterator=None, data_batch=data_batch)

    model._maybe_symbolic_build = first_replica_build
    return model


def vectorize_step_logs(model):
    """Works around Keras 3.15's multi-worker `fit` failing on its own scalar logs.

    Under `MultiWorkerMirroredStrategy` Keras averages each step's logs with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on a scalar ("Invalid
    reduction dimension 0 for input with 0 dimensions"). Each log is given a leading
    axis of 1 on the way out of the step; the reduction takes it away again.
    """
    import tensorflow as tf

    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def vectorized(data, step=step):
            return tf.nest.map_structure(
                lambda v: tf.reshape(v, [1]) if v.shape.rank == 0 else v, step(data))

        setattr(model, name, vectorized)
    return model


def from_chief(dist, index, choices):
    """The chief's `index` into `choices`, agreed by every worker (one all-reduce).

    Used for what each worker would otherwise decide on its own and could decide
    differently, such as `--policy auto` from a timing probe. One host: `index` itself.
    """
    if dist.num_workers <= 1:
        return index
    import tensorflow as tf

    # The chief's replicas vote for its index, the others' for nothing; strategies
    # reduce only by SUM or MEAN, and a one-hot sum does not depend on replica counts.
    vote = tf.one_hot(index, len(choices)) * (1.0 if dist.is_chief else 0.0)
    votes = dist.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                 dist.strategy.run(lambda: tf.identity(vote)), axis=None)
    votes = votes.numpy()
    if votes.max() <= 0:
        raise UserError(f"Workers could not agree on one of {choices}: the chief's vote "
                        "did not arrive.")
    return int(votes.argmax())
