"""One fine-tuning run: a `TrainConfig` in, a run directory out.

    from tfmp import TrainConfig, train
    result = train(TrainConfig(data="airline", policy="mixed_float16", out="runs/demo"))
    print(result.metrics["accuracy"])

The CLI, the notebooks and this API all build the same `TrainConfig`. Inputs are
validated (policy, data, labels, splits, model directory) before anything is written;
the run is assembled in `<out>.partial/`, renamed to `<out>` once complete (`rundir`).

While it trains, `<out>.partial/checkpoints/` holds the newest two checkpoints
(`tfmp.checkpoint`, written in the background by `tfmp.checkpoint_saver`); a run killed
at any moment continues with `train(resume="runs/demo")` (`tfmp train --resume`) and ends
with exactly the model an uninterrupted run would have (batch order: fixed per epoch).

Under a `tf.distribute` strategy (`TrainConfig.strategy`, `tfmp.distribute`) the
model and optimizer are built in its scope and `batch_size` is the global batch.
Only the chief writes the run directory; `RunResult.run_dir` is None elsewhere.
"""

import dataclasses
import math
import os
import signal
import sys
import time

import keras
import numpy as np

from tfmp import adaptive, callbacks, checkpoint, data, distribute, files, headroom, lost_updates
from tfmp import lora, memory, models, optimizer, precision, recovery, report, rundir, runrecord
from tfmp import checkpoint_saver, families, signals, xla_warmup
from tfmp.config import TrainConfig, config_differences, config_hash
from tfmp.errors import Interrupted, TrainingStopped, UserError


@dataclasses.dataclass
class RunResult:
    run_dir: str
    policy: precision.Policy
    metrics: dict
    history: dict
    model: keras.Model
    label_map: data.LabelMap


def compile_classifier(model, policy, total_steps, config):
    """Compiles `model` for training with tfmp's optimizer (loss-scaled iff `policy` says)."""
    opt = optimizer.build_optimizer(policy, total_steps, config)
    models.apply_transforms(model, training=True)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        # The wrap decision is tfmp's (`policy.loss_scaling`), not Keras' implicit one.
        auto_scale_loss=False,
    )
    return model


@dataclasses.dataclass
class _Run:
    """Everything one run has resolved before it builds a model."""

    config: TrainConfig
    dist: distribute.Distribution
    policy: precision.Policy
    out: str
    data_sha: str | None
    examples: data.Examples
    label_map: data.LabelMap
    splits: data.Splits
    resume: rundir.ResumePoint | None
    log: object
    verbose: int
    source: object = None  # builds and prepares the model instead (tfmp.compress)
    extra_callbacks: tuple = ()


def _config_to_run(config, resume):
    """(config, resume point): the config a run trains with, and where it resumes from."""
    if isinstance(config, dict):
        config = TrainConfig.from_json(config)
    if resume is None:
        if config is None:
            raise UserError("train() needs a TrainConfig, or resume=RUN_DIR.")
        return config, None
    point = rundir.resume_point(resume)
    if config is not None:
        diffs = config_differences(point.config, config)
        if diffs:
            raise UserError(
                f"Cannot resume '{point.staging}': the config differs from the checkpoint's "
                f"in what changes the result ({'; '.join(diffs)}). Resume without those "
                "flags, or start a new run with another --out.")
    return dataclasses.replace(config or point.config, out=point.out), point


