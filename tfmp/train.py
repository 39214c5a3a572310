"""One fine-tuning run: a `TrainConfig` in, a run directory out.

    from tfmp import TrainConfig, train
    result = train(TrainConfig(data="airline", policy="mixed_float16", out="runs/demo"))
    print(result.metrics["accuracy"])

The CLI (`tfmp train`), the notebooks and this API all build the same `TrainConfig`.
Inputs are validated (policy, data, labels, splits, model directory) before anything
is written; the run is assembled in `<out>.partial/` and renamed to `<out>` only
when it is complete, so a failed run never leaves a directory that looks finished.

While it trains, `<out>.partial/checkpoints/` holds the newest two checkpoints
(`tfmp.checkpoint`); a run killed at any moment continues with
`train(resume="runs/demo")` (`tfmp train --resume runs/demo`) and ends with exactly
the model an uninterrupted run would have produced. Each epoch's batch order is a
fixed function of (seed, epoch), so a resumed epoch skips exactly the batches done.

Under a `tf.distribute` strategy (`TrainConfig.strategy`, `tfmp.distribute`) the
model and optimizer are built in its scope and `batch_size` is the global batch.
Only the chief writes the run directory. Every other worker runs the same code (the
test-split evaluation is a collective that needs all of them) and writes the same
files into a scratch directory: `TFMP_WORKER_DIR`, else a temporary one, removed at
the end. `RunResult.run_dir` is None there.
"""

import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings

import keras
import numpy as np

from tfmp import callbacks as tfmp_callbacks
from tfmp import checkpoint, data, distribute, models, optimizer, precision, report
from tfmp import layers as tfmp_layers
from tfmp.config import TrainConfig  # noqa: F401  (re-exported: tfmp.train.TrainConfig)
from tfmp.errors import TrainingStopped, UserError


@dataclasses.dataclass
class RunResult:
    run_dir: str
    policy: precision.Policy
    metrics: dict
    history: dict
    model: keras.Model
    label_map: data.LabelMap


def prepare_data(config, preprocessor=None):
    """Loads, labels and splits the data of `config`: (examples, label_map, splits)."""
    examples = data.load_examples(
        config.data,
        text_column=config.text_column,
        label_column=config.label_column,
        encoding=config.encoding,
        on_decode_error=config.on_decode_error,
    )
    if config.labels:
        label_map = data.LabelMap(config.labels)
    else:
        label_map = data.LabelMap.from_labels(examples.labels)
    label_ids = label_map.ids(examples.labels, source=examples.source, rows=examples.rows)
    splits = data.split_examples(
        examples.texts,
        label_ids,
        validation_fraction=config.validation_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed,
        max_train_examples=config.max_train_examples,
    )
    return examples, label_map, splits


def compile_classifier(model, policy, total_steps, config):
    """Compiles `model` with tfmp's optimizer for `policy` (wrapped iff float16)."""
    opt = optimizer.build_optimizer(
        policy,
        total_steps=total_steps,
        learning_rate=config.lr,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        clipnorm=config.clipnorm,
        initial_scale=config.initial_loss_scale,
        dynamic_growth_steps=config.dynamic_growth_steps,
        min_scale=config.min_loss_scale,
    )
    # Training only: the fused GELU is an XLA kernel, which export graphs should not hold.
    tfmp_layers.use_fused_gelu(model)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        # The wrap decision is tfmp's (`policy.loss_scaling`), not Keras' implicit one.
        auto_scale_loss=False,
    )
    return model


def _check_out_dir(config):
    out = os.path.abspath(config.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        if not config.overwrite:
            raise UserError(
                f"Run directory '{config.out}' already exists and is not empty. Pass "
                "--overwrite to replace it, or choose another --out."
            )
    return out


def _versions():
    import keras_hub
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "machine": platform.machine(),
        "processor": precision._read_cpuinfo()[0] or platform.processor(),
        "cpus": os.cpu_count(),
    }


def _texts_only(texts, label_ids):
    return texts


