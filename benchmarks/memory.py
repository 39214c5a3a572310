"""Peak training memory per policy and rematerialization, each in a fresh process.

    python benchmarks/memory.py [--quick]       # or: tfmp bench --parts memory

A setting where activations dominate: the bundled all-MiniLM-L6-v2 classifier, batch
16 of full-length sequences (512 tokens, no padding: long documents), tfmp's training
step (`compile_classifier`, fused AdamW, FastDropout) on fixed random token ids.
Every configuration runs alone in a new process, so its peak is its own:

    peak_rss_mb       the process's resident high-water mark (VmHWM) after the steps:
                      what the machine must have (TensorFlow runtime and model included)
    built_rss_mb      the same before the first step (imports, model, data)
    allocator_peak_mb TensorFlow's allocator peak during the steps: tensors only
    step_seconds      median step after the first (which traces)

Rounds alternate the order of the configurations; speed ratios are paired by round
(the memory figures do not depend on the load). Run alone: `python benchmarks/memory.py`.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common

SEQ_LEN, BATCH = 512, 16
NUM_CLASSES = 3
REMAT = "blocks"  # what `tfmp train --remat` recomputes (tfmp.memory.REMAT_MODE)


def configs(quick):
    def cfg(policy, remat=None, accum=1):
        name = policy + (f"_remat_{remat}" if remat else "") + (f"_accum{accum}" if accum > 1 else "")
        return dict(name=name, policy=policy, remat=remat, grad_accum=accum)

    if quick:
        return [cfg("float32"), cfg("mixed_bfloat16"), cfg("mixed_bfloat16", REMAT)]
    return [cfg("float32"), cfg("mixed_bfloat16"), cfg("mixed_float16"),
            cfg("float32", "attention"), cfg("float32", "blocks"),
            cfg("mixed_bfloat16", "attention"), cfg("mixed_bfloat16", "blocks"),
            cfg("mixed_bfloat16", accum=4)]


def child(cfg, model_dir, seq_len, batch, steps):
    """One configuration in this (fresh) process; returns its measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from tfmp import accumulate, memory, models, precision, remat
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    start_rss = common.peak_rss_mb()
    policy = precision.resolve(cfg["policy"])
    model = models.load_classifier(model_dir, num_classes=NUM_CLASSES, sequence_length=seq_len,
                                   policy=policy)
    model.preprocessor = None  # token ids in
    compile_classifier(model, policy, total_steps=100, config=TrainConfig())
    changed = remat.apply(model, cfg["remat"]) if cfg["remat"] else 0
    accumulate.install(model, cfg["grad_accum"])
    rng = np.random.default_rng(0)
    vocab = model.backbone.vocabulary_size  # ordinary ids: above the special tokens
    x = {"token_ids": tf.constant(rng.integers(vocab // 10, vocab, (batch, seq_len)), tf.int32),
         "padding_mask": tf.ones((batch, seq_len), tf.bool),
         "segment_ids": tf.zeros((batch, seq_len), tf.int32)}
    y = tf.constant(rng.integers(0, NUM_CLASSES, batch), tf.int32)
    built = common.peak_rss_mb()
    device = memory.training_device()
    try:
        tf.config.experimental.reset_memory_stats(device)
    except ValueError:  # a CPU allocator without counters (oneDNN off): no allocator figures
        pass
    allocator_before = memory.allocator_mb(device, "current")
    times = []
    for _ in range(steps + 1):
        begin = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        times.append(time.perf_counter() - begin)
    if not np.isfinite(logs["loss"]):
        raise RuntimeError(f"{cfg['name']}: loss {logs['loss']}")
    return dict(cfg, layers_rematerialized=changed, seq_len=seq_len, batch=batch,
                start_rss_mb=start_rss, built_rss_mb=built, peak_rss_mb=common.peak_rss_mb(),
                allocator_before_mb=allocator_before,
                allocator_peak_mb=memory.allocator_mb(device, "peak"),
                first_step_seconds=times[0], step_seconds=common.median(times[1:]),
                steps=times[1:], loss=float(logs["loss"]))


def speed_child(cfgs, model_dir, seq_len, batch, rounds):
    """Step times of `cfgs` side by side in this process, alternating step by step:
    a speed ratio that the load on the machine moves far less than separate processes'.
    (Memory is the other function's: here every model is alive at once.)"""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from tfmp import accumulate, models, precision, remat
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    runners = []
    for cfg in cfgs:
        policy = precision.resolve(cfg["policy"])
        model = models.load_classifier(model_dir, num_classes=NUM_CLASSES,
                                       sequence_length=seq_len, policy=policy)
        model.preprocessor = None
        compile_classifier(model, policy, total_steps=100, config=TrainConfig())
        if cfg["remat"]:
            remat.apply(model, cfg["remat"])
        accumulate.install(model, cfg["grad_accum"])
        runners.append(model)
    rng = np.random.default_rng(0)
    vocab = runners[0].backbone.vocabulary_size
    x = {"token_ids": tf.constant(rng.integers(vocab // 10, vocab, (batch, seq_len)), tf.int32),
         "padding_mask": tf.ones((batch, seq_len), tf.bool),
         "segment_ids": tf.zeros((batch, seq_len), tf.int32)}
    y = tf.constant(rng.integers(0, NUM_CLASSES, batch), tf.int32)
    times = {cfg["name"]: [] for cfg in cfgs}
    for r in range(rounds + 1):  # round 0 traces
        order = list(zip(cfgs, runners))
        for cfg, model in (order if r % 2 else order[::-1]):
            begin = time.perf_counter()
            model.train_on_batch(x, y)
            if r:
                times[cfg["name"]].append(time.perf_counter() - begin)
    base = cfgs[0]["name"]
    return {"seq_len": seq_len, "batch": batch, "rounds": rounds, "step_seconds": times,
            "speed_vs_first": {n: common.paired_ratio(times[base], t) for n, t in times.items()}}


def _run_child(cfg, model_dir, seq_len, batch, steps):
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg),
               "--model", model_dir, "--seq-len", str(seq_len), "--batch", str(batch),
               "--steps", str(steps)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        return dict(cfg, error=(out.stderr or out.stdout)[-2000:])
    return json.loads(lines[-1])


def measure(model_dir, quick=False, rounds=1, steps=3, seq_len=SEQ_LEN, batch=BATCH,
            only=None, log=print):
    """Every configuration in a fresh process, `rounds` times in rotated order."""
    chosen = [c for c in configs(quick) if not only or c["name"] in only]
    runs = []
    for r in range(rounds):
        order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
        for cfg in order if r % 2 == 0 else order[::-1]:
            result = _run_child(cfg, model_dir, seq_len, batch, steps)
            result["round"] = r
            runs.append(result)
            log(f"  {cfg['name']}: " + (f"peak {result['peak_rss_mb']:.0f} MB, allocator "
                f"{_f(result['allocator_peak_mb'], '{:.0f}') or 'not counted'} MB, "
                f"step {result['step_seconds']:.2f} s"
                if "error" not in result else f"failed: {result['error'][-300:]}"))
    # Speed side by side, one process per policy: the figure the speed target is judged on.
    speed = {}
    for policy in dict.fromkeys(c["policy"] for c in chosen):
        names = [policy] + [c["name"] for c in chosen if c["policy"] == policy
                            and c["remat"] == REMAT and c["grad_accum"] == 1]
        if len(names) > 1:
            speed[policy] = _run_speed(names, model_dir, seq_len, batch, max(rounds, 3))
            log(f"  side by side: {speed[policy].get('speed_vs_first') or speed[policy]}")
    return {"seq_len": seq_len, "batch": batch, "steps": steps, "rounds": rounds,
            "load_average": os.getloadavg(), "runs": runs, "speed": speed,
            "summary": summarize(runs)}


def _run_speed(names, model_dir, seq_len, batch, rounds):
    command = [sys.executable, os.path.abspath(__file__), "--speed", ",".join(names),
               "--model", model_dir, "--seq-len", str(seq_len), "--batch", str(batch),
               "--rounds", str(rounds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    start = out.stdout.find("{")
    if out.returncode or start < 0:
        return {"error": (out.stderr or out.stdout)[-2000:]}
    return json.loads(out.stdout[start:])


def summarize(runs):
    """Per configuration: median peak MB, allocator MB, step s; ratios to references."""
    names = list(dict.fromkeys(r["name"] for r in runs))
    ok = [r for r in runs if "error" not in r]

    def of(name, key):
        return common.median([r[key] for r in ok if r["name"] == name])

    def paired(name, ref, key):
        by_round = {r["round"]: r[key] for r in ok if r["name"] == ref}
        return common.median([r[key] / by_round[r["round"]] for r in ok
                              if r["name"] == name and r["round"] in by_round])

    rows = {}
    for name in names:
        cfg = next(r for r in runs if r["name"] == name)
        base = cfg["policy"]  # the same policy without remat or accumulation
        rows[name] = {
            "peak_rss_mb": of(name, "peak_rss_mb"),
            "built_rss_mb": of(name, "built_rss_mb"),
            "allocator_peak_mb": of(name, "allocator_peak_mb"),
            "step_seconds": of(name, "step_seconds"),
            "peak_vs_float32": _ratio(of(name, "peak_rss_mb"), of("float32", "peak_rss_mb")),
            "allocator_vs_float32": _ratio(of(name, "allocator_peak_mb"),
                                           of("float32", "allocator_peak_mb")),
            "peak_vs_policy": _ratio(of(name, "peak_rss_mb"), of(base, "peak_rss_mb")),
            "speed_vs_policy": (1 / paired(name, base, "step_seconds")
                                if name != base and paired(name, base, "step_seconds") else None),
        }
    return rows


def _ratio(a, b):
    return a / b if a and b else None


def targets(result):
    """Issue 18's memory targets: {name: {"value", "target", "met", "note"}}."""
    result = result or {}  # the memory part did not run
    rows = result.get("summary") or {}
    out = {}
    bf16 = rows.get("mixed_bfloat16") or {}
    where = f"batch {result.get('batch')} x {result.get('seq_len')} tokens, MiniLM" if rows else ""
    if bf16.get("peak_vs_float32"):
        out["mixed_bfloat16 peak training memory <= 0.75x float32"] = dict(
            value=bf16["peak_vs_float32"], target=0.75, met=bf16["peak_vs_float32"] <= 0.75,
            note=f"VmHWM, {where}; TensorFlow allocator peak "
                 f"{_f(bf16['allocator_vs_float32']) or 'not counted'}x")
    for policy in ("mixed_bfloat16", "float32"):
        name = f"{policy}_remat_{REMAT}"
        row = rows.get(name) or {}
        # Side by side in one process where measured; else paired by round.
        side = (result.get("speed", {}).get(policy) or {}).get("speed_vs_first", {}).get(name)
        speed = side or row.get("speed_vs_policy")
        if row.get("peak_vs_policy") and speed:
            out[f"--remat ({policy}) peak <= 0.7x at >= 0.75x speed"] = dict(
                value=row["peak_vs_policy"], target=0.7,
                met=row["peak_vs_policy"] <= 0.7 and speed >= 0.75,
                note=f"speed {speed:.3f}x ("
                     + ("side by side in one process" if side else "paired by round")
                     + f"), {where}")
    return out


def markdown(result):
    """The README's "Memory" table for one result."""
    rows = (result or {}).get("summary") or {}
    if not rows:
        return []
    lines = [f"## Training memory (batch {result['batch']} x {result['seq_len']} tokens, "
             f"each configuration in a fresh process, {result['rounds']} round(s))", "",
             "| configuration | peak MB (VmHWM) | vs float32 | vs same policy | allocator "
             "peak MB | step s | speed vs same policy |", "| --- | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {_f(r['peak_rss_mb'], '{:.0f}')} | "
                     f"{_f(r['peak_vs_float32'])} | {_f(r['peak_vs_policy'])} | "
                     f"{_f(r['allocator_peak_mb'], '{:.0f}')} | {_f(r['step_seconds'])} | "
                     f"{_f(r['speed_vs_policy'])} |")
    return lines + [""]


def _f(value, spec="{:.2f}"):
    return "" if value is None else spec.format(value)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", default=None)
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    parser.add_argument("--speed", default=None, help="names of configurations to time "
                        "side by side in one process, the reference first")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    from tfmp import models

    model_dir = args.model or models.default_model_dir()
    if args.child:
        print(json.dumps(child(json.loads(args.child), model_dir, args.seq_len, args.batch,
                               args.steps)))
    elif args.speed:
        by_name = {c["name"]: c for c in configs(False)}
        result = speed_child([by_name[n] for n in args.speed.split(",")], model_dir,
                             args.seq_len, args.batch, args.rounds)
        result["load_average"] = os.getloadavg()
        print(json.dumps(result, indent=1))
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=1)
    else:
        result = measure(model_dir, quick=args.quick, rounds=args.rounds, steps=args.steps,
                         seq_len=args.seq_len, batch=args.batch,
                         only=args.configs.split(",") if args.configs else None)
        result["machine"] = common.machine()
        text = json.dumps(result, indent=1, default=str)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        print(json.dumps(result["summary"], indent=1))
