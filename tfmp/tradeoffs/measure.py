"""One variant measured in a process of its own: answers, speed and peak memory.

    python -m tfmp.tradeoffs.measure EXPORT_DIR VARIANT TEXTS_JSON OUT_DIR

The parent (`measure_variant`) runs each variant in a fresh process, so its peak
memory (`ru_maxrss`: the interpreter, the runtime it imports, the model) is its own
and a TFLite variant is measured without TensorFlow loaded. The worker answers every
text at batch 32 (examples/s, after one warm-up batch), then `LATENCY_EXAMPLES` texts
one at a time (p50/p99 latency at batch 1), and writes `<VARIANT>.npy` (probabilities)
and `<VARIANT>.json` (timings) into OUT_DIR.
"""

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from tfmp.errors import UserError

BATCH = 32
LATENCY_EXAMPLES = 200  # texts answered one at a time for the latency percentiles


def measure_variant(export_dir, variant, texts_path, out_dir, timeout=1800):
    """Runs the worker for `variant`; returns (probabilities [n, c], timings dict)."""
    import tfmp

    root = os.path.dirname(os.path.dirname(os.path.abspath(tfmp.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the worker's stderr is only read on failure
    proc = subprocess.run([sys.executable, "-m", "tfmp.tradeoffs.measure", export_dir,
                           variant, texts_path, out_dir], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise UserError(f"Measuring {variant} of '{export_dir}' failed (exit "
                        f"{proc.returncode}):\n{proc.stderr[-2000:]}")
    with open(os.path.join(out_dir, f"{variant}.json"), encoding="utf-8") as f:
        timings = json.load(f)
    return np.load(os.path.join(out_dir, f"{variant}.npy")), timings


def _run(export_dir, variant, texts, out_dir):
    from tfmp.serve import predict, runners

    started = time.perf_counter()
    runner = runners.open_variant(export_dir, variant, predict.read_report(export_dir))
    runner(texts[:BATCH])  # traces, allocates, warms caches: outside the timing
    opened = time.perf_counter() - started
    cascade = getattr(runner._predict, "cascade", None)
    if cascade is not None:
        cascade.answered = cascade.on_fast_path = 0
    start = time.perf_counter()
    probabilities = np.concatenate([runner(texts[i:i + BATCH])
                                    for i in range(0, len(texts), BATCH)])
    seconds = time.perf_counter() - start
    fast_share = cascade.fast_share if cascade is not None else None
    latencies = []
    for text in texts[:LATENCY_EXAMPLES]:
        start = time.perf_counter()
        runner([text])
        latencies.append((time.perf_counter() - start) * 1000)
    np.save(os.path.join(out_dir, f"{variant}.npy"), probabilities)
    timings = {
        "examples_per_second": len(texts) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "latency_examples": len(latencies),
        "peak_memory_mb": peak_memory_mb(),
        "open_seconds": opened,
        "tensorflow_imported": "tensorflow" in sys.modules,
        "fast_path_share": fast_share,
    }
    with open(os.path.join(out_dir, f"{variant}.json"), "w", encoding="utf-8") as f:
        json.dump(timings, f)


def peak_memory_mb():
    """This process's peak resident memory in MB (Linux: VmHWM).

    Not `ru_maxrss`: on Linux a child keeps the peak its parent had when it forked, so
    every worker of a `tfmp tradeoffs` that imported TensorFlow would report that.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    with open(sys.argv[3], encoding="utf-8") as f:
        _run(sys.argv[1], sys.argv[2], json.load(f), sys.argv[4])