def train(config=None, verbose=1, resume=None, source=None):
    """Runs one fine-tune and writes its run directory. Returns a `RunResult`.

    Args:
        config: `TrainConfig` (or its JSON dict). With `resume`, None means the
            config saved in the checkpoint; a given one must match it in every field
            that changes the result (see `tfmp.config.RESUMABLE_FIELDS`).
        verbose: 0 or 1.
        resume: None, or the `--out` (or `<out>.partial`) of an interrupted run: it
            continues from its newest intact checkpoint and ends where an
            uninterrupted run would have.
        source: None, or what builds the model instead of `models.load_classifier`:
            `build(run)` -> classifier, `prepare(model, run)` -> extra callbacks (after
            compiling), and `record`, a JSON dict kept in checkpoints and config.json
            (`tfmp.compress`).
    """
    log = print if verbose else (lambda *a, **k: None)
    config, point = _config_to_run(config, resume)
    config.validate()
    # First: a multi-worker strategy or logical CPUs need TF's devices not yet started.
    dist = distribute.resolve(config.strategy)
    log(f"Strategy: {dist.describe()}")
    if config.batch_size < dist.num_replicas:
        raise UserError(f"--batch-size {config.batch_size} is the global batch, split "
                        f"across {dist.num_replicas} replicas: give at least one each.")
    # --- Validate everything before writing anything (the lock file aside). ---
    model_dir = config.model or models.default_model_dir()
    out = point.out if point else rundir.check_out(config, protected=(config.data, model_dir))
    lock = files.DirLock(out, rundir.command_line())
    if dist.is_chief:  # the other workers write a scratch copy no one reads
        lock.acquire()
    try:
        with signals.interruptible():
            return _locked(config, point, dist, out, log, verbose, source)
    finally:
        lock.release()


def _locked(config, point, dist, out, log, verbose, source=None):
    """`train` from the lock on: resume point, policy, data, then the run in scope."""
    if point is None:
        point = rundir.continue_interrupted(config, out, log)
        if point:
            config = dataclasses.replace(config, out=point.out)
    if point and point.state.get("model_source") and source is None:
        raise UserError(f"'{out}' is an interrupted `tfmp compress` run: resume it by running "
                        "the same `tfmp compress` command again.")
    policy = _policy(config, point, dist)
    log(f"Precision policy: {policy.name} ({policy.reason})")
    data_sha = checkpoint.file_fingerprint(config.data)
    if point and point.state.get("data_sha256") != data_sha:
        raise UserError(f"Cannot resume '{out}': the data file '{config.data}' changed since "
                        "the checkpoint was written. Restore it, or start a new run.")
    examples, label_map, splits = data.prepare_data(config)
    if len(splits.train) < config.batch_size:
        raise UserError(
            f"{examples.source}: the training split has {len(splits.train)} examples, fewer "
            f"than one batch of {config.batch_size}. Lower --batch-size or add examples.")
    run = _Run(config, dist, policy, out, data_sha, examples, label_map, splits, point,
               log, verbose, source)
    keras.utils.set_random_seed(config.seed)
    # Everything from here on runs in the strategy's scope: the model's variables,
    # and the optimizer's (built lazily by fit, save or restore), are mirrored.
    with dist.strategy.scope():
        return _train_in_scope(run)


def _policy(config, point, dist):
    """The run's `Policy`. `auto` is resolved once, when the run starts: a resumed run
    takes the policy its checkpoint recorded, and every worker takes the chief's."""
    # The per-layer map (adaptive, recovery) is the checkpoint's: pins are not re-measured.
    layer_map = tuple(tuple(row) for row in (point.state.get("layer_map") or ())) if point else ()
    if point is not None and config.policy == "auto" and point.state.get("policy"):
        return precision.Policy(
            point.state["policy"], float32_layers=config.float32_layers, layer_map=layer_map,
            reason=point.state.get("policy_reason") or "chosen by auto when the run started")
    policy = dataclasses.replace(
        precision.resolve(config.policy, float32_layers=config.float32_layers), layer_map=layer_map)
    agreed = distribute.from_chief(dist, precision.POLICIES.index(policy.name),
                                   precision.POLICIES)
    if precision.POLICIES[agreed] != policy.name:
        policy = precision.Policy(precision.POLICIES[agreed], float32_layers=policy.float32_layers,
                                  reason="the chief's choice, which every worker follows")
    return policy


