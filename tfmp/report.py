"""The run report: `report.json`, `report.md` and PNG plots in a run directory.

    write_report(run_dir, run_config, metrics, history, scalars=monitor.scalars)

Written at the end of `tfmp.train.train` from what the run already saved (config,
metrics, Keras history) plus the scalars `tfmp.callbacks.TrainingMonitor` logged.
The Markdown is meant to be read in a minute: outcome first, then precision
(policy, why, loss scale, skipped steps), speed, the per-class report, versions and
hardware.
"""

import os

from tfmp import callbacks, diagnose, files, hardware, lora, memory

PLOTS = {
    "curves": "plot_loss_accuracy.png",
    "loss_scale": "plot_loss_scale.png",
    "throughput": "plot_throughput.png",
}


def _hardware(versions):
    gpus = [name for name, _ in hardware.list_gpus()]
    return {
        "machine": versions.get("machine"),
        "processor": versions.get("processor"),
        "cpus": versions.get("cpus"),
        "gpus": gpus,
    }


def _last(scalars, tag):
    points = scalars.get(tag) or []
    return points[-1][1] if points else None


def _plot(path, draw):
    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 3.6), dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _draw_curves(history):
    def draw(fig):
        for i, name in enumerate(("loss", "accuracy")):
            ax = fig.add_subplot(1, 2, i + 1)
            for key, label in ((name, "train"), (f"val_{name}", "validation")):
                if history.get(key):
                    epochs = range(1, len(history[key]) + 1)
                    ax.plot(epochs, history[key], marker="o", label=label)
            ax.set_xlabel("epoch")
            epochs = max([len(history.get(k) or []) for k in (name, f"val_{name}")] + [1])
            ax.set_xlim(0.5, epochs + 0.5)  # one epoch is a point in the middle, not 0.96-1.04
            ax.set_xticks(range(1, epochs + 1))
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
    return draw


