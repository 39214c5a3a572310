"""The Markdown tables and the target checks of a benchmark results dict."""


import statistics

import memory


def _f(value, fmt="{:.2f}"):
    return "n/a" if value is None else fmt.format(value)


def targets(results):
    """Each target of issue 6: {name: {"value", "target", "met", "note"}}."""
    out = {}
    tr = results.get("training", {})
    cfgs = tr.get("configs", {})
    ratios = tr.get("ratios", {})
    tf_cfgs = {k: v for k, v in cfgs.items() if v["engine"] == "tf"}
    if tf_cfgs:
        best = max(tf_cfgs, key=lambda k: tf_cfgs[k]["mfu"] or 0)
        bf16 = cfgs.get("tf_mixed_bfloat16_fixed", {})
        bf16_ceiling = max(tr.get("matmul_bfloat16_gflops") or [0]) * 1e9
        against_bf16 = (f"; tf_mixed_bfloat16_fixed against the bfloat16 matmul rate "
                        f"({bf16_ceiling / 1e9:.0f} GFLOP/s): "
                        f"{bf16['flops_per_second'] / bf16_ceiling:.0%}"
                        if bf16 and bf16_ceiling else "")
        out["MFU >= 70% of the float32 matmul rate"] = dict(
            value=tf_cfgs[best]["mfu"], target=0.70, met=(tf_cfgs[best]["mfu"] or 0) >= 0.70,
            note=f"median over rounds, best: {best}; tf_float32_fixed: "
                 f"{_f(cfgs.get('tf_float32_fixed', {}).get('mfu'))}{against_bf16}")
        length_aware = {k: v for k, v in ratios.items()
                        if k.startswith(("bucketed / fixed", "trimmed (default) / fixed",
                                         "grouped / fixed"))}
        grouping = results.get("grouping", {}).get("variants", {})
        if grouping:
            # The real `tfmp train` runs, paired by seed, decide the accuracy question.
            pool = tr.get("settings", {}).get("group_pool")
            name = f"pool{pool}" if f"pool{pool}" in grouping else min(
                (k for k in grouping if k != "random"), key=lambda k: grouping[k]["mean_width"])
            g = grouping[name]
            speed = length_aware.get("grouped / fixed-64, float32")
            out["length-aware batching >= 1.5x fixed-64, same accuracy"] = dict(
                value=speed, target=1.5, met=(speed or 0) >= 1.5
                and g["accuracy_diff_mean"] > -0.005,
                note=f"grouped (pool {pool}) / fixed-64 step, float32; tfmp train --length-grouping "
                     f"--length-pool {name[4:]}: mean width {g['mean_width']:.1f} vs "
                     f"{grouping['random']['mean_width']:.1f} random, test accuracy "
                     f"{g['accuracy_diff_mean']:+.2%} (sd {_f(g['accuracy_diff_sd'], '{:.2%}')}) "
                     f"vs random batches over {len(g['runs'])} seeds")
        elif length_aware:
            best = max(length_aware, key=lambda k: length_aware[k] or 0)
            acc = results.get("accuracy", {}).get("pipelines", {})
            accuracy = ("test accuracy " + ", ".join(f"{k} {v['accuracy']:.2%}"
                                                     for k, v in acc.items())
                        if acc else "accuracy not measured in this run")
            out["length-aware batching >= 1.5x fixed-64"] = dict(
                value=length_aware[best], target=1.5, met=(length_aware[best] or 0) >= 1.5,
                note=f"{best}; {accuracy}")
        waits = [v["input_wait_share"] for v in tf_cfgs.values()
                 if v["input_wait_share"] is not None]
        if waits:
            out["input wait < 5% of step time"] = dict(
                value=max(waits), target=0.05, met=max(waits) < 0.05,
                note="largest share over all tf configurations")
        auto = tr.get("auto_policy", {}).get("name")
        for policy in ("mixed_bfloat16", "mixed_float16"):
            r = ratios.get(f"{policy} / float32 (fixed input)")
            if r is not None:
                out[f"{policy} not >5% slower than float32 (or not auto)"] = dict(
                    value=r, target=0.95, met=r >= 0.95 or auto != policy,
                    note=f"auto picks {auto} here")
    for policy in ("float32", "mixed_bfloat16", "mixed_float16"):
        c = cfgs.get(f"tf_{policy}_fixed", {})
        if c.get("own_mfu") is not None:
            out[f"{policy} step >= 70% of its own matmul peak"] = dict(
                value=c["own_mfu"], target=0.70, met=c["own_mfu"] >= 0.70,
                note=f"tf_{policy}_fixed: {c['flops_per_second'] / 1e9:.0f} GFLOP/s against "
                     f"{c['own_peak_gflops']:.0f}")
    for name, p in results.get("endtoend", {}).get("pairs", {}).items():
        mean = statistics.mean
        out[f"end to end >= 1.5x the Hugging Face Trainer, {name}"] = dict(
            value=p["speed_ratio_median"], target=1.5, met=p["speed_ratio_median"] >= 1.5,
            note=f"tfmp {p['tfmp_policy']} {statistics.median(p['tfmp_seconds']):.1f} s vs "
                 f"Trainer {p['hf_precision']} {statistics.median(p['hf_seconds']):.1f} s "
                 f"(median); test accuracy {mean(p['tfmp_accuracy']):.2%} vs "
                 f"{mean(p['hf_accuracy']):.2%} (mean of {len(p['hf_accuracy'])})")
    for label in ("tfmp / PyTorch, float32, fixed-64", "tfmp / PyTorch, bfloat16, fixed-64"):
        # Same sequence length only: a bucketed tfmp step does less work than fixed-64.
        candidates = {k: v for k, v in ratios.items() if "PyTorch" in k and k.startswith("tfmp")
                      and "bucketed" not in k and label.split(", ")[1] in k and v is not None}
        policy = label.split(", ")[1]
        solo = results.get("peer", {}).get(
            {"float32": "tf_float32_fixed / torch_float32_fixed",
             "bfloat16": "tf_mixed_bfloat16_fixed / torch_bfloat16_fixed"}[policy], {})
        if solo.get("ratio") is not None:
            # Each engine alone in its process: the fair comparison, so the one judged.
            out[f"{label.replace(', fixed-64', '')} >= 1.0x"] = dict(
                value=solo["ratio"], target=1.0, met=solo["ratio"] >= 1.0,
                note=f"each engine alone in its process, fixed-64; in one process: "
                     f"{_f(ratios.get(label))}")
        elif candidates:
            best = max(candidates, key=candidates.get)
            out[f"{label.replace(', fixed-64', '')} >= 1.0x"] = dict(
                value=candidates[best], target=1.0, met=candidates[best] >= 1.0,
                note=f"best: {best}; plain step: {_f(ratios.get(label))}")
    out.update(memory.targets(results.get("train_memory")))
    inf = results.get("inference", {}).get("ratios", {})
    r = inf.get("tflite_int8 / savedmodel_fp32 (batch 32 ex/s)")
    if r is not None:
        out["TFLite int8 >= 1.5x SavedModel fp32 at batch 32"] = dict(
            value=r, target=1.5, met=r >= 1.5, note="")
    return out


