import json
import os

import keras
import numpy as np
import pytest

from tfmp import memory
from tfmp.config import TrainConfig, config_differences


def test_peak_memory_measures_the_fit_and_its_tensors():
    # 64 MB of float32 activations in one step: both peaks must see them.
    model = keras.Sequential([keras.Input((1024,)), keras.layers.Dense(16384),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    peak = memory.PeakMemory()
    model.fit(np.ones((1024, 1024), "float32"), np.ones((1024, 1)), batch_size=1024,
              epochs=1, verbose=0, callbacks=[peak])
    entry = peak.summary(TrainConfig(batch_size=1024))
    assert entry["peak_rss_mb"] >= entry["rss_at_start_mb"] > 0
    assert entry["allocator_device"] == "CPU:0"
    # The (1024, 16384) float32 activation and its gradient: 64 MB each.
    if memory.allocator_mb("CPU:0", "current") is None:
        # oneDNN off (TensorFlow's default without AVX512-VNNI/BF16 or AMX): the CPU
        # allocator keeps no counters, so no figure rather than a false one, and the
        # resident peak alone sees the activations (VmHWM reset at the fit's start).
        assert entry["allocator_peak_mb"] is entry["allocator_at_start_mb"] is None
        assert not entry["peak_rss_is_the_fits_own"] or (
            entry["peak_rss_mb"] - entry["rss_at_start_mb"] >= 64)
    else:
        assert entry["allocator_peak_mb"] - entry["allocator_at_start_mb"] >= 64
    assert (entry["grad_accum"], entry["remat"]) == (1, None)
    assert memory.PeakMemory().summary(TrainConfig()) is None  # no fit, no figure


def test_report_shows_the_runs_peak_memory(mixed_float16_run):
    report = json.load(open(os.path.join(mixed_float16_run.run_dir, "report.json")))
    entry = report["memory"]
    assert entry["peak_rss_mb"] > 100
    # The tiny BERT's tensors may bypass the CPU allocator's counters: then no figure.
    assert entry["allocator_peak_mb"] is None or entry["allocator_peak_mb"] > 0
    assert entry["batch_size"] == 16 and entry["grad_accum"] == 1 and entry["remat"] is None
    text = open(os.path.join(mixed_float16_run.run_dir, "report.md")).read()
    assert "## Memory" in text and f"{entry['peak_rss_mb']:,.0f} MB" in text


def test_memory_settings_may_change_on_resume():
    assert config_differences(TrainConfig(), TrainConfig(grad_accum=2, remat=True)) == []


@pytest.mark.slow  # one tiny-BERT run with both settings
def test_run_with_grad_accum_and_remat_counts_optimizer_steps(sentiment_csv, tiny_bert_dir,
                                                              tmp_path):
    from tfmp.train import train

    result = train(TrainConfig(data=sentiment_csv, model=tiny_bert_dir, policy="mixed_float16",
                               epochs=1, batch_size=16, grad_accum=4, remat=True, seq_len=16,
                               lr=5e-3, seed=1, out=str(tmp_path / "run")), verbose=0)
    # 288 training examples / 16: 18 optimizer steps, not 72 micro-batches.
    assert result.metrics["optimizer"]["iterations"] + result.metrics["optimizer"][
        "skipped_steps"] == 18
    assert result.history["loss"][0] < 1.2  # it trains (ln 3 = 1.10 at chance)
    entry = result.metrics["memory"]
    assert (entry["grad_accum"], entry["remat"]) == (4, memory.REMAT_MODE)
    saved = json.load(open(os.path.join(result.run_dir, "config.json")))
    assert saved["config"]["grad_accum"] == 4 and saved["config"]["remat"] is True
