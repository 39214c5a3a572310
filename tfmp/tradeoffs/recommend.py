"""Which variant to use under the user's limits, why, and what the runner-up costs.

    choice = recommend(rows, Limits(max_latency_ms=5, max_size_mb=50))
    choice["best"], choice["why"], choice["runner_up"], choice["excluded"]

The rule: among the variants within every limit, the one with the lowest p50 latency
at batch 1 (ties within 5%: the smaller file); the runner-up is the next in that order.
Accuracy enters as a limit (`max_accuracy_drop`, points below the float32 reference,
1.0 by default), not as a score to trade: what is within it is good enough, and the
rest is speed and size.
"""

import dataclasses
import math

DEFAULT_MAX_ACCURACY_DROP = 1.0  # points below float32
TIE = 1.05  # p50 latencies within 5% count as equal; the smaller file wins


@dataclasses.dataclass(frozen=True)
class Limits:
    max_latency_ms: float | None = None  # p50 at batch 1
    max_size_mb: float | None = None  # file size, MB = 10^6 bytes
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP  # points below float32
    # recall points any one class may lose against float32 (None: no limit)
    max_class_recall_drop: float | None = None

    def describe(self):
        parts = [f"p50 latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms else None,
                 f"size <= {self.max_size_mb:g} MB" if self.max_size_mb else None,
                 f"accuracy drop <= {self.max_accuracy_drop:g} points",
                 f"class recall drop <= {self.max_class_recall_drop:g} points"
                 if self.max_class_recall_drop is not None else None]
        return ", ".join(p for p in parts if p)


def violations(row, limits):
    """The limits `row` breaks, in words (empty when within all)."""
    out = []
    if limits.max_latency_ms is not None and row["p50_ms"] > limits.max_latency_ms:
        out.append(f"p50 {row['p50_ms']:.1f} ms > {limits.max_latency_ms:g} ms")
    if limits.max_size_mb is not None and row["size_mb"] > limits.max_size_mb:
        out.append(f"size {row['size_mb']:.1f} MB > {limits.max_size_mb:g} MB")
    if row["accuracy_drop_points"] > limits.max_accuracy_drop:
        out.append(f"accuracy {row['accuracy_drop_points']:.2f} points below float32 > "
                   f"{limits.max_accuracy_drop:g}")
    drop = -row["worst_class_change_points"]
    if limits.max_class_recall_drop is not None and drop > limits.max_class_recall_drop:
        out.append(f"recall of {row['worst_class']!r} {drop:.2f} points below float32 > "
                   f"{limits.max_class_recall_drop:g}")
    return out


def _order(rows):
    """Fastest first; latencies within a factor TIE of each other: the smaller file first."""
    if not rows:
        return []
    base = min(r["p50_ms"] for r in rows) or 1e-9
    return sorted(rows, key=lambda r: (int(math.log(max(r["p50_ms"], base) / base)
                                           / math.log(TIE)), r["size_mb"], r["p50_ms"]))


def _cost(best, other):
    ratio = other["p50_ms"] / best["p50_ms"] if best["p50_ms"] else float("nan")
    return (f"{other['key']} would cost {other['p50_ms'] - best['p50_ms']:+.1f} ms p50 "
            f"({ratio:.2f}x), {other['size_mb'] - best['size_mb']:+.1f} MB and "
            f"{(other['accuracy'] - best['accuracy']) * 100:+.2f} accuracy points "
            f"({other['examples_per_second']:.0f} vs {best['examples_per_second']:.0f} "
            "examples/s at batch 32)")


def recommend(rows, limits):
    """{"best", "why", "runner_up", "runner_up_cost", "excluded", "limits"} for `rows`."""
    excluded = {r["key"]: violations(r, limits) for r in rows if violations(r, limits)}
    within = _order([r for r in rows if r["key"] not in excluded])
    choice = {"limits": dataclasses.asdict(limits), "limits_text": limits.describe(),
              "excluded": excluded, "best": None, "runner_up": None, "why": None,
              "runner_up_cost": None}
    if not within:
        choice["why"] = ("No variant is within the limits (" + limits.describe() + "); "
                         "loosen one: " + "; ".join(f"{k}: {', '.join(v)}"
                                                    for k, v in excluded.items()))
        return choice
    best = within[0]
    choice["best"] = best["key"]
    choice["why"] = (
        f"{best['key']} is the fastest within {limits.describe()}: p50 "
        f"{best['p50_ms']:.1f} ms at batch 1, {best['examples_per_second']:.0f} examples/s "
        f"at batch 32, {best['size_mb']:.1f} MB, accuracy {best['accuracy'] * 100:.2f}% "
        f"({0.0 - best['accuracy_drop_points']:+.2f} points against float32), "
        + (f"largest class recall loss {-best['worst_class_change_points']:.2f} points "
           f"({best['worst_class']})" if best["worst_class_change_points"] < 0
           else "no class loses recall")
        + f", {best['flips']} answers differ from float32.")
    if len(within) > 1:
        choice["runner_up"] = within[1]["key"]
        choice["runner_up_cost"] = _cost(best, within[1])
    return choice
