"""What a finished run records about itself: metrics.json and config.json.

    metrics = test_metrics(run, model, fitted)        # test scores, speed, loss scale
    config = run_config(run, model, total_steps, steps_per_epoch, truncated)

`run` is `tfmp.train`'s run state (config, policy, splits, examples, strategy);
`tfmp export` and `tfmp train --resume` read back what `run_config` writes.
"""

import os

import keras

from tfmp import models, optimizer, rundir
from tfmp.scoring import evaluate


def test_metrics(run, model, fitted):
    """metrics.json: the test split's scores, speed, loss-scale state and strategy."""
    test = evaluate(model, run.splits.test, run.label_map, shard=fitted["shard"])
    run.log(f"\nTest split ({test['examples']} examples, never trained on):\n"
            f"{test['classification_report']}"
            f"accuracy {test['accuracy']:.4f} vs majority class "
            f"{test['majority_class_share']:.4f}")
    dist = run.dist
    return {
        "test": test,  # its text classification_report goes to a file of its own
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "majority_class_share": test["majority_class_share"],
        "train_seconds": fitted["seconds"],  # of this process; a resumed run's remainder
        "train_examples_per_second": fitted["steps"] * run.config.batch_size
        / max(fitted["seconds"], 1e-9),
        "optimizer": optimizer.loss_scale_state(model.optimizer),
        "resumed_from_step": fitted["start_step"] if run.resume else None,
        "recoveries": fitted["recoveries"],
        "strategy": {"name": dist.name, "replicas": dist.num_replicas,
                     "workers": dist.num_workers, "reason": dist.reason},
    }


def run_config(run, model, total_steps, steps_per_epoch, truncated):
    """config.json: the resolved config, policy, optimizer, data and versions."""
    opt = model.optimizer
    return {
        "config": run.config.to_json(),
        "policy": run.policy.to_json(),
        "optimizer": {
            "class": f"{type(opt).__module__}.{type(opt).__name__}",
            "loss_scale_optimizer": isinstance(opt, keras.optimizers.LossScaleOptimizer),
            "inner": type(getattr(opt, "inner_optimizer", opt)).__name__,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
        },
        "model_dir": os.path.abspath(run.config.model or models.default_model_dir()),
        "data": {"source": run.examples.source,
                 # What `tfmp export` checks before it trusts its rebuilt test split.
                 "path": (os.path.abspath(run.config.data)
                          if os.path.isfile(run.config.data) else run.config.data),
                 "sha256": run.data_sha,  # None for the built-in corpora
                 "test_indices": [int(i) for i in run.splits.test.indices],
                 "stats": dict(run.examples.stats, long_texts_truncated_in_train=truncated),
                 "splits": {k: len(getattr(run.splits, k))
                            for k in ("train", "validation", "test")}},
        "versions": rundir.versions(),
        "command": rundir.command_line(),
        "compress": run.source.record if run.source else None,
    }
