"""`tfmp predict`: classify texts with one exported variant, streamed as JSON lines.

    tfmp predict saved_models/demo --input tweets.csv --text-column text > answers.jsonl
    echo "@united lost my bag again" | tfmp predict runs/demo --variant tflite_int8

PATH is an export directory or the finished run it was exported from (its export is
found under `saved_models/<run name>`, tfmp export's default, and must name the run).
Each answer is one line: {"row": ..., "label": ..., "probabilities": {label: p}} (plain
text input also echoes "text"), written and flushed per batch, so memory stays
constant however long the input. The default variant is the fastest that passed its
gate in the export's report. TFLite, ONNX and cascade variants never import TensorFlow.
"""

import json
import os
import sys
import time

from tfmp import files
from tfmp.errors import InputError, UserError
from tfmp.serve import inputs, runners

REPORT = "export_report.json"  # as tfmp.export.target.REPORT
EXPORT_KIND = "export"  # the kind in an export's COMPLETE marker (tfmp.export.target.KIND)
DEFAULT_OUT_ROOT = "saved_models"


def _check_export(path):
    """`tfmp.export.check_export` without importing the export package (TensorFlow)."""
    files.check_complete(path, "export")
    if files.read_marker(path).get("kind") != EXPORT_KIND:
        raise InputError(f"'{path}' is not a tfmp export (its {files.MARKER} marker is not "
                         "an export's). Pass a directory written by `tfmp export`.")


def _is_run(path):
    return all(os.path.isfile(os.path.join(path, f))
               for f in ("config.json", "labels.json", "model.keras"))


def locate_export(path):
    """The export directory of `path` (an export, or a run exported under saved_models/)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise UserError(f"'{path}' is not a directory; pass an export directory "
                        "(`tfmp export`) or a finished run directory.")
    if files.read_marker(path).get("kind") == EXPORT_KIND or os.path.isfile(
            os.path.join(path, REPORT)):
        _check_export(path)
        return path
    if path.endswith(".partial") or (_is_run(path) and not files.is_complete(path)):
        raise InputError(f"'{path}' is an unfinished run: it has no {files.MARKER} marker. "
                         "Finish it (`tfmp train --resume`), then `tfmp export` it.")
    if not _is_run(path):
        raise UserError(f"'{path}' is neither a tfmp export nor a tfmp run directory. Pass "
                        "a directory written by `tfmp export` or `tfmp train`.")
    candidate = os.path.abspath(os.path.join(DEFAULT_OUT_ROOT, os.path.basename(path)))
    if (files.is_complete(candidate)
            and files.read_marker(candidate).get("run_dir") == path):
        _check_export(candidate)
        return candidate
    raise InputError(f"The run '{path}' has not been exported (no finished export of it at "
                     f"'{candidate}'). Run `tfmp export {os.fspath(path)}` first, or pass "
                     "the export directory.")


def read_report(export_dir):
    try:
        with open(os.path.join(export_dir, REPORT), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{export_dir}: {REPORT} is not readable ({e}); export the run "
                         "again.") from None


def default_variant(report):
    """The fastest variant (examples/s in the report) that passed its gate."""
    passed = {n: r for n, r in report["variants"].items() if r.get("passed", True)
              and runners.kind_of(n) in runners.KINDS}
    if not passed:
        raise InputError("No variant of this export passed its gate; export it again.")
    return max(passed, key=lambda n: passed[n].get("examples_per_second", 0.0))


def answers(runner, records, batch_size, source=None):
    """Yields one answer dict per (row, text) record, answering `batch_size` at a time.

    A partial batch is answered at once when `source` (an `inputs.LineSource`) has no
    further line ready, so an interactive writer gets each answer as it asks.
    """
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == batch_size or (source is not None and source.idle):
            yield from _answer(runner, batch)
            batch = []
    if batch:
        yield from _answer(runner, batch)


def _answer(runner, batch):
    probabilities = runner([text for _, _, text in batch])
    for (row, echo, _), p in zip(batch, probabilities):
        answer = {"row": row}
        if echo is not None:
            answer["text"] = echo
        answer["label"] = runner.labels[int(p.argmax())]
        answer["probabilities"] = {name: round(float(v), 6)
                                   for name, v in zip(runner.labels, p)}
        yield answer


def _progress(stream, path, show):
    """A tqdm bar over the file's bytes when reading a file to a terminal, else None."""
    if not show or path == "-" or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="predict",
                file=sys.stderr)


def main(args):
    """Runs `tfmp predict` (`args` from tfmp.cli); returns the exit status."""
    start = time.perf_counter()
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    export_dir = locate_export(args.path)
    report = read_report(export_dir)
    name = args.variant or default_variant(report)
    runner = runners.open_variant(export_dir, name, report)
    fmt = inputs.guess_format("" if args.input == "-" else args.input, args.format)
    source = "stdin" if args.input == "-" else args.input
    try:
        stream = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")
    except OSError as e:
        raise UserError(f"--input {args.input}: cannot be read ({e.strerror}).") from None
    out = sys.stdout if args.output == "-" else _open_output(args.output)
    bar = _progress(stream, args.input, not args.quiet)
    n = 0
    lines = inputs.LineSource(stream)
    try:
        records = ((row, text if fmt == "lines" else None, text) for row, text in
                   inputs.read_texts(lines, source, fmt, args.text_column, args.skip_empty))
        for answer in answers(runner, records, args.batch_size, lines):
            out.write(json.dumps(answer, ensure_ascii=False) + "\n")
            n += 1
            if n % args.batch_size == 0 or lines.idle:
                out.flush()
                if bar is not None:
                    bar.update(stream.tell() - bar.n)
    finally:
        out.flush()
        if bar is not None:
            bar.close()
        if stream is not sys.stdin.buffer:
            stream.close()
        if out is not sys.stdout:
            out.close()
    if not args.quiet and args.output != "-":
        print(f"{n} answers from {name} in {time.perf_counter() - start:.1f} s -> "
              f"{args.output}", file=sys.stderr)
    return 0


def _open_output(path):
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise UserError(f"--output {path}: cannot be written ({e.strerror}).") from None
