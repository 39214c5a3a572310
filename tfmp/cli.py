"""The `tfmp` command: every sub-command is named here.

    tfmp train      fine-tune a classifier (tfmp.train.train)
    tfmp diagnose   find the layers that overflow float16 (tfmp.diagnose.diagnose)
    tfmp export     SavedModel, TFLite and Hugging Face variants behind a parity gate
    tfmp bench      the benchmark suite of a source checkout (tfmp.bench)
    tfmp predict    answer texts with any exported variant (tfmp.serve)
    tfmp tradeoffs  measure every exported variant and recommend one (tfmp.tradeoffs)

The flags of `train` (and the shared ones of `diagnose`) are generated from
`TrainConfig`'s fields: a setting's name, default and help live in `tfmp.config`.

Exit status: 0 on success, 2 for bad usage or bad input (message on stderr, no
traceback), 1 for an internal failure, 3 when training was stopped on purpose
(collapsed loss scale, skip rate, NaN loss or gradient), 130 when interrupted (Ctrl-C)
after saving a checkpoint, 128 + N when stopped by signal N (SIGTERM 143, SIGHUP 129)
after saving a checkpoint.
"""

import argparse
import dataclasses
import os
import signal
import sys

# Only modules that do not import TensorFlow are imported here: each command imports
# what it needs when it runs, after `quiet.start` (TensorFlow's C++ start-up lines),
# and `tfmp predict` on a TFLite variant never imports it.
from tfmp import bench, distribute, precision, quiet
from tfmp.config import TrainConfig
from tfmp.errors import Interrupted, TrainingStopped, UserError

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Choices that come from the modules that decide them.
CHOICES = {"policy": precision.CHOICES, "strategy": distribute.CHOICES}
# `tfmp diagnose` looks for float16 overflow, so it probes mixed_float16 unless told.
DIAGNOSE_DEFAULTS = {"policy": "mixed_float16"}
# The `TrainConfig` fields `tfmp diagnose` reads (data, model, precision, batch).
DIAGNOSE_FIELDS = ("data", "text_column", "label_column", "labels", "encoding",
                   "on_decode_error", "model", "policy", "float32_layers", "batch_size",
                   "seq_len", "seed")


def _comma_list(text):
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_config_flags(parser, names, defaults=None, fields=None, types=None):
    """Adds a `--flag` for each named config field, from its type, default and help.

    `fields` maps names to dataclass fields (default: `TrainConfig`'s); `types`
    overrides the parser of a named flag. Every flag defaults to None
    (`values_given` tells a given flag from an absent one); the help shows the
    field's default, or `defaults[name]` where a command overrides it.
    """
    defaults, fields, types = defaults or {}, fields or FIELDS, types or {}
    for name in names:
        field = fields[name]
        default = defaults.get(name, field.default)
        kind = str(field.type)
        kwargs = {"default": None, "help": field.metadata["help"]}
        if default not in (None, ()):
            kwargs["help"] += f" (default: {default})"
        if field.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name in types:
            kwargs["type"] = types[name]
        elif "tuple" in kind:
            kwargs["type"] = _comma_list
        elif "int" in kind:
            kwargs["type"] = int
        elif "float" in kind:
            kwargs["type"] = float
        choices = CHOICES.get(name) or field.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def values_given(args, defaults=None):
    """The `TrainConfig` values of the flags given on the command line (and `defaults`)."""
    values = dict(defaults or {})
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    for name, value in list(values.items()):
        if FIELDS[name].metadata.get("zero_is_none") and value == 0:
            values[name] = None  # e.g. --clipnorm 0: no clipping
    return values


# --- tfmp train ---


def _add_train(sub):
    p = sub.add_parser("train", help="fine-tune a BERT classifier",
                       description="Fine-tune a BERT-family classifier under a "
                       "precision policy and write a run directory.")
    add_config_flags(p, list(FIELDS))
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR (its --out, or "
                   "RUN_DIR.partial) from its newest checkpoint; other flags may only "
                   "change what does not alter the result")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args):
    from tfmp.rundir import resume_point
    from tfmp.train import train

    values = values_given(args)
    verbose = 0 if args.quiet else 1
    if args.resume:
        # Flags left at their defaults take the checkpoint's values; any other flag
        # must agree with it where it changes the result (train() checks).
        defaults = TrainConfig()
        given = {k: v for k, v in values.items() if v != getattr(defaults, k) and k != "out"}
        saved = resume_point(args.resume).config
        result = train(dataclasses.replace(saved, **given), verbose=verbose,
                       resume=args.resume)
    elif not args.out:
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