def _draw_loss_scale(scalars, policy_name, initial=None):
    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        scale = scalars.get(callbacks.LOSS_SCALE) or []
        if scale and initial and min(s for s, _ in scale) > 0:
            scale = [(0, initial)] + list(scale)  # the scale the run started with
        if not scale:
            ax.text(0.5, 0.5, f"{policy_name}: no loss scale", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
            return
        steps, values = zip(*sorted(scale))
        # Held to the last step logged under any tag: a short run logs the scale once or
        # twice, and a step line through one point draws nothing. Markers at each change.
        end = max([steps[-1]] + [s for points in scalars.values() for s, _ in points])
        ax.step(list(steps) + [end], list(values) + [values[-1]], where="post",
                label="loss scale")
        ax.plot(steps, values, "o", color="C0", markersize=4)
        ax.set_xlim(0, max(end, 1) * 1.03)
        skipped = [s for s, _ in scalars.get(callbacks.OVERFLOW) or []]
        if skipped:
            at = dict(scale)
            ax.plot(skipped, [at.get(s, values[0]) for s in skipped], "rx", markersize=8,
                    label=f"skipped step ({len(skipped)})")
        ax.set_yscale("log", base=2)
        ax.set_xlabel("optimizer step")
        ax.set_title("float16 loss scale")
        ax.grid(alpha=0.3)
        ax.legend()
    return draw


def _draw_throughput(scalars):
    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        tag = (callbacks.EXAMPLES_PER_SECOND if scalars.get(callbacks.EXAMPLES_PER_SECOND)
               else callbacks.STEPS_PER_SECOND)
        points = sorted(scalars.get(tag) or [])
        if points:
            ax.plot(*zip(*points), marker="o", markersize=7 if len(points) < 5 else 4)
            ax.annotate(f"{points[-1][1]:.1f}", points[-1], textcoords="offset points",
                        xytext=(0, 8), ha="center")  # a short run logs one or two points
            ax.set_ylim(0, max(v for _, v in points) * 1.2)
            ax.set_xlim(0, max(points[-1][0], 1) * 1.05)
        ax.set_xlabel("optimizer step")
        ax.set_title(tag.split("/")[-1].replace("_", " "))
        ax.grid(alpha=0.3)
    return draw


def build_report(run_config, metrics, history, scalars, diagnosis=None):
    """The report as a JSON-ready dict (what `report.json` holds)."""
    versions = run_config.get("versions", {})
    opt = metrics.get("optimizer", {})
    skipped = opt.get("skipped_steps", 0)
    # The optimizer's iterations do not count skipped steps.
    steps = opt["iterations"] + skipped if opt.get("iterations") is not None else None
    test = metrics.get("test", {})
    return {
        "outcome": {
            "accuracy": metrics.get("accuracy"),
            "macro_f1": metrics.get("macro_f1"),
            "majority_class_share": metrics.get("majority_class_share"),
            "final_train_loss": (history.get("loss") or [None])[-1],
            "final_val_loss": (history.get("val_loss") or [None])[-1],
        },
        "policy": run_config.get("policy"),
        "precision": {
            "final_loss_scale": opt.get("loss_scale"),
            "skipped_steps": skipped,
            "steps": steps,
            "skip_rate": skipped / steps if steps else None,
            "overflow_steps": [s for s, _ in scalars.get(callbacks.OVERFLOW) or []],
            # Each skipped step leaves the learning-rate schedule one step behind.
            "schedule_lag_steps": skipped,
            "final_learning_rate": _last(scalars, callbacks.LEARNING_RATE),
            "final_nominal_learning_rate": _last(scalars, callbacks.NOMINAL_LEARNING_RATE),
            "diagnosis": diagnosis,
            # --precision-map adaptive: what recovery pinned during training, and its cost.
            "recoveries": metrics.get("recoveries") or [],
        },
        "speed": {
            "train_seconds": metrics.get("train_seconds"),
            "examples_per_second": metrics.get("train_examples_per_second"),
            "last_logged_examples_per_second": _last(scalars, callbacks.EXAMPLES_PER_SECOND),
            # Where the run's time went, phase by phase (tfmp.callbacks.PhaseTimer).
            "timings": metrics.get("timings") or {},
        },
        "lora": run_config.get("lora"),  # --lora-rank: what trained (tfmp.lora.describe)
        "memory": metrics.get("memory"),  # the fit's peak (tfmp.memory.PeakMemory)
        "classification_report": test.get("classification_report_dict"),
        "versions": {k: versions.get(k) for k in ("python", "tensorflow", "keras", "keras_hub")},
        "hardware": _hardware(versions),
        "plots": dict(PLOTS),
    }


def _timings_table(timings):
    """Markdown lines: where the time went, largest phase first (nothing if unknown)."""
    if not timings:
        return []
    total = sum(timings.values()) or 1.0
    lines = ["| where the time went | seconds | share |", "| --- | ---: | ---: |"]
    for phase, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {phase} | {seconds:.1f} | {seconds / total:.0%} |")
    return lines + [""]


def _fmt(value, spec=".4f"):
    return "n/a" if value is None else format(value, spec)


def to_markdown(report):
    o, p, s = report["outcome"], report["precision"], report["speed"]
    policy = report.get("policy") or {}
    lines = [
        "# Run report",
        "",
        (f"**Test accuracy {_fmt(o['accuracy'])}**, macro-F1 {_fmt(o['macro_f1'])} "
        f"(majority class {_fmt(o['majority_class_share'])}); final train loss "
        f"{_fmt(o['final_train_loss'])}, validation loss {_fmt(o['final_val_loss'])}."),
        "",
        "## Precision",
        "",
        f"- Policy: `{policy.get('name')}`: {policy.get('reason', '')}",
    ]
    if policy.get("float32_layers"):
        lines.append(f"- Pinned to float32: {', '.join(policy['float32_layers'])}")
    for path, name, reason in policy.get("layer_map") or []:
        lines.append(f"- `{path}` computes in {name}: {reason}")
    if p["final_loss_scale"] is None:
        lines.append("- No loss scale under this policy: no step is ever skipped.")
    else:
        lines += [
            f"- Loss scale at the end: {p['final_loss_scale']:g}; skipped steps: "
            f"{p['skipped_steps']} of {p['steps']} "
            f"({_fmt(p['skip_rate'], '.2%')})"
            + (f", at steps {', '.join(map(str, p['overflow_steps'][:20]))}"
               if p["overflow_steps"] else "") + ".",
            (f"- Learning-rate schedule behind by {p['schedule_lag_steps']} steps "
            f"(last rate applied {_fmt(p['final_learning_rate'], '.3g')}, nominal "
            f"{_fmt(p['final_nominal_learning_rate'], '.3g')})."),
        ]
    if p.get("diagnosis"):
        lines.append(f"- Diagnosis at the first overflow: {diagnose.summary(p['diagnosis'])}")
    if p.get("recoveries"):
        lines += ["", "### Recoveries from overflow", "",
                  "| at step | layers pinned | restored step | steps redone | seconds |",
                  "| ---: | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['step']} | {', '.join(f'`{l[0]}` -> {l[1]}' for l in r['layers'])} | "
                  f"{r['restored_to']} | {r['steps_redone']} | {r['seconds']:.1f} |"
                  for r in p["recoveries"]]
    lines += [
        "",
        f"![loss scale]({PLOTS['loss_scale']})",
        "",
        "## Training",
        "",
        (f"- {_fmt(s['train_seconds'], '.1f')} s, {_fmt(s['examples_per_second'], '.1f')} "
        "examples/s overall (validation included); last logged "
        f"{_fmt(s['last_logged_examples_per_second'], '.1f')} examples/s."),
        *lora.report_lines(report.get("lora")),
        "",
        *_timings_table(s.get("timings") or {}),
        f"![loss and accuracy]({PLOTS['curves']})",
        f"![throughput]({PLOTS['throughput']})",
        "",
        *memory.report_lines(report.get("memory")),
        "## Test split, per class",
        "",
    ]
    cr = report.get("classification_report") or {}
    if cr:
        lines += ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
        for name, row in cr.items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | "
                             f"{row['f1-score']:.4f} | {int(row['support'])} |")
    v, h = report["versions"], report["hardware"]
    lines += [
        "",
        "## Environment",
        "",
        (f"- TensorFlow {v['tensorflow']}, Keras {v['keras']}, keras-hub {v['keras_hub']}, "
        f"Python {v['python']}"),
        (f"- {h['processor'] or h['machine']}, {h['cpus']} CPUs; GPUs: "
        f"{', '.join(h['gpus']) or 'none'}"),
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir, run_config, metrics, history, scalars=None, diagnosis=None):
    """Writes report.json, report.md and the plots into `run_dir`; returns the report."""
    scalars = scalars or {}
    report = build_report(run_config, metrics, history, scalars, diagnosis)
    policy_name = (run_config.get("policy") or {}).get("name", "")
    _plot(os.path.join(run_dir, PLOTS["curves"]), _draw_curves(history))
    initial = (run_config.get("config") or {}).get("initial_loss_scale")
    _plot(os.path.join(run_dir, PLOTS["loss_scale"]),
          _draw_loss_scale(scalars, policy_name, initial))
    _plot(os.path.join(run_dir, PLOTS["throughput"]), _draw_throughput(scalars))
    files.write_json(os.path.join(run_dir, "report.json"), report)
    files.write_atomic(os.path.join(run_dir, "report.md"), to_markdown(report))
    return report
