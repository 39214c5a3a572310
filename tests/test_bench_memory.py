"""benchmarks/memory.py: peak training memory per policy and --remat, one process each."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import memory  # noqa: E402  (benchmarks/memory.py)

from tfmp import memory as tfmp_memory  # noqa: E402


def _run(name, policy, round_, peak, step, remat=None):
    return dict(name=name, policy=policy, remat=remat, grad_accum=1, round=round_,
                peak_rss_mb=peak, built_rss_mb=1000.0, allocator_peak_mb=peak - 1000,
                step_seconds=step)


def test_summary_ratios_memory_to_float32_and_pairs_speed_by_round():
    runs = [_run("float32", "float32", 0, 4000, 10.0),
            _run("mixed_bfloat16", "mixed_bfloat16", 0, 3000, 5.0),
            _run("mixed_bfloat16_remat_blocks", "mixed_bfloat16", 0, 2000, 6.0, "blocks"),
            # A loaded second round: twice as slow for both, the same ratio.
            _run("mixed_bfloat16", "mixed_bfloat16", 1, 3000, 10.0),
            _run("mixed_bfloat16_remat_blocks", "mixed_bfloat16", 1, 2000, 12.0, "blocks")]
    rows = memory.summarize(runs)
    assert rows["mixed_bfloat16"]["peak_vs_float32"] == 0.75
    assert rows["mixed_bfloat16"]["allocator_vs_float32"] == pytest.approx(2000 / 3000)
    remat = rows["mixed_bfloat16_remat_blocks"]
    assert remat["peak_vs_policy"] == pytest.approx(2 / 3)
    assert remat["speed_vs_policy"] == pytest.approx(5 / 6)
    targets = memory.targets({"summary": rows, "batch": 16, "seq_len": 512})
    assert targets["mixed_bfloat16 peak training memory <= 0.75x float32"]["met"]
    assert targets["--remat (mixed_bfloat16) peak <= 0.7x at >= 0.75x speed"]["met"]
    assert "| mixed_bfloat16_remat_blocks | 2000 |" in "\n".join(memory.markdown(
        {"summary": rows, "batch": 16, "seq_len": 512, "rounds": 2}))


@pytest.mark.slow  # four fresh TensorFlow processes
def test_each_configuration_runs_in_its_own_process(tiny_bert_dir):
    result = memory.measure(tiny_bert_dir, quick=True, rounds=1, steps=1, seq_len=32, batch=4,
                            log=lambda *a: None)
    runs = {r["name"]: r for r in result["runs"]}
    counted = tfmp_memory.allocator_mb("CPU:0", "current") is not None
    assert set(runs) == {"float32", "mixed_bfloat16", "mixed_bfloat16_remat_blocks"}
    for name, r in runs.items():
        assert "error" not in r, r.get("error")
        assert r["peak_rss_mb"] >= r["built_rss_mb"] > r["start_rss_mb"] > 0, name
        # TensorFlow's CPU allocator counts this tiny model's tensors as 0 MB; MiniLM's
        # are counted (tests/test_memory.py checks the figure on 64 MB of activations).
        # Without oneDNN the CPU allocator keeps no counters: no figures, not zeros.
        if counted:
            assert r["allocator_peak_mb"] >= r["allocator_before_mb"] >= 0, name
        else:
            assert r["allocator_peak_mb"] is r["allocator_before_mb"] is None, name
    assert runs["mixed_bfloat16_remat_blocks"]["layers_rematerialized"] == 2
    assert result["summary"]["float32"]["peak_vs_float32"] == 1.0
    # The speed target's figure: remat against plain, side by side in one process.
    assert result["speed"]["mixed_bfloat16"]["speed_vs_first"][
        "mixed_bfloat16_remat_blocks"] > 0
