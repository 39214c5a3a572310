"""Shared pieces of the benchmarks: statistics, the FLOP count, the matmul probe, memory.

Every comparison in this suite is measured side by side: the configurations of one
comparison run in rounds (A B C, A B C, ...) in the same process, each round gives a
ratio, and the reported ratio is the median over rounds. Absolute times are printed but
shift with whatever else runs on the machine; the ratios are what to rely on.
"""

import os
import statistics
import time


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q):
    """The q-th percentile (0-100) by nearest rank; None for no values."""
    values = sorted(values)
    if not values:
        return None
    rank = max(0, min(len(values) - 1, int(round(q / 100 * len(values) + 0.5)) - 1))
    return values[rank]


def paired_ratio(numerators, denominators):
    """Median over rounds of numerator/denominator, pairing values of the same round."""
    return median([a / b for a, b in zip(numerators, denominators) if a and b])


def bert_train_flops(config, batch, width, num_classes):
    """FLOPs of one training step (forward + backward) of a BERT classifier.

    Formula (stated in the README): per token, each matmul weight costs 2 FLOPs forward
    and 4 backward, so 6 * P_matmul * tokens with
    P_matmul = layers * (4 * hidden^2 + 2 * hidden * intermediate) (Q, K, V, output and
    the two feed-forward matrices); attention scores and weighted sums add
    3 * 2 * 2 * layers * width^2 * hidden per example (QK^T and AV, forward + backward);
    the pooler and logits run on [CLS] only: 6 * (hidden^2 + hidden * classes) per
    example. Embedding lookups, layer norms, softmax and biases are not counted (< 2%).

    `width` is the padded length the step actually computes on, so this is the work the
    hardware does; padding tokens count, as they cost the same.
    """
    hidden = config["hidden_size"]
    layers = config["num_hidden_layers"]
    intermediate = config["intermediate_size"]
    matmul_params = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    dense = 6 * matmul_params * batch * width
    attention = 12 * layers * width * width * hidden * batch
    head = 6 * (hidden * hidden + hidden * num_classes) * batch
    return dense + attention + head


def matmul_flops_per_second(n=2048, repeats=5, dtype="float32"):
    """Dense matmul rate (FLOP/s) of TensorFlow on this machine: the best of `repeats`.

    The best, not the median, because the matmul is the ceiling a model step is held
    against; noise from other processes only ever lowers it.
    """
    import tensorflow as tf

    a = tf.random.normal([n, n], dtype=tf.float32)
    b = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    tf.matmul(a, b).numpy()  # warm-up: thread pools, oneDNN primitive cache
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_rss_mb():
    """Peak resident memory of this process in MB (VmHWM; ru_maxrss where /proc lacks it)."""
    from tfmp.tradeoffs.measure import peak_memory_mb  # the one VmHWM reader

    return peak_memory_mb()


def machine():
    """Host, CPU model and core count: the machine the figures belong to."""
    import platform

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # The load at the start says how much else shared the cores during the run.
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}


def print_result(result, json_path=None):
    """Prints `result` as indented JSON and writes it to `json_path` too, if given."""
    import json

    print(json.dumps(result, indent=1))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