def _log_data(run, lengths):
    """Logs the data and splits; returns how many training texts are truncated."""
    config, splits = run.config, run.splits
    truncated = int(np.sum(lengths > config.seq_len))
    counts = np.bincount(splits.train.label_ids, minlength=run.label_map.num_classes)
    run.log(
        f"Data: {config.data}: {len(run.examples.texts)} examples "
        f"({', '.join(f'{n}={c}' for n, c in zip(run.label_map.names, counts))} in train); "
        f"train/validation/test = {len(splits.train)}/{len(splits.validation)}/"
        f"{len(splits.test)}; {truncated} training texts truncated to {config.seq_len} tokens.")
    return truncated


def _tokenize(splits, model):
    """(`splits` with token features or None, (train, validation, test) token lengths)."""
    parts = (splits.train, splits.validation, splits.test)
    features, lengths = data.tokenize([t for p in parts for t in p.texts], model.preprocessor,
                                      inputs=families.by_backbone(model.backbone).features)
    bounds = np.cumsum([0, *map(len, parts)])
    lengths = tuple(lengths[a:b] for a, b in zip(bounds, bounds[1:]))
    if features is None:
        return None, lengths
    return data.Splits(*(
        dataclasses.replace(part, features={k: v[a:b] for k, v in features.items()})
        for part, a, b in zip(parts, bounds, bounds[1:]))), lengths


def _train_in_scope(run):
    config, splits = run.config, run.splits
    clock = time.perf_counter()
    model = run.source.build(run) if run.source else models.load_classifier(
        config.model, num_classes=run.label_map.num_classes, sequence_length=config.seq_len,
        policy=run.policy, dropout=config.dropout)
    timings = {"build the model": time.perf_counter() - clock}
    if config.precision_map == "adaptive" and not run.resume:
        run.policy, calibration, timings["calibration"] = adaptive.calibrate(
            model, data.epoch_dataset(splits.train, config.batch_size, config.seed, 0),
            run.policy, config.calibration_batches, config.initial_loss_scale, run.log)
    clock = time.perf_counter()  # one tokenizer pass for the run (a pass costs ~0.2-1 s)
    featured, (lengths, val_lengths, _) = _tokenize(splits, model)
    timings["token lengths (for length grouping)"] = time.perf_counter() - clock
    truncated = _log_data(run, lengths)
    steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    lora.request(model, config)  # enabled by compiling (models.TRANSFORMS)
    compile_classifier(model, run.policy, total_steps, config)
    if lora.adapted(model):
        run.log(lora.summary(model))
    memory.configure(model, config, run.log)  # --remat, --grad-accum
    if run.source:
        run.extra_callbacks = tuple(run.source.prepare(model, run))
    if run.dist.num_replicas > 1:  # workarounds for Keras 3.15, see tfmp.distribute
        distribute.build_from_first_replica(model)
    if run.dist.num_workers > 1:
        distribute.vectorize_step_logs(model)
    run.log(f"Optimizer: {type(model.optimizer).__name__}" + (
        f" ({optimizer.loss_scaling(config).describe()} loss scale) around AdamW"
        if run.policy.loss_scaling else " (no loss scaling)"))
    if not model.optimizer.built:  # left to Keras, it is built inside the first traced
        model.optimizer.build(model.trainable_variables)  # step, which is then traced twice
    if featured is not None and models.takes_token_features(model):
        run.splits = featured  # fit and predict take token features, not texts

    staging = rundir.open_staging(run.out, run.dist, resuming=run.resume is not None)
    if config.precision_map == "adaptive" and not run.resume and run.dist.is_chief:
        adaptive.write(staging, run.policy, calibration)
    history = {}
    if run.resume:
        checkpoint.restore(model, run.resume.checkpoint, run.resume.state)
        history = run.resume.state.get("history") or {}
    try:
        with models.preprocessing_traced_once(model):  # every epoch's fit and the test
            fitted = _fit(run, model, staging, history, steps_per_epoch,
                          lengths if config.length_grouping else None, val_lengths)
            # A finished run is never committed with NaN weights (its checksum would pass).
            checkpoint.check_finite(model, optimizer.global_step(model.optimizer))
            clock = time.perf_counter()
            metrics = runrecord.test_metrics(run, model, fitted)
            timings["test evaluation"] = time.perf_counter() - clock
            (saver := fitted["saver"]).wait()  # its last write overlapped the test evaluation
        metrics["timings"] = {**timings, **fitted["timings"], "waiting for the last checkpoint "
                              "write": saver.seconds - fitted["timings"]["checkpoints"]}
        metrics["checkpoint_write_seconds"] = saver.write_seconds  # overlapped: not a phase
        metrics["memory"] = fitted["memory"].summary(config)
        run_config = runrecord.run_config(run, model, total_steps, steps_per_epoch, truncated)
        text_report = metrics["test"].pop("classification_report")
        if lora.adapted(model):  # adapters on their own; model.keras: W + A·B·scale, float32
            run_config["lora"] = lora.save_adapters(model, os.path.join(staging, lora.ADAPTERS),
                                                    config.model or models.default_model_dir())
            model = models.rebuild(model, run.policy)
        rundir.write_run_files(staging, run_config, metrics, history, run.label_map,
                               text_report)
        models.save_inference_model(model, os.path.join(staging, rundir.MODEL))
        report.write_report(staging, run_config, metrics, history,
                            scalars=fitted["monitor"].scalars,
                            diagnosis=fitted["monitor"].diagnosis)
    except BaseException:
        # Partial results stay in <out>.partial for inspection; <out> is untouched.
        run.log(f"Run failed; partial results kept in {staging}", file=sys.stderr)
        raise
    run_dir = rundir.finish(staging, run.out, run.dist)
    run.log(f"Run directory: {run_dir}" if run_dir else
            f"Worker {run.dist.worker_index} done; the chief wrote {run.out}")
    return RunResult(run_dir=run_dir, policy=run.policy, metrics=metrics,
                     history=history, model=model, label_map=run.label_map)


