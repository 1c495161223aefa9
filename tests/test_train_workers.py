"""A multi-worker trial: 2 Ray Train workers on CPU (DDP through Accelerate, gloo), for real.

Starts a local Ray when none is running and shuts it down afterwards; the timeout guards against
a leaked placement group holding the CPUs (FACTS.md; `ray stop` clears one).
"""

from pathlib import Path

import pytest
from conftest import needs_minilm

from peft_search.train import TrialConfig, run_trial

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@needs_minilm
@pytest.mark.skipif(not GLUE.is_dir(), reason=f"GLUE copies not found at {GLUE}")
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_cpu_workers_train_and_report_the_same_fields(tmp_path):
    import ray

    started_here = not ray.is_initialized()
    common = dict(model="minilm", task="sst2", data_dir=str(GLUE), preset="lora", epochs=3, max_train_examples=192,
                  max_eval_examples=64, cache_dir=str(tmp_path))
    try:
        seen, lines = [], []
        result = run_trial(TrialConfig(**common, workers=2), on_epoch=seen.append, log=lines.append)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()
    assert result.status == "finished", result.error
    # on_epoch was called once per epoch, in order, with what the result records
    assert [e["epoch"] for e in seen] == [1.0, 2.0, 3.0]
    assert [{k: v for k, v in e.items()} for e in seen] == result.epochs
    # batches are split over the workers: 192 examples / global batch 32 = 6 steps per epoch
    assert [e["step"] for e in seen] == [6, 12, 18]
    assert any("2 worker(s)" in line for line in lines)
    losses = [e["train_loss"] for e in result.epochs]
    assert losses[2] < losses[0], losses
    assert result.realised_params == 113_664 and result.head_params == 770
    # the same metric fields as a one-worker trial
    single = run_trial(TrialConfig(**{**common, "epochs": 1, "max_steps": 1}))
    assert single.status == "finished"
    assert set(result.metrics) == set(single.metrics)
    assert set(result.epochs[0]) == set(single.epochs[0])
    assert set(result.to_dict()) == set(single.to_dict())
    assert result.train_samples_per_s > 0 and result.peak_memory_mb > 0