# --- tfmp diagnose ---


def _add_diagnose(sub):
    p = sub.add_parser(
        "diagnose", help="find the layers that overflow float16",
        description="Run one training batch with per-layer probes and report each "
        "layer's largest activation and gradient against float16's 65504, its "
        "underflow share, the first non-finite layer, and float32 pins to use.")
    add_config_flags(p, DIAGNOSE_FIELDS, defaults=DIAGNOSE_DEFAULTS)
    p.add_argument("--loss-scale", type=float, default=TrainConfig.initial_loss_scale,
                   dest="probe_loss_scale",  # not TrainConfig.loss_scale (the rule)
                   help="scale the loss as training would (default: %(default)g)")
    p.add_argument("--margin", type=float, default=precision.DEFAULT_MARGIN,
                   help="suggest a pin within this factor of 65504 (default: %(default)g)")
    p.add_argument("--json", help="also write the full result to this file")
    p.set_defaults(func=_run_diagnose)


def _run_diagnose(args):
    from tfmp import data, diagnose, files, models

    config = TrainConfig(**values_given(args, defaults=DIAGNOSE_DEFAULTS))
    config.validate()
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UserError(f"--json {args.json}: its directory does not exist; create it or "
                        "give another path (checked before the model is loaded).")
    policy = precision.resolve(config.policy, float32_layers=config.float32_layers)
    _, label_map, splits = data.prepare_data(config)
    # load_classifier applies the pins first: the table shows whether they help.
    model = models.load_classifier(config.model, num_classes=label_map.num_classes,
                                   sequence_length=config.seq_len, policy=policy)
    ds = data.make_dataset(splits.train, None, config.batch_size)
    result = diagnose.diagnose(
        model, ds, loss_scale=args.probe_loss_scale if policy.loss_scaling else 1.0,
        margin=args.margin)
    print(diagnose.format_table(result))
    print(diagnose.summary(result))
    if args.json:
        files.write_json(args.json, result)
    return 0


# --- tfmp export ---