def _fit_callbacks(run, staging, history, steps_per_epoch, total_steps, lengths, model):
    """(monitor, saver, overflow recovery or None, the callbacks for `fit` in order)."""
    config, splits = run.config, run.splits

    def checkpoint_state(epoch_logs=None):
        if epoch_logs:  # an epoch end: its metrics belong to the run's history
            for k, v in epoch_logs.items():
                history.setdefault(k, []).append(float(v))
        step = optimizer.global_step(model.optimizer)
        return {"config": config.to_json(), "config_hash": config_hash(config),
                "data_sha256": run.data_sha, "seed": config.seed, "policy": run.policy.name,
                "policy_reason": run.policy.reason, "layer_map": run.policy.layer_map,
                "steps_per_epoch": steps_per_epoch, "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch, "history": history,
                "model_source": run.source.record if run.source else None}

    logs = os.path.join(staging, rundir.LOGS)
    monitor = callbacks.TrainingMonitor(
        logs, update_freq=50, batch_size=config.batch_size, planned_steps=total_steps,
        diagnose_data=(data.epoch_dataset(splits.train, config.batch_size, config.seed, 0,
                                          lengths=lengths, pool_batches=config.length_pool)
                       if run.policy.loss_scaling else None))
    saver = checkpoint_saver.CheckpointSaver(os.path.join(staging, rundir.CHECKPOINTS),
                                       config.checkpoint_every, checkpoint_state)
    watcher = recovery.watcher_for(run, saver, history, monitor)
    return monitor, saver, watcher, [
        # First: a signal raised after a step, before that step's other callbacks.
        signals.StopAtBatchEnd(),
        xla_warmup.XlaWarmup(splits.train, config, lengths, (splits.validation, splits.test)),
        monitor,  # before the guard: the step that stops training is logged
        *([watcher] if watcher else []),  # before the guard: a burst is recovered
        callbacks.LossScaleGuard(skip_window=config.skip_window,
                                 max_skip_share=config.max_skip_share),
        saver,
        *([lost_updates.LostUpdateMonitor(logs, config.lost_update_every)]
          if config.lost_update_every else []),
        *([headroom.HeadroomImage(logs, monitor.diagnose_data, config.headroom_every)]
          if config.headroom_every and monitor.diagnose_data is not None else []),
        # update_freq="epoch": with an integer, Keras 3.15 leaves its record_if(batch %
        # update_freq == 0) on at epoch end: no epoch curves. Per step: the monitor.
        keras.callbacks.TensorBoard(logs, update_freq="epoch"),
    ]