def _per_round(training, label):
    """The per-round ratios behind a median, from the labels' configuration names."""
    import re

    names = re.findall(r"tf_\w+|torch_\w+", training.get("ratio_pairs", {}).get(label, ""))
    if len(names) != 2 or not all(n in training["configs"] for n in names):
        return ""
    a, b = (training["configs"][n]["rounds"] for n in names)
    return ", ".join(f"{x['examples_per_second'] / y['examples_per_second']:.2f}"
                     for x, y in zip(a, b))


def _endtoend(e2e):
    """The end-to-end table: every run of both engines, then the ratios."""
    if not e2e:
        return []
    st = e2e["settings"]
    lines = [f"## End to end: `tfmp train` vs the Hugging Face Trainer ({st['examples']} airline "
             f"tweets x {st['epochs']} epochs, batch {st['batch_size']}, max length "
             f"{st['seq_len']}, validation each epoch; seeds {', '.join(map(str, st['seeds']))})",
             "", "Training seconds: tfmp `train_seconds`, the Trainer's `train_runtime` (both the "
             "fit loop with its per-epoch validation). CPU: the process's CPU time over its wall "
             "time (200% = both cores). Settings: benchmarks/hf_trainer_job.py.", "",
             "| engine | precision | seed | training s | process s | CPU | test accuracy | "
             "macro-F1 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in e2e["runs"]:
        lines.append(f"| {r['engine']} | {r['precision']} | {r['seed']} | {r['seconds']:.1f} | "
                     f"{r['process_seconds']:.1f} | {r['cpu_percent']:.0f}% | "
                     f"{r['accuracy']:.2%} | {r['macro_f1']:.3f} |")
    lines += ["", "| pair | Trainer s / tfmp s (median) | per run |", "| --- | --- | --- |"]
    for name, p in e2e["pairs"].items():
        lines.append(f"| {name} (tfmp {p['tfmp_policy']}, Trainer {p['hf_precision']}) | "
                     f"{p['speed_ratio_median']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in p['speed_ratios'])} |")
    return lines + [""]


def markdown(results):
    m, v = results["machine"], results["versions"]
    lines = [
        f"# tfmp benchmarks: {m['host']}, {results['date']}" + (" (quick)" if results["quick"] else ""),
        "",
        f"Command: `{results['command']}`"
        + (f"; accuracy: `{results['accuracy_command']}`" if results.get("accuracy_command")
           else "")
        + (f"; grouping: `{results['grouping_command']}`" if results.get("grouping_command")
           else "") + "  ",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores; "
        + ", ".join(f"{k} {val}" for k, val in v.items() if val) + "  ",
        f"Wall time {results['wall_seconds'] / 60:.1f} min. Ratios are medians over alternating "
        "rounds in one process (A B C, C B A, ...); absolute times are indicative only "
        "(they move with whatever else runs on the machine).",
        "",
    ]
    if results.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
        for name, t in results["targets"].items():
            lines.append(f"| {name} | {_f(t['value'])} ({t['note']}) | "
                         f"{'yes' if t['met'] else '**no**'} |")
        lines.append("")
    tr = results.get("training")
    if tr:
        s = tr["settings"]
        lines += [
            "## Training step (batch %d, --seq-len %d, %d rounds x %d steps)" % (
                s["batch_size"], s["seq_len"], s["repeats"], s["steps_per_repeat"]),
            "",
            "float32 matmul rate (2048^2, best of 3, once per round): "
            + ", ".join(f"{g:.0f}" for g in tr["matmul_float32_gflops"]) + " GFLOP/s; MFU is "
            f"against the fastest ({tr['matmul_float32_ceiling_gflops']:.0f} GFLOP/s). "
            + (f"bfloat16 matmul: {', '.join(f'{g:.0f}' for g in tr['matmul_bfloat16_gflops'])} "
               "GFLOP/s. " if tr.get("matmul_bfloat16_gflops") else "") +
            f"`auto` picks **{tr['auto_policy']['name']}** here.",
            "",
            "| configuration | ms/step | examples/s | mean width | GFLOP/s | MFU (best round) "
            "| input wait |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, c in tr["configs"].items():
            lines.append(
                f"| `{name}` | {_f(c['ms_per_step'], '{:.0f}')} | "
                f"{_f(c['examples_per_second'], '{:.1f}')} | {_f(c['mean_width'], '{:.1f}')} | "
                f"{_f(c['flops_per_second'] / 1e9, '{:.0f}')} | {_f(c['mfu'], '{:.0%}')} "
                f"({_f(c.get('best_round_mfu'), '{:.0%}')}) | "
                f"{_f(c['input_wait_share'], '{:.1%}')} |")
        lines += ["", "| ratio (examples/s, median over rounds) | value | per round |",
                  "| --- | --- | --- |"]
        lines += [f"| {k} | {_f(val)}x | {_per_round(tr, k)} |" for k, val in tr["ratios"].items()]
        lines.append("")
    if results.get("onednn"):
        o = results["onednn"]
        lines += [f"oneDNN (`TF_ENABLE_ONEDNN_OPTS` 1 vs 0, float32 fixed-64, separate processes): "
                  f"{_f(o['ratio_on_over_off'])}x", ""]
    if results.get("peer"):
        lines += ["## tfmp / PyTorch, each engine alone in its own process (fixed-64)", "",
                  "| pair | ratio (median) | tfmp ex/s per round | PyTorch ex/s per round |",
                  "| --- | --- | --- | --- |"]
        for pair, v in results["peer"].items():
            lines.append(f"| {pair} | {_f(v['ratio'])}x | "
                         f"{', '.join(f'{x:.1f}' for x in v['numerator'])} | "
                         f"{', '.join(f'{x:.1f}' for x in v['denominator'])} |")
        lines.append("")
    g = results.get("grouping")
    if g:
        st = g["settings"]
        lines += [f"## Length grouping vs accuracy (`tfmp train`, {st['policy']}, "
                  f"{st['examples']} training tweets x {st['epochs']} epochs, seeds "
                  f"{', '.join(map(str, st['seeds']))}; 1,464 test tweets)", "",
                  "| batches | mean padded width | test accuracy, mean (sd) | vs random, "
                  "paired by seed: mean (sd) | per seed | train ex/s vs random |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for name, v in g["variants"].items():
            label = "random (default)" if name == "random" else (
                f"`--length-grouping --length-pool {name[4:]}`")
            lines.append(
                f"| {label} | {v['mean_width']:.1f} | {v['accuracy_mean']:.2%} "
                f"({_f(v['accuracy_sd'], '{:.2%}')}) | {v['accuracy_diff_mean']:+.2%} "
                f"({_f(v['accuracy_diff_sd'], '{:.2%}')}) | "
                f"{', '.join(format(r['accuracy'], '.2%') for r in v['runs'])} | "
                f"{_f(v['speed_ratio_median'])}x |")
        lines.append("")
    lines += _endtoend(results.get("endtoend"))
    p = results.get("pipeline")
    if p:
        lines += [
            f"## Input pipeline ({p['examples']} airline tweets, batches of 32, padded to 64)", "",
            "| tokenizer | examples/s |", "| --- | --- |",
            f"| in-graph (keras-hub WordPiece, tensorflow-text, tf.data) | "
            f"{_f(p['in_graph_examples_per_second'], '{:.0f}')} |",
            f"| Hugging Face `tokenizers` (BertWordPieceTokenizer) | "
            f"{_f(p['hf_tokenizers_examples_per_second'], '{:.0f}')} |",
            "",
            f"in-graph / HF: {_f(p['ratio_in_graph_over_hf'])}x; identical token ids on "
            f"{p['token_id_agreement']:.1%} of examples.", ""]
    acc = results.get("accuracy")
    if acc:
        lines += [f"## Accuracy by input pipeline ({acc['policy']}, {acc['train_examples']} "
                  f"training tweets, one epoch = {acc['steps']} steps, seed 0, "
                  f"{acc['test_examples']} test tweets)", "",
                  "| input | test accuracy | macro-F1 | mean width | training s |",
                  "| --- | --- | --- | --- | --- |"]
        for name, a in acc["pipelines"].items():
            lines.append(f"| {name} | {a['accuracy']:.2%} | {a['macro_f1']:.3f} | "
                         f"{a['mean_width']:.1f} | {a['train_seconds']:.0f} |")
        lines.append("")
    lines += memory.markdown(results.get("train_memory"))
    inf = results.get("inference")
    if inf:
        rss = inf.get("peak_rss_mb", {})
        lines += ["## Inference (token ids in, padded to 64; TFLite with 2 threads)", "",
                  "| engine | batch 1 p50 ms | batch 1 p99 ms | batch 32 ex/s | vs SavedModel | "
                  "peak RSS MB (after imports) |", "| --- | --- | --- | --- | --- | --- |"]
        for name, e in inf.get("engines", {}).items():
            ratio = inf["ratios"].get(f"{name} / savedmodel_fp32 (batch 32 ex/s)",
                                      1.0 if name == "savedmodel_fp32" else None)
            r = rss.get(name) or {}
            lines.append(
                f"| {name} | {_f(e['batch1_p50_ms'], '{:.1f}')} | {_f(e['batch1_p99_ms'], '{:.1f}')} | "
                f"{_f(e['batch32_examples_per_second'], '{:.0f}')} | {_f(ratio)}x | "
                f"{_f(r.get('peak_rss_mb'), '{:.0f}')} ({_f(r.get('after_imports_mb'), '{:.0f}')}) |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    # Re-renders a results file's targets and Markdown (after a change to this module).
    import json
    import sys

    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import training

    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        if "training" in results:
            training.apply_mfu(results["training"])
            training.compute_ratios(results["training"])
        results["targets"] = targets(results)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)
            f.write("\n")
        with open(path[:-len(".json")] + ".md", "w", encoding="utf-8") as f:
            f.write(markdown(results))