def _add_export(sub):
    p = sub.add_parser(
        "export", help="export a run for TF Serving, TFLite and Hugging Face",
        description="Write saved_models/<name>/ (SavedModels, TFLite files, a Hugging "
        "Face checkpoint) and check every variant against the Keras model.")
    p.add_argument("run_dir", help="run directory written by `tfmp train`")
    p.add_argument("--out-root", default="saved_models", help="(default: %(default)s)")
    p.add_argument("--name", help="export directory name (default: the run's name)")
    p.add_argument("--max-examples", type=int,
                   help="check the gate on this many test examples (default: all)")
    p.add_argument("--variants", type=_comma_list,
                   help="comma-separated subset of the variants (default: all; an "
                   "unknown name lists them)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    p.set_defaults(func=_run_export)


def _run_export(args):
    from tfmp import export

    report = export.export(args.run_dir, args.out_root, args.name, args.max_examples,
                           list(args.variants) if args.variants else None, args.overwrite,
                           log=lambda line: print(line, flush=True))
    print(export.format_table(report))
    return 0


# --- tfmp compress ---


def _layer_list(text):
    try:
        return tuple(int(i) for i in _comma_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of layer indices (e.g. 0,2,4)") from None


def _add_compress(sub):
    from tfmp.compress.options import CompressConfig

    p = sub.add_parser(
        "compress", help="prune, share and distil a finished run into a smaller run",
        description="Turn a finished run (the teacher) into a smaller student: drop layers, "
        "prune FFN neurons and heads, tie layers, sparsify; fine-tune it against the "
        "teacher's logits under the run's policy. Writes an ordinary run directory.")
    p.add_argument("teacher", help="finished run directory (tfmp train or tfmp compress)")
    fields = {f.name: f for f in dataclasses.fields(CompressConfig)}
    add_config_flags(p, [n for n in fields if n != "teacher"], fields=fields,
                     types={"keep_layers": _layer_list})
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_compress)


def _run_compress(args):
    from tfmp.compress import CompressConfig, compress

    names = {f.name for f in dataclasses.fields(CompressConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    result = compress(CompressConfig(**values), verbose=0 if args.quiet else 1)
    m = result.metrics
    print(f"test accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
          f"-> {result.run_dir}")
    return 0


# --- tfmp bench ---


def _add_bench(sub):
    # The suite's own flags are parsed by tfmp.bench when it runs (`tfmp bench --help`
    # lists them), so building this parser never loads benchmarks/.
    p = sub.add_parser("bench", add_help=False, help="measure training, inference and "
                       "input throughput on this machine", description=bench.DESCRIPTION)
    p.set_defaults(func=lambda args: bench.main(args.bench_argv))


# --- tfmp predict ---


def _add_predict(sub):
    p = sub.add_parser(
        "predict", help="classify texts with an exported variant",
        description="Answer texts with one exported variant, one JSON line per text "
        "(its row, label and probabilities), streamed. TFLite and ONNX variants run "
        "without TensorFlow.")
    p.add_argument("path", help="an export directory (`tfmp export`) or a finished run")
    p.add_argument("--variant", help="an exported variant (default: the fastest that "
                   "passed its gate in export_report.json)")
    p.add_argument("--input", default="-", help="text file, .csv/.tsv/.jsonl, or - for "
                   "stdin (default: -); plain text is one text per line")
    p.add_argument("--text-column", help="the text column of a CSV/TSV/JSONL input "
                   "(default: text)")
    p.add_argument("--format", choices=("lines", "csv", "tsv", "jsonl"),
                   help="input format (default: from the file's extension; lines on stdin)")
    p.add_argument("--output", default="-", help="JSONL file, or - for stdout (default: -)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--skip-empty", action="store_true",
                   help="leave empty texts out instead of refusing the input")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_predict)


def _run_predict(args):
    from tfmp.serve import predict

    return predict.main(args)


# --- tfmp tradeoffs ---


def _add_tradeoffs(sub):
    p = sub.add_parser(
        "tradeoffs", help="measure every exported variant and recommend one",
        description="Measure every exported variant of the given runs on their test "
        "split (accuracy, macro-F1, per-class recall against float32, flipped examples, "
        "latency, throughput, memory, size), write tradeoffs.json/.md and a Pareto plot, "
        "and recommend the best variant under the limits.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="finished runs (or their exports) whose variants to compare")
    p.add_argument("--max-latency-ms", type=float, help="p50 latency at batch 1")
    p.add_argument("--max-size-mb", type=float, help="file size in MB (10^6 bytes)")
    p.add_argument("--max-accuracy-drop", type=float,
                   help="accuracy points below float32 (default: 1)")
    p.add_argument("--max-class-recall-drop", type=float,
                   help="recall points any one class may lose against float32")
    p.add_argument("--out", help="where to write (default: RUN_DIR/tradeoffs)")
    p.add_argument("--max-examples", type=int, help="measure on this many test examples")
    p.set_defaults(func=_run_tradeoffs)


def _run_tradeoffs(args):
    from tfmp import tradeoffs

    return tradeoffs.main(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfmp", description="Mixed-precision fine-tuning of BERT text classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_diagnose(sub)
    _add_export(sub)
    _add_compress(sub)
    _add_bench(sub)
    _add_predict(sub)
    _add_tradeoffs(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", default=False,
                             help="show TensorFlow's C++ start-up lines (hidden unless "
                             "this or TF_CPP_MIN_LOG_LEVEL is given)")
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # exits with 2 on bad usage
    quiet.start(verbose=args.verbose)  # before any command imports TensorFlow
    # TensorFlow's own thread pools are kept (inter-op = intra-op = cores): on this
    # 2-core EPYC one inter-op thread, tfmp's default until 2026-11-30, made the MiniLM
    # step 1.13x slower under mixed_bfloat16 and 1.06x under float32 (README, issue 14).
    if args.command == "bench":
        args.bench_argv = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except UserError as e:
        print(f"tfmp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"tfmp {args.command}: training stopped: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:
        # train() has saved a checkpoint and said how to resume. A signal exits as a
        # shell reports one (SIGTERM: 143), so a scheduler sees the job was pre-empted.
        if isinstance(e, Interrupted) and e.signum != signal.SIGINT:
            print(f"tfmp {args.command}: stopped by signal {e.signum}", file=sys.stderr)
            return 128 + e.signum
        print(f"tfmp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
