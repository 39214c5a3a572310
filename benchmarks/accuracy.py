"""Does length-aware batching change accuracy? The same short fine-tuning run (seed, steps,
learning-rate schedule) with fixed-64 batches, tfmp's trimmed batches and bucketed
batches, each evaluated on the airline test split (1,464 tweets) with `tfmp.evaluate`.

One seed per pipeline, so differences under about one point are within run-to-run noise.
Run alone: `python benchmarks/accuracy.py --examples 3000` (or `tfmp bench --parts accuracy`).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def measure(model_dir, policy="mixed_bfloat16", examples=3000, batch_size=32,
            pipelines=("fixed", "default", "bucket"), log=print):
    import keras
    import training

    from tfmp import data
    from tfmp.scoring import evaluate

    raw = data.load_examples("airline")
    labels = data.LabelMap.from_labels(raw.labels)
    splits = data.split_examples(raw.texts, labels.ids(raw.labels), seed=0,
                                 max_train_examples=examples)
    steps = len(splits.train) // batch_size  # one epoch
    out = {"policy": policy, "train_examples": len(splits.train), "steps": steps,
           "test_examples": len(splits.test), "pipelines": {}}
    for pipeline in pipelines:
        keras.utils.set_random_seed(0)
        model = training._load_tf_model(model_dir, policy, 64, total_steps=steps)
        ds = training._datasets(splits.train.texts, splits.train.label_ids, model.preprocessor,
                                batch_size, pipeline)
        # Built here, not by an eager step: every run takes exactly `steps` updates.
        model.optimizer.build(model.trainable_variables)
        runner = training._TFRunner(dict(spe=1, xla=False), model, ds)
        start = time.perf_counter()
        seconds, _, widths = runner.chunk(steps)
        metrics = evaluate(model, splits.test, labels)
        out["pipelines"][pipeline] = {
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "train_seconds": seconds, "mean_width": sum(widths) / len(widths),
            "wall_seconds": time.perf_counter() - start}
        log(f"  {pipeline}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
            f"{metrics['macro_f1']:.3f}, {seconds:.0f} s for {steps} steps")
        del model
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--examples", type=int, default=3000)
    parser.add_argument("--policy", default="mixed_bfloat16")
    a = parser.parse_args()
    from tfmp import models

    print(json.dumps(measure(a.model or models.default_model_dir(), a.policy, a.examples),
                     indent=1))
