"""A reproducible float16 overflow on a real checkpoint, and what each remedy does.

`scale_block(src, dst, layer, factor)` writes a copy of a Hugging Face BERT checkpoint
whose transformer block `layer` has its feed-forward output (kernel and bias) scaled by
`factor`: the block's output then exceeds float16's 65504, while the LayerNorm after it
brings the residual stream back to unit scale, so float32 trains as before.

Run: `python benchmarks/overflow.py --max-train-examples 2000 --epochs 1` trains the
scaled MiniLM under float32, mixed_float16 and mixed_float16 with
`--precision-map adaptive`, and prints accuracy, skipped steps and loss scale of each.
`--factor 1 --runs mixed_float16,adaptive,static256,hysteresis,delayed` measures the
unscaled MiniLM: the adaptive map's cost and each loss-scaling rule on an ordinary run.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scale_block(src, dst, layer=3, factor=3000.0):
    """Writes `src` with block `layer`'s feed-forward output scaled by `factor` to `dst`."""
    import keras
    import keras_hub

    from tfmp import precision
    from tfmp.export import huggingface as hf

    with precision.policy_scope("float32"):
        backbone = keras_hub.models.BertBackbone.from_preset(src)
    dense = backbone.get_layer(f"transformer_layer_{layer}")._feedforward_output_dense
    dense.kernel.assign(dense.kernel * factor)
    dense.bias.assign(dense.bias * factor)
    hf.save_checkpoint(backbone, os.path.join(src, "vocab.txt"), dst)
    return dst


def _run(name, model_dir, out, args, **settings):
    from tfmp import TrainConfig, train
    from tfmp.errors import TrainingStopped

    config = TrainConfig(data=args.data, model=model_dir, out=os.path.join(out, name),
                         epochs=args.epochs, max_train_examples=args.max_train_examples,
                         seed=args.seed, **settings)
    start = time.perf_counter()
    try:
        result = train(config, verbose=0)
    except TrainingStopped as e:
        return {"run": name, "stopped": str(e)[:300], "seconds": time.perf_counter() - start}
    opt = result.metrics["optimizer"]
    steps = opt["iterations"] + opt["skipped_steps"]
    return {"run": name, "accuracy": result.metrics["accuracy"],
            "skipped_steps": opt["skipped_steps"], "steps": steps,
            "skip_share": opt["skipped_steps"] / max(steps, 1),
            "loss_scale": opt["loss_scale"],
            "schedule_lag_steps": opt["skipped_steps"],
            "calibration_seconds": result.metrics["timings"].get("calibration"),
            "recoveries": result.metrics.get("recoveries"), "layer_map": [list(r) for r in result.policy.layer_map],
            "train_examples_per_second": result.metrics["train_examples_per_second"],
            "seconds": time.perf_counter() - start}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="checkpoint dir (default: bundled MiniLM)")
    p.add_argument("--data", default="airline")
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--factor", type=float, default=3000.0)
    p.add_argument("--max-train-examples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="float32,mixed_float16,adaptive")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from tfmp import models

    src = args.model or models.default_model_dir()
    with tempfile.TemporaryDirectory() as tmp:
        scaled = (src if args.factor == 1 else
                  scale_block(src, os.path.join(tmp, "scaled"), args.layer, args.factor))
        settings = {"float32": dict(policy="float32"),
                    "mixed_float16": dict(policy="mixed_float16"),
                    "adaptive": dict(policy="mixed_float16", precision_map="adaptive"),
                    "static256": dict(policy="mixed_float16", loss_scale="256"),
                    "hysteresis": dict(policy="mixed_float16", loss_scale="hysteresis"),
                    "delayed": dict(policy="mixed_float16", loss_scale="delayed")}
        rows = []
        for i, name in enumerate(args.runs.split(",")):  # a name may repeat (alternation)
            rows.append(_run(name, scaled, os.path.join(tmp, str(i)), args, **settings[name]))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
