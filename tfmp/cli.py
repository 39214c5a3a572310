"""The `tfmp` command.

Exit status: 0 on success, 2 for bad usage or bad input (message on stderr, no
traceback), 1 for an internal failure, 3 when training was stopped on purpose
(collapsed loss scale, skip rate, NaN loss), 130 when interrupted (Ctrl-C) after
saving a checkpoint.
"""

import argparse
import os
import sys


def _add_train(sub):
    from tfmp.distribute import CHOICES as CHOICES_STRATEGY
    from tfmp.precision import CHOICES
    from tfmp.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="fine-tune a BERT classifier",
                       description="Fine-tune a BERT-family classifier under a "
                       "precision policy and write a run directory.")
    p.add_argument("--data", default=d.data,
                   help="airline, tweets, or a .csv/.tsv/.jsonl file (default: %(default)s)")
    p.add_argument("--text-column", help="text column of a data file (default: text)")
    p.add_argument("--label-column", help="label column of a data file (default: label)")
    p.add_argument("--labels", help="comma-separated label names in id order "
                   "(default: taken from the data)")
    p.add_argument("--encoding", default=d.encoding, help="data file encoding (default: %(default)s)")
    p.add_argument("--on-decode-error", choices=("replace", "strict"), default=d.on_decode_error,
                   help="undecodable bytes: replace and count, or refuse (default: %(default)s)")
    p.add_argument("--model", help="Hugging Face BERT checkpoint directory "
                   "(default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--policy", default=d.policy, choices=CHOICES,
                   help="precision policy (default: %(default)s)")
    p.add_argument("--float32-layers", help="comma-separated layer paths or patterns to "
                   "keep in float32 (from `tfmp diagnose`)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--length-grouping", action=argparse.BooleanOptionalAction,
                   default=d.length_grouping,
                   help="batch texts of similar length together (default on: 1.5x fewer "
                   "padded tokens than random batches on tweets, same test accuracy over "
                   "3 seeds); --no-length-grouping for fully random batches")
    p.add_argument("--length-pool", type=int, default=d.length_pool,
                   help="with --length-grouping: batches per pool sorted by length "
                   f"(default {d.length_pool}; larger pads less, is less random)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--clipnorm", type=float, default=d.clipnorm,
                   help="global-norm clipping of unscaled gradients; 0 turns it off")
    p.add_argument("--max-train-examples", type=int, help="cap on the training split")
    p.add_argument("--validation-fraction", type=float, default=d.validation_fraction)
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--min-loss-scale", type=float, default=d.min_loss_scale)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="optimizer steps between checkpoints, besides each epoch end; "
                   "0: epoch ends only (default: %(default)s)")
    p.add_argument("--strategy", default=d.strategy, choices=CHOICES_STRATEGY,
                   help="tf.distribute strategy; auto: multi_worker if TF_CONFIG names "
                   "several workers, else tpu, else mirrored on 2+ GPUs, else none. "
                   "--batch-size is the global batch (default: %(default)s)")
    p.add_argument("--out", help="run directory to write (required unless --resume)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR (its --out, or "
                   "RUN_DIR.partial) from its newest checkpoint; other flags may only "
                   "change what does not alter the result")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from tfmp.train import TrainConfig, train

    fields = {f for f in TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.labels:
        values["labels"] = tuple(s.strip() for s in args.labels.split(",") if s.strip())
    if args.float32_layers:
        values["float32_layers"] = tuple(
            s.strip() for s in args.float32_layers.split(",") if s.strip())
    if args.clipnorm == 0:
        values["clipnorm"] = None
    verbose = 0 if args.quiet else 1
    if args.resume:
        import dataclasses

        from tfmp.train import resume_point

        # Flags left at their defaults take the checkpoint's values; any other flag
        # must agree with it where it changes the result (train() checks).
        defaults = TrainConfig()
        given = {k: v for k, v in values.items() if v != getattr(defaults, k)}
        saved = resume_point(args.resume)[3]
        given.pop("out", None)
        result = train(dataclasses.replace(saved, **given), verbose=verbose,
                       resume=args.resume)
    elif not args.out:
        from tfmp.errors import UserError

        raise UserError("--out is required (the run directory to write), unless --resume.")
    else:
        result = train(TrainConfig(**values), verbose=verbose)
    m = result.metrics
    if result.run_dir is None:  # a non-chief worker: the chief wrote the run
        print(f"test accuracy {m['accuracy']:.4f}  (worker; the chief wrote the run)")
        return 0
    print(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"majority class {m['majority_class_share']:.4f}  -> {result.run_dir}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfmp", description="Mixed-precision fine-tuning of BERT text classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    # Each feature module adds its own subcommand: `add_cli(subparsers)` registers a
    # parser whose `func(args)` returns the exit status.
    import importlib

    for name in ("export", "diagnose", "bench"):
        try:
            module = importlib.import_module(f"tfmp.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"tfmp.{name}":
                raise
            continue
        module.add_cli(sub)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on bad usage
    from tfmp.errors import TrainingStopped, UserError

    try:
        return args.func(args)
    except UserError as e:
        print(f"tfmp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"tfmp {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # train() has saved a checkpoint and said how to resume.
        print(f"tfmp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
