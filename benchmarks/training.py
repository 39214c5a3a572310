"""Training throughput: tfmp's MiniLM classifier under each policy and input pipeline, and
the PyTorch/transformers peer, timed in alternating rounds in one process.

Each configuration is one way to run the same training step (model, batch, AdamW, loss):

    engine  tf (Keras `train_step` of tfmp's compiled classifier) or torch (transformers)
    policy  float32, mixed_bfloat16, mixed_float16 (torch: float32 or autocast bfloat16)
    input   fixed: padded to --seq-len; default: tfmp's pipeline (each batch trimmed to its
            longest tweet); bucket: batches of similar length (bucket_by_sequence_length),
            then trimmed; grouped: tfmp's --length-grouping order (pools of GROUP_POOL
            batches sorted by length), then trimmed
    xla     the step under tf.function(jit_compile=True)
    spe     steps per tf.function call (Keras' steps_per_execution)

Run alone: `python benchmarks/training.py --quick`.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

NUM_CLASSES = 3
BUCKET_BOUNDARIES = [16, 24, 32, 40, 48]
GROUP_POOL = 8  # batches per length-sorted pool in the "grouped" pipeline
# Ablations: a tfmp speed-up switched back to the Keras/keras-hub default.
#   keras_adamw    Keras' elementwise AdamW update instead of the fused kernels
#   keras_dropout  Keras' dropout (a float draw per element) instead of FastDropout
#   keras_gelu     keras-hub's unfused tanh GELU instead of the XLA-fused one
ABLATIONS = ("keras_adamw", "keras_dropout", "keras_gelu")


def configs(quick):
    def tf(policy, pipeline="fixed", xla=False, spe=1, ablate=None):
        name = f"tf_{policy}_{pipeline}" + ("_xla" if xla else "") + (f"_spe{spe}" if spe > 1 else "")
        name += f"_{ablate}" if ablate else ""
        return dict(name=name, engine="tf", policy=policy, pipeline=pipeline, xla=xla, spe=spe,
                    ablate=ablate)

    def torch(policy):
        return dict(name=f"torch_{policy}_fixed", engine="torch", policy=policy,
                    pipeline="fixed", xla=False, spe=1)

    if quick:
        return [tf("float32"), tf("mixed_bfloat16"), tf("float32", "default"),
                tf("float32", "bucket"), torch("float32")]
    return [
        tf("float32"), tf("mixed_bfloat16"), tf("mixed_float16"),
        tf("float32", "default"), tf("mixed_bfloat16", "default"), tf("mixed_float16", "default"),
        tf("float32", "bucket"), tf("mixed_bfloat16", "bucket"),
        tf("float32", "grouped"), tf("mixed_bfloat16", "grouped"),
        tf("float32", xla=True), tf("mixed_bfloat16", xla=True),
        tf("float32", spe=8),
        # Each of tfmp's step optimisations turned off, to show what it buys.
        *[tf(p, ablate=a) for a in ABLATIONS for p in ("float32", "mixed_bfloat16")],
        torch("float32"), torch("bfloat16"),
    ]


def _datasets(texts, label_ids, preprocessor, batch_size, pipeline, seed=0):
    import keras
    import tensorflow as tf

    from tfmp import data

    if pipeline == "grouped":
        # What `tfmp train --length-grouping --length-pool GROUP_POOL` feeds: each epoch
        # a seeded order of similar-length batches (`data.length_grouped_order`).
        import numpy as np

        lengths = np.minimum(data.token_lengths(texts, preprocessor),
                             preprocessor.sequence_length)
        rng = np.random.default_rng(seed)
        order = np.concatenate([data.length_grouped_order(lengths, batch_size, rng, GROUP_POOL)
                                for _ in range(4)])
        texts, label_ids = [texts[i] for i in order], np.asarray(label_ids)[order]
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.constant(texts, tf.string), tf.constant(label_ids, tf.int32)))
    ds = (ds.repeat() if pipeline == "grouped" else
          ds.shuffle(len(texts), seed=seed).repeat())

    def tokenize(trim):
        def fn(t, labels):
            x, y, _ = keras.utils.unpack_x_y_sample_weight(preprocessor(t, labels))
            return (data.trim_padding(x) if trim else x), y
        return fn

    if pipeline in ("fixed", "default", "grouped"):
        # What `data.make_dataset(split, preprocessor, batch)` builds (trim=False for fixed).
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(tokenize(pipeline != "fixed"), num_parallel_calls=tf.data.AUTOTUNE)
    elif pipeline == "bucket":
        # Tokenize in big batches, then regroup examples of similar length.
        ds = ds.batch(256).map(tokenize(False), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        ds = ds.bucket_by_sequence_length(
            lambda x, y: tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32)),
            bucket_boundaries=BUCKET_BOUNDARIES,
            bucket_batch_sizes=[batch_size] * (len(BUCKET_BOUNDARIES) + 1),
            drop_remainder=True)
        ds = ds.map(lambda x, y: (data.trim_padding(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    return ds.prefetch(tf.data.AUTOTUNE)


class _TFRunner:
    def __init__(self, cfg, model, dataset):
        import tensorflow as tf

        self.cfg, self.model = cfg, model
        self.iterator = iter(dataset)
        if cfg["spe"] == 1:
            # Any batch size and width: one trace for trimmed/bucketed batches too (XLA
            # still compiles once per concrete width it meets).
            signature = tf.nest.map_structure(
                lambda s: tf.TensorSpec([None] * len(s.shape), s.dtype), dataset.element_spec)
            self.fn = tf.function(lambda x, y: model.train_step((x, y)),
                                  input_signature=list(signature), jit_compile=cfg["xla"])
        else:
            spe = cfg["spe"]

            @tf.function(jit_compile=cfg["xla"])
            def multi(iterator):
                logs = model.train_step(next(iterator))
                for _ in tf.range(spe - 1):
                    logs = model.train_step(next(iterator))
                return logs
            self.fn = multi

    def chunk(self, steps):
        """(seconds, seconds waiting for input, [padded widths]) of `steps` steps."""
        widths, wait = [], 0.0
        start = time.perf_counter()
        if self.cfg["spe"] == 1:
            for _ in range(steps):
                t = time.perf_counter()
                x, y = next(self.iterator)
                wait += time.perf_counter() - t
                widths.append(int(x["token_ids"].shape[1]))
                logs = self.fn(x, y)
        else:
            for _ in range(max(1, steps // self.cfg["spe"])):
                logs = self.fn(self.iterator)
                widths += [None] * self.cfg["spe"]  # fixed pipeline: the --seq-len
            wait = None
        float(logs["loss"])  # wait for the step to finish
        return time.perf_counter() - start, wait, widths


class _TorchRunner:
    def __init__(self, cfg, model_dir, batches, threads):
        import torch
        from transformers import BertForSequenceClassification

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch, self.cfg = torch, cfg
        self.model = BertForSequenceClassification.from_pretrained(
            model_dir, num_labels=NUM_CLASSES)
        self.model.train()
        # Same optimizer settings as tfmp (AdamW, eps 1e-6, decay 0.01, clip 1.0), in
        # PyTorch's fused kernel, as the Hugging Face Trainer runs it (transformers 5's
        # default `optim="adamw_torch_fused"`): MiniLM, batch 32, float32, 649 -> 592 ms
        # a step at width 32, 375 -> 313 ms at 16 (2026-12-01, AVX2 EPYC).
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=5e-5, eps=1e-6,
                                     weight_decay=0.01, fused=True)
        self.batches = [
            ({"input_ids": torch.tensor(x["token_ids"]).long(),
              "attention_mask": torch.tensor(x["padding_mask"]).long(),
              "token_type_ids": torch.tensor(x["segment_ids"]).long()},
             torch.tensor(y).long()) for x, y in batches]
        self.i = 0

    def chunk(self, steps):
        torch = self.torch
        widths = []
        start = time.perf_counter()
        for _ in range(steps):
            x, y = self.batches[self.i % len(self.batches)]
            self.i += 1
            widths.append(int(x["input_ids"].shape[1]))
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16,
                                enabled=self.cfg["policy"] == "bfloat16"):
                loss = self.model(**x, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        return time.perf_counter() - start, 0.0, widths


def _load_tf_model(model_dir, policy_name, seq_len, total_steps=100_000, ablate=None):
    from tfmp import models, precision
    from tfmp.config import TrainConfig
    from tfmp.train import compile_classifier

    if ablate not in (None,) + ABLATIONS:
        raise ValueError(f"unknown ablation {ablate!r}; known: {ABLATIONS}")
    policy = precision.resolve(policy_name)
    model = models.load_classifier(model_dir, num_classes=NUM_CLASSES, sequence_length=seq_len,
                                   policy=policy)
    compile_classifier(model, policy, total_steps=total_steps, config=TrainConfig())
    if ablate == "keras_adamw":
        getattr(model.optimizer, "inner_optimizer", model.optimizer).fused = False
    elif ablate == "keras_dropout":
        from tfmp import layers

        layers.use_fast_dropout(model, fast=False)
    elif ablate == "keras_gelu":
        from tfmp import layers

        layers.use_fused_gelu(model, fused=False)
    return model


def _training_split(max_examples):
    from tfmp import data

    examples = data.load_examples("airline")
    labels = data.LabelMap.from_labels(examples.labels)
    splits = data.split_examples(examples.texts, labels.ids(examples.labels), seed=0)
    n = min(len(splits.train), max_examples)
    return splits.train.texts[:n], splits.train.label_ids[:n]


def measure(model_dir, quick=False, repeats=4, steps=8, batch_size=32, seq_len=64,
            torch_threads=2, only=None, log=print):
    """Runs every configuration (or those named in `only`) in alternating rounds; returns
    the training results dict."""
    import numpy as np

    from tfmp import models, precision

    cfgs = configs(quick)
    if only:
        unknown = sorted(set(only) - {c["name"] for c in configs(False) + cfgs})
        if unknown:
            raise ValueError(f"--configs: unknown {unknown}; known: "
                             f"{', '.join(c['name'] for c in configs(False))}.")
        cfgs = [c for c in configs(False) if c["name"] in only]
    config_json = models.check_checkpoint_dir(model_dir)
    texts, label_ids = _training_split(2048 if quick else 100_000)
    tf_models, runners = {}, {}
    for cfg in cfgs:
        if cfg["engine"] != "tf":
            continue
        key = (cfg["policy"], cfg.get("ablate"))
        if key not in tf_models:
            tf_models[key] = _load_tf_model(model_dir, cfg["policy"], seq_len,
                                            ablate=cfg.get("ablate"))
        model = tf_models[key]
        ds = _datasets(texts, label_ids, model.preprocessor, batch_size, cfg["pipeline"])
        if not model.optimizer.built:
            x, y = next(iter(ds))
            model.train_step((x, y))  # eagerly: builds optimizer slots and metrics
        runners[cfg["name"]] = _TFRunner(cfg, model, ds)
    torch_cfgs = [c for c in cfgs if c["engine"] == "torch"]
    if torch_cfgs:
        preprocessor = next(iter(tf_models.values())).preprocessor if tf_models else (
            models.load_preprocessor(model_dir, seq_len))
        fixed = _datasets(texts, label_ids, preprocessor, batch_size, "fixed")
        batches = [(x, y) for x, y in fixed.take(8).as_numpy_iterator()]
        for cfg in torch_cfgs:
            runners[cfg["name"]] = _TorchRunner(cfg, model_dir, batches, torch_threads)

    # Warm-up: tracing, XLA compilation, oneDNN primitive caches. Varying-width inputs get
    # 30 steps: tfmp's fused GELU compiles once per batch width (~80 ms), a cost a real
    # run pays once (~55 widths in ~4 s) but 18 timed steps would see as a steady state.
    for cfg in cfgs:
        t = time.perf_counter()
        runners[cfg["name"]].chunk(cfg["spe"] if cfg["spe"] > 1 else (
            2 if quick else 3 if cfg["pipeline"] == "fixed" else 30))
        log(f"  warm-up {cfg['name']}: {time.perf_counter() - t:.1f} s")

    rounds = {c["name"]: [] for c in cfgs}
    matmul, matmul_bf16 = [], []
    for r in range(repeats):
        matmul.append(common.matmul_flops_per_second(n=512 if quick else 2048, repeats=3))
        matmul_bf16.append(common.matmul_flops_per_second(n=512 if quick else 2048, repeats=3,
                                                          dtype="bfloat16"))
        order = cfgs if r % 2 == 0 else cfgs[::-1]  # A B C, C B A: drift cancels
        for cfg in order:
            n = cfg["spe"] if cfg["spe"] > 1 else steps
            seconds, wait, widths = runners[cfg["name"]].chunk(n)
            widths = [w or seq_len for w in widths]
            flops = sum(common.bert_train_flops(config_json, batch_size, w, NUM_CLASSES)
                        for w in widths)
            rounds[cfg["name"]].append({
                "seconds": seconds, "steps": len(widths),
                "examples_per_second": batch_size * len(widths) / seconds,
                "ms_per_step": 1000 * seconds / len(widths),
                "input_wait_share": None if wait is None else wait / seconds,
                "mean_width": float(np.mean(widths)),
                "flops_per_second": flops / seconds,
            })
        log(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{c['name']} {rounds[c['name']][-1]['ms_per_step']:.0f} ms" for c in cfgs))

    results = {"configs": {}, "ratios": {}, "settings": dict(
        repeats=repeats, steps_per_repeat=steps, batch_size=batch_size, seq_len=seq_len,
        torch_threads=torch_threads, train_examples=len(texts),
        bucket_boundaries=BUCKET_BOUNDARIES, group_pool=GROUP_POOL)}
    results["matmul_float32_gflops"] = [m / 1e9 for m in matmul]
    results["matmul_bfloat16_gflops"] = [m / 1e9 for m in matmul_bf16]
    for cfg in cfgs:
        rs = rounds[cfg["name"]]
        results["configs"][cfg["name"]] = dict(
            cfg, **{k: common.median([x[k] for x in rs]) for k in (
                "examples_per_second", "ms_per_step", "input_wait_share", "mean_width",
                "flops_per_second")}, rounds=rs)
    apply_mfu(results)

    compute_ratios(results)
    auto = precision.resolve("auto")
    results["auto_policy"] = {"name": auto.name, "reason": getattr(auto, "reason", "")}
    return results


def compute_ratios(results):
    """Sets `ratios` (median over rounds of paired examples/s ratios) and `ratio_pairs`."""
    configs_ = results["configs"]
    results["ratios"], results["ratio_pairs"] = {}, {}

    def ratio(a, b, label):
        if a in configs_ and b in configs_:
            results["ratio_pairs"][label] = f"{a} / {b}"
            results["ratios"][label] = common.paired_ratio(
                [x["examples_per_second"] for x in configs_[a]["rounds"]],
                [x["examples_per_second"] for x in configs_[b]["rounds"]])

    for policy in ("mixed_bfloat16", "mixed_float16"):
        for pipeline in ("fixed", "default"):
            ratio(f"tf_{policy}_{pipeline}", f"tf_float32_{pipeline}",
                  f"{policy} / float32 ({pipeline} input)")
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        ratio(f"tf_{policy}_default", f"tf_{policy}_fixed", f"trimmed (default) / fixed-64, {policy}")
        ratio(f"tf_{policy}_bucket", f"tf_{policy}_fixed", f"bucketed / fixed-64, {policy}")
        ratio(f"tf_{policy}_bucket", f"tf_{policy}_default", f"bucketed / trimmed, {policy}")
        ratio(f"tf_{policy}_grouped", f"tf_{policy}_fixed", f"grouped / fixed-64, {policy}")
        ratio(f"tf_{policy}_grouped", f"tf_{policy}_default", f"grouped / trimmed, {policy}")
        ratio(f"tf_{policy}_fixed_xla", f"tf_{policy}_fixed", f"XLA / default step, {policy} fixed-64")
    ratio("tf_float32_fixed_spe8", "tf_float32_fixed", "steps_per_execution 8 / 1, float32 fixed-64")
    ratio("tf_float32_fixed", "torch_float32_fixed", "tfmp / PyTorch, float32, fixed-64")
    ratio("tf_mixed_bfloat16_fixed", "torch_bfloat16_fixed", "tfmp / PyTorch, bfloat16, fixed-64")
    ratio("tf_float32_fixed_xla", "torch_float32_fixed", "tfmp XLA / PyTorch, float32, fixed-64")
    ratio("tf_mixed_bfloat16_fixed_xla", "torch_bfloat16_fixed",
          "tfmp XLA / PyTorch, bfloat16, fixed-64")
    for ablation in ABLATIONS:
        for policy in ("float32", "mixed_bfloat16"):
            ratio(f"tf_{policy}_fixed", f"tf_{policy}_fixed_{ablation}",
                  f"tfmp step / without it ({ablation}), {policy} fixed-64")
    ratio("torch_bfloat16_fixed", "torch_float32_fixed", "PyTorch autocast bfloat16 / float32")
    ratio("tf_float32_bucket", "torch_float32_fixed", "tfmp bucketed / PyTorch fixed-64, float32")
    ratio("tf_mixed_bfloat16_bucket", "torch_bfloat16_fixed",
          "tfmp bucketed / PyTorch fixed-64, bfloat16")
    return results


def apply_mfu(results):
    """Sets each configuration's model FLOP utilisation against the run's matmul ceiling.

    The ceiling is the fastest float32 matmul of the run, not the one of the same round:
    other processes only ever slow a probe down, and a probe that ran in a busy moment
    would make a step look better than the machine allows (values above 100%).
    """
    ceiling = max(results["matmul_float32_gflops"]) * 1e9
    results["matmul_float32_ceiling_gflops"] = ceiling / 1e9
    for c in results["configs"].values():
        for r in c["rounds"]:
            r["mfu"] = r["flops_per_second"] / ceiling
        c["mfu"] = common.median([r["mfu"] for r in c["rounds"]])
        c["best_round_mfu"] = max(r["mfu"] for r in c["rounds"])
        own = own_ceiling(results, c["policy"])
        c["own_peak_gflops"] = own / 1e9 if own else None
        c["own_mfu"] = c["flops_per_second"] / own if own and c["flops_per_second"] else None
    return results


def own_ceiling(results, policy):
    """The matmul rate (FLOP/s) a policy's step is held against: its own arithmetic's.

    float32 against the float32 matmul; bfloat16 (tfmp's mixed_bfloat16, PyTorch's
    bfloat16 autocast) against the bfloat16 matmul. mixed_float16 on a CPU without
    float16 arithmetic multiplies in float32 (tfmp.float16_cpu: float16 in and out,
    float32 accumulation), so its own peak is the float32 rate.
    """
    key = ("matmul_bfloat16_gflops" if policy in ("mixed_bfloat16", "bfloat16")
           else "matmul_float32_gflops")
    rates = results.get(key) or []
    return max(rates) * 1e9 if rates else None


def onednn_ratio(model_dir, rounds=2, steps=6, quick=False, log=print):
    """examples/s with TF_ENABLE_ONEDNN_OPTS=1 over =0 (float32, fixed-64), in subprocesses.

    The variable is read when TensorFlow starts, so each setting needs its own process;
    the processes alternate (on, off, on, off) and each pair gives a ratio.
    """
    on, off = [], []
    for r in range(rounds):
        for flag, out in (("1", on), ("0", off)) if r % 2 == 0 else (("0", off), ("1", on)):
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=flag, TF_CPP_MIN_LOG_LEVEL="2")
            cmd = [sys.executable, os.path.abspath(__file__), "--onednn-worker",
                   "--model", model_dir, "--steps", str(steps)]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                log(f"  oneDNN worker failed: {proc.stderr[-2000:]}")
                return None
            out.append(json.loads(proc.stdout.strip().splitlines()[-1])["examples_per_second"])
            log(f"  oneDNN={flag}: {out[-1]:.1f} ex/s")
    return {"onednn_on_examples_per_second": on, "onednn_off_examples_per_second": off,
            "ratio_on_over_off": common.paired_ratio(on, off)}


# Engine pairs timed again with each engine alone in its own process (`solo_ratios`).
SOLO_PAIRS = (("tf_float32_fixed", "torch_float32_fixed"),
              ("tf_mixed_bfloat16_fixed", "torch_bfloat16_fixed"))


def solo_ratios(model_dir, pairs=SOLO_PAIRS, rounds=2, steps=6, log=print):
    """examples/s ratios of configuration pairs, each configuration alone in a process.

    The in-process comparison (`measure`) shares one process between TensorFlow's and
    PyTorch's thread pools; this one gives each engine a process of its own, started
    alternately (A B, B A, ...), so neither can slow the other. Each pair: the per-round
    examples/s and the median of the paired ratios.
    """
    out = {}
    for a, b in pairs:
        values = {a: [], b: []}
        for r in range(rounds):
            for name in (a, b) if r % 2 == 0 else (b, a):
                cmd = [sys.executable, os.path.abspath(__file__), "--solo-worker", name,
                       "--model", model_dir, "--steps", str(steps)]
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    log(f"  solo worker {name} failed: {proc.stderr[-2000:]}")
                    return out
                values[name].append(
                    json.loads(proc.stdout.strip().splitlines()[-1])["examples_per_second"])
                log(f"  alone: {name} {values[name][-1]:.1f} ex/s")
        out[f"{a} / {b}"] = {"numerator": values[a], "denominator": values[b],
                             "ratio": common.paired_ratio(values[a], values[b])}
    return out


def _solo_worker(model_dir, name, steps):
    if name.startswith("torch"):
        import torch  # noqa: F401  (before TensorFlow, as in run.py)
    results = measure(model_dir, repeats=1, steps=steps, only=[name], log=lambda *a: None)
    print(json.dumps({"examples_per_second": results["configs"][name]["examples_per_second"]}))


def _onednn_worker(model_dir, steps):
    model = _load_tf_model(model_dir, "float32", 64)
    texts, label_ids = _training_split(2048)
    ds = _datasets(texts, label_ids, model.preprocessor, 32, "fixed")
    x, y = next(iter(ds))
    model.train_step((x, y))
    runner = _TFRunner(dict(spe=1, xla=False), model, ds)
    runner.chunk(2)
    seconds, _, widths = runner.chunk(steps)
    print(json.dumps({"examples_per_second": 32 * len(widths) / seconds}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--onednn-worker", action="store_true")
    parser.add_argument("--solo-worker", default=None)
    a = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmp import models as _models

    model_dir = a.model or _models.default_model_dir()
    if a.onednn_worker:
        _onednn_worker(model_dir, a.steps)
    elif a.solo_worker:
        _solo_worker(model_dir, a.solo_worker, a.steps)
    else:
        print(json.dumps(measure(model_dir, quick=a.quick, repeats=2 if a.quick else 4,
                                 steps=2 if a.quick else a.steps), indent=1, default=str))