def evaluate(model, split, label_map, batch_size=64, shard=None):
    """Accuracy, macro-F1 and scikit-learn's classification report on `split`."""
    from sklearn.metrics import classification_report, f1_score

    ds = data.make_dataset(split, None, batch_size)
    if shard is not None:
        ds = shard(ds)
    logits = model.predict(ds.map(_texts_only), verbose=0)
    predicted = np.argmax(logits, axis=-1)
    truth = np.asarray(split.label_ids)
    labels = list(range(label_map.num_classes))
    counts = np.bincount(truth, minlength=label_map.num_classes)
    return {
        "examples": int(len(truth)),
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro",
                                   zero_division=0)),
        "majority_class_share": float(counts.max() / counts.sum()),
        "classification_report": classification_report(
            truth, predicted, labels=labels, target_names=list(label_map.names),
            digits=4, zero_division=0,
        ),
        "classification_report_dict": classification_report(
            truth, predicted, labels=labels, target_names=list(label_map.names),
            output_dict=True, zero_division=0,
        ),
    }


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def resume_point(run_dir):
    """(staging dir, checkpoint path, checkpoint state, saved `TrainConfig`) of a run to resume.

    `run_dir` is the `--out` of an interrupted run or its `<out>.partial`.
    """
    staging = checkpoint.staging_dir(run_dir)
    root = os.path.join(staging, "checkpoints")
    found = checkpoint.find_latest(root)
    if found is None:
        raise UserError(f"'{root}' holds no intact checkpoint, so there is nothing to resume. "
                        "Start the run again without --resume (with --overwrite).")
    path, state = found
    return staging, path, state, TrainConfig.from_json(state["config"])


def _weights_finite(model):
    return all(np.isfinite(w).all() for w in model.get_weights())


