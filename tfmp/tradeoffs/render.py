"""tradeoffs.md and the Pareto plot (accuracy against latency and against size).

    write_markdown(result, "tradeoffs/tradeoffs.md")
    write_plot(result, "tradeoffs/pareto.png")
"""

import os

from tfmp import files

COLUMNS = ("variant", "accuracy", "vs fp32", "macro-F1", "worst class recall", "flips",
           "p50 ms", "p99 ms", "ex/s @32", "peak MB", "size MB", "within limits")


def _cells(row, excluded):
    worst = row["worst_class_change_points"]
    return (f"`{row['key']}`", f"{row['accuracy'] * 100:.2f}%",
            f"{0.0 - row['accuracy_drop_points']:+.2f}", f"{row['macro_f1']:.3f}",
            f"{worst:+.2f} ({row['worst_class']})" if worst < 0 else "none lower",
            str(row["flips"]), f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
            f"{row['examples_per_second']:.0f}", f"{row['peak_memory_mb']:.0f}",
            f"{row['size_mb']:.1f}",
            "yes" if row["key"] not in excluded else "no: " + "; ".join(excluded[row["key"]]))


def table(result):
    rows = result["variants"]
    excluded = result["recommendation"]["excluded"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r, excluded)) + " |" for r in rows]
    return "\n".join(lines)


def recommendation_text(choice):
    lines = [f"**Recommended under {choice['limits_text']}: "
             f"`{choice['best']}`**" if choice["best"] else "**No recommendation.**",
             "", choice["why"]]
    if choice["runner_up_cost"]:
        lines += ["", f"Runner-up: {choice['runner_up_cost']}."]
    return "\n".join(lines)


def write_markdown(result, path):
    cascade = [r for r in result["variants"] if r.get("fast_path_share") is not None]
    text = [f"# Precision trade-offs: {', '.join(result['runs'])}", "",
            f"{result['examples']} test examples; float32 reference `{result['reference']}` "
            f"(accuracy {result['reference_accuracy'] * 100:.2f}%). vs fp32 and worst class "
            "recall: points against the float32 reference; flips: answers that differ "
            "from it (listed in flips/). Latency: one text at a time (p50/p99 over "
            f"{result['latency_examples']} texts, tokenization included); ex/s: batches of "
            "32; peak MB: the measuring process's peak resident memory; each variant is "
            "measured in a fresh process.", "", table(result), ""]
    for row in cascade:
        text.append(f"`{row['key']}` answered {row['fast_path_share'] * 100:.1f}% of the "
                    f"test texts from int8 alone (margin {row.get('margin', float('nan')):.3f} "
                    "chosen on the validation split).")
    text += ["", recommendation_text(result["recommendation"]), "",
             f"Measured on {result['machine']}, {result['date']}; "
             f"load average at the start {result['load_average']}.", ""]
    files.write_atomic(path, "\n".join(text))


def _frontier(points):
    """Indices of the Pareto-optimal points: no other is both cheaper and more accurate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    best, out = -1.0, []
    for i in order:
        if points[i][1] > best:
            out.append(i)
            best = points[i][1]
    return out


MARKERS = "osD^vPX*<>ph"


def write_plot(result, path):
    """Two panels, accuracy against p50 latency and against size; one legend below.

    Variants often tie on accuracy, so each has its own colour and marker in the
    legend instead of a text label beside a point that others would overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    rows = result["variants"]
    best = result["recommendation"]["best"]
    colors = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
    for ax, key, label in ((axes[0], "p50_ms", "p50 latency at batch 1, ms (log scale)"),
                           (axes[1], "size_mb", "file size, MB (log scale)")):
        points = [(r[key], r["accuracy"] * 100) for r in rows]
        frontier = _frontier(points)
        ax.step([points[i][0] for i in frontier], [points[i][1] for i in frontier],
                where="post", color="0.6", linestyle="--", zorder=1, label="Pareto frontier")
        for i, (r, (x, y)) in enumerate(zip(rows, points)):
            chosen = r["key"] == best
            ax.scatter([x], [y], s=160 if chosen else 70, marker=MARKERS[i % len(MARKERS)],
                       color=colors[i % len(colors)], edgecolor="black" if chosen else "none",
                       linewidth=1.5, zorder=3, label=r["key"] + (" (recommended)" if chosen
                                                                 else ""))
            if chosen:
                ax.annotate("recommended", (x, y), textcoords="offset points",
                            xytext=(8, -14), fontsize=9, weight="bold")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy, %")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("accuracy against latency (up and left is better)")
    axes[1].set_title("accuracy against size (up and left is better)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(f"{', '.join(result['runs'])}: every exported variant on "
                 f"{result['examples']} test examples; {result['recommendation']['limits_text']}")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
