"""The cluster simulator held against Ray itself (issue 31): a real staged search on a local multi-node
Ray cluster whose nodes declare logical GPUs (`ray.cluster_utils.Cluster`: no physical GPU is needed
for Ray to schedule on them), with rehearsed trials (each sleeps its modelled length and reports the
score the simulator replays for its row), against `simulate_search` for the same job, cluster,
trial model and seed: the same decision, the wall-clock within 15% and the GPU use within 5 points.
The simulator's model includes Tune's cost of starting a trial (0.45 s on this head with reused
actors, fitted to this test's first runs), which at trials of 4 to 9 s is not negligible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_search.peft import load_backbone, profile_backbone
from peft_search.search.simulate import TrialModel, measured_trial_model, rehearse, simulate_search
from peft_search.search.spec import SearchSpec
from ray_clusters import local_ray_cluster
from tiny_search_run import needs_minilm_and_tweets

pytestmark = [needs_minilm_and_tweets, pytest.mark.distributed, pytest.mark.timeout(600)]

NODES, GPUS_PER_NODE = 2, 4
# RTE, MRPC and STS-B from the Hub, one epoch at batch 32: 78, 115 and 180 steps (their published
# train sizes); nothing is downloaded, since rehearsed trials never read data.
JOB = {
    "name": "rehearsal",
    "backbone": "minilm",
    "tasks": ["rte", "mrpc", "stsb"],
    "budget_fraction": 0.005,
    "stages": [{"component": "grouping", "candidates": ["uniform", "spindle", "bottleneck"]}],
    "designs_per_choice": 12,
    "racing": {"min_blocks": 8, "delta": 0.05, "confidence": 0.95},
    "fidelity": {"epochs": 1},
    "hyperparameters": {"batch_size": 32},
    "resources": {"cpus": 1, "gpus": 1},
    "retries": 0,
}
MODEL = TrialModel(step_time_s=0.05)  # trials of 3.9, 5.75 and 9 s; the default start cost (0.45 s)


@pytest.fixture(scope="module")
def gpu_cluster():
    with local_ray_cluster("rg-", include_dashboard=False) as (cluster, _):
        for _ in range(NODES):
            cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
        cluster.wait_for_nodes()
        yield cluster


def test_a_rehearsed_search_on_ray_runs_as_the_simulator_predicts(gpu_cluster, tmp_path):
    spec = SearchSpec.from_dict({**JOB, "storage": str(tmp_path / "runs")})
    gpus = NODES * GPUS_PER_NODE
    predicted = simulate_search(spec, profile_backbone(load_backbone("minilm", meta=True)), gpus, MODEL)
    measured = rehearse(spec, gpus, MODEL, address=gpu_cluster.address)
    stage = predicted.stages[0]
    print(f"simulated: {stage.wall_s:.1f} s, GPU use {stage.gpu_use:.1%} (recorded trials "
          f"{(stage.busy_gpu_s - stage.stopped_gpu_s) / stage.gpu_s:.1%}), {stage.trials} trials, {stage.outcome}; "
          f"on Ray: {measured.wall_s:.1f} s, GPU use {measured.gpu_use:.1%}, {measured.trials} trials recorded")
    assert measured.kept == (stage.kept,)  # the same scores, the same decision
    assert measured.wall_s == pytest.approx(stage.wall_s, rel=0.15)
    recorded_use = (stage.busy_gpu_s - stage.stopped_gpu_s) / stage.gpu_s  # a stopped trial leaves no record on Ray
    assert abs(measured.gpu_use - recorded_use) <= 0.05
    # The stage timed its starts, on new actors (its first wave) and on reused ones apart: what
    # `simulate --start-from` reads back (search/time_left.py, StartGaps).
    (timed,) = json.loads((Path(measured.run_dir) / "state.json").read_text())["stages"]
    assert timed["fresh_start_s"] > 0 and timed["reused_start_s"] > 0 and timed["start_cost_s"] > 0
    model = measured_trial_model(measured.run_dir, MODEL.step_time_s)
    assert (model.fresh_start_s, model.start_s) == (timed["fresh_start_s"], timed["reused_start_s"])