def _fit(run, model, staging, history, steps_per_epoch, lengths, val_lengths=None):
    """Trains the remaining epochs; returns {"monitor", "seconds", "steps", "start_step"}."""
    config, dist = run.config, run.dist
    shard = distribute.shard_by_data if dist.num_workers > 1 else (lambda ds: ds)
    val_ds = (shard(data.make_dataset(data.by_length(run.splits.validation, model.preprocessor,
                                                     val_lengths), None, data.EVAL_BATCH_SIZE))
              if len(run.splits.validation) else None)
    start_step = optimizer.global_step(model.optimizer)
    position = checkpoint.Position.from_step(start_step, steps_per_epoch)
    if run.resume:
        run.log(f"Resuming from {run.resume.checkpoint}: step {start_step} of "
                f"{steps_per_epoch * config.epochs} (epoch {position.epoch + 1}, "
                f"{position.batch} of {steps_per_epoch} batches done).")
    monitor, saver, watcher, fit_callbacks = _fit_callbacks(
        run, staging, history, steps_per_epoch, steps_per_epoch * config.epochs, lengths, model)
    phases = callbacks.PhaseTimer()
    fit_callbacks.insert(1, phases)  # after StopAtBatchEnd, before the others' work
    fit_callbacks[2:2] = run.extra_callbacks  # after a step, before it is logged or saved
    fit_callbacks.append(memory.PeakMemory())
    start = time.perf_counter()
    try:
        # One fit per epoch, each on that epoch's fixed batch order; a resumed
        # epoch skips the batches already trained (and a recovery goes back).
        def fit_epoch(epoch, skip):
            model.fit(
                shard(data.epoch_dataset(run.splits.train, config.batch_size, config.seed,
                                         epoch, skip, lengths=lengths,
                                         pool_batches=config.length_pool)),
                validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1,
                shuffle=False, callbacks=fit_callbacks, verbose=run.verbose)
        recovery.run_epochs(start_step, steps_per_epoch, config.epochs, fit_epoch, watcher)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (tfmp.signals)
        for callback in fit_callbacks:  # TensorBoard's buffered events reach the disk
            if isinstance(callback, (keras.callbacks.TensorBoard, callbacks.TrainingMonitor)):
                callback.on_train_end()
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        what = "Interrupted" if signum == signal.SIGINT else f"Stopped by signal {signum}"
        try:
            where = f"checkpoint saved to {saver.save()}"
        except TrainingStopped as stopped:  # non-finite weights are not saved
            where = f"no checkpoint saved ({stopped})"
        print(f"\n{what}: {where}. Resume with: tfmp train --resume {run.out}",
              file=sys.stderr)
        raise
    except TrainingStopped as e:
        try:
            note = f"A checkpoint was saved to {saver.save()}."
        except TrainingStopped:  # a NaN checkpoint would only resume into NaN
            note = f"The weights are not finite, so none was saved; see {saver.root}."
        raise TrainingStopped(f"{e} {note}") from e
    except Exception as e:  # a collective failed: say why, not a bare TF error
        import tensorflow as tf

        if dist.num_workers > 1 and isinstance(e, tf.errors.OpError):
            raise distribute.worker_lost(dist, e) from e
        raise
    seconds = time.perf_counter() - start
    timings = dict(phases.phases(), checkpoints=saver.seconds)
    timings["other (callbacks, input pipeline, between epochs)"] = seconds - sum(timings.values())
    return {"monitor": monitor, "seconds": seconds, "shard": shard, "timings": timings,
            "saver": saver, "memory": fit_callbacks[-1],
            "recoveries": watcher.recoveries if watcher else [],
            "steps": optimizer.global_step(model.optimizer) - start_step,
            "start_step": start_step}