def train(config=None, verbose=1, resume=None):
    """Runs one fine-tune and writes its run directory. Returns a `RunResult`.

    Args:
        config: `TrainConfig` (or its JSON dict). With `resume`, None means the
            config saved in the checkpoint; a given one must match it in every field
            that changes the result (see `tfmp.checkpoint.RESUMABLE_FIELDS`).
        verbose: 0 or 1.
        resume: None, or the `--out` (or `<out>.partial`) of an interrupted run: it
            continues from its newest intact checkpoint and ends where an
            uninterrupted run would have.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_json(config)
    log = print if verbose else (lambda *a, **k: None)
    ckpt = None
    if resume is not None:
        staging, ckpt_path, ckpt_state, saved = resume_point(resume)
        if config is not None:
            diffs = checkpoint.config_differences(saved, config)
            if diffs:
                raise UserError(
                    f"Cannot resume '{staging}': the config differs from the checkpoint's in "
                    f"what changes the result ({'; '.join(diffs)}). Resume without those "
                    "flags, or start a new run with another --out.")
        config = dataclasses.replace(config or saved, out=staging[:-len(".partial")])
        ckpt = (ckpt_path, ckpt_state)
    elif config is None:
        raise UserError("train() needs a TrainConfig, or resume=RUN_DIR.")
    config.validate()
    # First: a multi-worker strategy or logical CPUs need TF's devices not yet started.
    dist = distribute.resolve(config.strategy)
    log(f"Strategy: {dist.describe()}")
    if config.batch_size < dist.num_replicas:
        raise UserError(f"--batch-size {config.batch_size} is the global batch, split "
                        f"across {dist.num_replicas} replicas: give at least one each.")

    # --- Validate everything before writing anything. ---
    policy = precision.resolve(config.policy, float32_layers=config.float32_layers)
    log(f"Precision policy: {policy.name} ({policy.reason})")
    out = os.path.abspath(config.out) if ckpt else _check_out_dir(config)
    data_sha = checkpoint.file_fingerprint(config.data)
    if ckpt and ckpt[1].get("data_sha256") != data_sha:
        raise UserError(f"Cannot resume '{out}': the data file '{config.data}' changed since "
                        "the checkpoint was written. Restore it, or start a new run.")
    examples, label_map, splits = prepare_data(config)
    if len(splits.train) < config.batch_size:
        raise UserError(
            f"{examples.source}: the training split has {len(splits.train)} examples, fewer "
            f"than one batch of {config.batch_size}. Lower --batch-size or add examples.")
    model_dir = config.model or models.default_model_dir()
    keras.utils.set_random_seed(config.seed)
    # Everything from here on runs in the strategy's scope: the model's variables,
    # and the optimizer's (built lazily by fit, save or restore), are mirrored.
    with dist.strategy.scope():
        return _train_in_scope(config, dist, policy, out, data_sha, examples, label_map,
                               splits, model_dir, ckpt, log, verbose)


def _train_in_scope(config, dist, policy, out, data_sha, examples, label_map, splits,
                    model_dir, ckpt, log, verbose):
    model = models.load_classifier(
        model_dir, num_classes=label_map.num_classes, sequence_length=config.seq_len,
        policy=policy, dropout=config.dropout,
    )
    train_lengths = data.token_lengths(splits.train.texts, model.preprocessor)
    long_texts = int(np.sum(train_lengths > config.seq_len))
    if not config.length_grouping:
        train_lengths = None
    stats = dict(examples.stats, long_texts_truncated_in_train=long_texts)
    log(
        f"Data: {config.data}: {len(examples.texts)} examples "
        f"({', '.join(f'{n}={c}' for n, c in zip(label_map.names, np.bincount(splits.train.label_ids, minlength=label_map.num_classes)))} in train); "
        f"train/validation/test = {len(splits.train)}/{len(splits.validation)}/"
        f"{len(splits.test)}; {long_texts} training texts truncated to {config.seq_len} tokens."
    )

    shard = distribute.shard_by_data if dist.num_workers > 1 else (lambda ds: ds)
    val_ds = (shard(data.make_dataset(splits.validation, None, 64))
              if len(splits.validation) else None)
    steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    compile_classifier(model, policy, total_steps, config)
    if dist.num_replicas > 1:  # workarounds for Keras 3.15, see tfmp.distribute
        distribute.build_from_first_replica(model)
    if dist.num_workers > 1:
        distribute.vectorize_step_logs(model)
    log(f"Optimizer: {type(model.optimizer).__name__}"
        + (" (dynamic loss scale) around AdamW" if policy.loss_scaling else " (no loss scaling)"))

    # --- Train into <out>.partial, rename when complete (the chief). ---
    if dist.is_chief:
        staging = out + ".partial"
    else:  # the same writes, where no one reads them
        staging = os.environ.get("TFMP_WORKER_DIR") or tempfile.mkdtemp(
            prefix=f"tfmp-worker{dist.worker_index}-")
        staging = os.path.join(os.path.abspath(staging), "run.partial")
    ckpt_root = os.path.join(staging, "checkpoints")
    history = {}
    if ckpt:
        checkpoint.remove_temporaries(ckpt_root)
        checkpoint.restore(model, *ckpt)
        history = ckpt[1].get("history") or {}
    else:
        shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, exist_ok=True)
    start_step = checkpoint.global_step(model.optimizer)
    position = checkpoint.Position.from_step(start_step, steps_per_epoch)
    if ckpt:
        log(f"Resuming from {ckpt[0]}: step {start_step} of {total_steps} (epoch "
            f"{position.epoch + 1}, {position.batch} of {steps_per_epoch} batches done).")

    def checkpoint_state(epoch_logs=None):
        if epoch_logs:  # an epoch end: its metrics belong to the run's history
            for k, v in epoch_logs.items():
                history.setdefault(k, []).append(float(v))
        step = checkpoint.global_step(model.optimizer)
        return {"config": config.to_json(), "config_hash": checkpoint.config_hash(config),
                "data_sha256": data_sha, "seed": config.seed, "policy": policy.name,
                "steps_per_epoch": steps_per_epoch, "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch, "history": history}

    try:
        monitor = tfmp_callbacks.TrainingMonitor(
            os.path.join(staging, "logs"), update_freq=50, batch_size=config.batch_size,
            planned_steps=total_steps,
            diagnose_data=(data.epoch_dataset(splits.train, config.batch_size, config.seed, 0,
                                              lengths=train_lengths,
                                              pool_batches=config.length_pool)
                           if policy.loss_scaling else None))
        saver = checkpoint.CheckpointSaver(ckpt_root, config.checkpoint_every,
                                           checkpoint_state)
        fit_callbacks = [
            monitor,  # before the guard: the step that stops training is logged
            tfmp_callbacks.LossScaleGuard(skip_window=config.skip_window,
                                          max_skip_share=config.max_skip_share),
            saver,
            # update_freq="epoch": with an integer, Keras 3.15 leaves its
            # record_if(batch % update_freq == 0) in force at epoch end and drops
            # the epoch_loss/epoch_accuracy curves. Per-step curves: the monitor.
            keras.callbacks.TensorBoard(os.path.join(staging, "logs"), update_freq="epoch"),
        ]
        start = time.perf_counter()
        try:
            # One fit per epoch, each on that epoch's fixed batch order; a resumed
            # epoch skips the batches already trained.
            for epoch in range(position.epoch, config.epochs):
                skip = position.batch if epoch == position.epoch else 0
                model.fit(
                    shard(data.epoch_dataset(splits.train, config.batch_size, config.seed,
                                             epoch, skip, lengths=train_lengths,
                                             pool_batches=config.length_pool)),
                    validation_data=val_ds, initial_epoch=epoch, epochs=epoch + 1,
                    shuffle=False, callbacks=fit_callbacks, verbose=verbose)
        except KeyboardInterrupt:
            path = saver.save()
            print(f"\nInterrupted: checkpoint saved to {path}. Resume with: "
                  f"tfmp train --resume {out}", file=sys.stderr)
            raise
        except TrainingStopped as e:
            if _weights_finite(model):
                note = f"A checkpoint was saved to {saver.save()}."
            else:  # a NaN checkpoint would only resume into NaN
                note = f"The weights are not finite, so none was saved; see {ckpt_root}."
            raise TrainingStopped(f"{e} {note}") from e
        except Exception as e:  # a collective failed: say why, not a bare TF error
            import tensorflow as tf

            if dist.num_workers > 1 and isinstance(e, tf.errors.OpError):
                raise distribute.worker_lost(dist, e) from e
            raise
        train_seconds = time.perf_counter() - start
        trained_steps = checkpoint.global_step(model.optimizer) - start_step
        test = evaluate(model, splits.test, label_map, shard=shard)
        log(f"\nTest split ({test['examples']} examples, never trained on):\n"
            f"{test['classification_report']}"
            f"accuracy {test['accuracy']:.4f} vs majority class "
            f"{test['majority_class_share']:.4f}")
        state = optimizer.loss_scale_state(model.optimizer)
        metrics = {
            "test": {k: v for k, v in test.items() if k != "classification_report"},
            "accuracy": test["accuracy"],
            "macro_f1": test["macro_f1"],
            "majority_class_share": test["majority_class_share"],
            "train_seconds": train_seconds,  # of this process; a resumed run's remainder
            "train_examples_per_second": trained_steps * config.batch_size
            / max(train_seconds, 1e-9),
            "optimizer": state,
            "resumed_from_step": start_step if ckpt else None,
            "strategy": {"name": dist.name, "replicas": dist.num_replicas,
                         "workers": dist.num_workers, "reason": dist.reason},
        }
        run_config = {
            "config": config.to_json(),
            "policy": policy.to_json(),
            "optimizer": {
                "class": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
                "loss_scale_optimizer": isinstance(
                    model.optimizer, keras.optimizers.LossScaleOptimizer),
                "inner": type(getattr(model.optimizer, "inner_optimizer",
                                      model.optimizer)).__name__,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
            },
            "model_dir": os.path.abspath(model_dir),
            "data": {"source": examples.source, "stats": stats,
                     "splits": {k: len(getattr(splits, k))
                                for k in ("train", "validation", "test")}},
            "versions": _versions(),
            "command": " ".join(sys.argv) if sys.argv else "",
        }
        _write_json(os.path.join(staging, "config.json"), run_config)
        label_map.save(os.path.join(staging, "labels.json"))
        _write_json(os.path.join(staging, "metrics.json"), metrics)
        _write_json(os.path.join(staging, "history.json"), history)
        with open(os.path.join(staging, "classification_report.txt"), "w") as f:
            f.write(test["classification_report"])
        models.save_inference_model(model, os.path.join(staging, "model.keras"))
        report.write_report(staging, run_config, metrics, history,
                            scalars=monitor.scalars, diagnosis=monitor.diagnosis)
    except BaseException:
        # Partial results stay in <out>.partial for inspection; <out> is untouched.
        log(f"Run failed; partial results kept in {staging}", file=sys.stderr)
        raise
    # The finished run has model.keras; its checkpoints (weights + slots) go.
    shutil.rmtree(ckpt_root, ignore_errors=True)
    if not dist.is_chief:
        if not os.environ.get("TFMP_WORKER_DIR"):
            shutil.rmtree(os.path.dirname(staging), ignore_errors=True)
        log(f"Worker {dist.worker_index} done; the chief wrote {out}")
        return RunResult(run_dir=None, policy=policy, metrics=metrics,
                         history=history, model=model, label_map=label_map)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(staging, out)
    log(f"Run directory: {out}")
    return RunResult(run_dir=out, policy=policy, metrics=metrics,
                     history=history, model=model, label_map=label_map)


def load_model(run_dir):
    """The trained classifier of a run directory, loaded in Keras' safe mode."""
    path = os.path.join(run_dir, "model.keras")
    if not os.path.isfile(path):
        raise UserError(f"'{run_dir}' is not a tfmp run directory: no model.keras in it.")
    with warnings.catch_warnings():
        # model.keras carries the optimizer of the finished run, which inference does
        # not need; keras-hub's custom compile() makes Keras skip restoring it, noisily.
        warnings.filterwarnings("ignore", message=".*(compile|optimizer).*")
        return keras.saving.load_model(
            path, safe_mode=True, custom_objects={"BertClassifier": models.BertClassifier})
