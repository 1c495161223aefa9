"""The cluster simulator (`peft-search simulate`): schedules worked out by hand on tiny jobs, planned by
the real planner on a tiny BERT, raced by the real procedure, with scores from a reference the test
writes. Trials are modelled (max_steps x a step time), so every figure below is exact."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import build
from drivers import cli, write_job
from peft_search.peft import profile_backbone
from peft_search.search.simulate import Cluster, TrialModel, simulate_search
from peft_search.search.spec import SearchSpec


@pytest.fixture(scope="module")
def profile():
    return profile_backbone(build("bert"))


@pytest.fixture
def reference(tmp_path):
    """A recorded stage in miniature: `strong` scores 0.8 and `weak` 0.5 in every one of 12 blocks."""
    rows = [{"trial_id": f"{choice}-{block}", "choice": choice, "block": block, "design_id": f"{choice}-{block}",
             "task": "sst2", "seed": 0, "status": "finished", "score": score}
            for choice, score in (("strong", 0.8), ("weak", 0.5)) for block in range(12)]
    path = tmp_path / "reference.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def tiny_spec(**changes) -> SearchSpec:
    base = {"backbone": "minilm", "tasks": ["sst2"], "budget_fraction": 0.02, "designs_per_choice": 4,
            "fidelity": {"max_steps": 10}, "stages": [{"component": "grouping", "candidates": ["uniform", "spindle"]}],
            "resources": {"cpus": 1, "gpus": 1}, "racing": None}
    return SearchSpec.from_dict({**base, **changes})


def test_every_row_at_once_fills_the_slots_wave_by_wave(profile, reference):
    """8 trials of 10 s on 3 GPUs, no start cost: waves at 0, 10 and 20 s; the last wave has 2 trials."""
    result = simulate_search(tiny_spec(), profile, 3, TrialModel(step_time_s=1.0, start_s=0.0), reference)
    stage = result.stages[0]
    assert (stage.trials, stage.wall_s, stage.busy_gpu_s, stage.wasted_gpu_s) == (8, 30.0, 80.0, 0.0)
    assert stage.gpu_use == pytest.approx(80 / 90)
    assert stage.work_bound_s == pytest.approx(80 / 3)
    assert stage.critical_path_s == 10.0
    assert stage.outcome == "undecided" and stage.kept == stage.best  # the best mean over every block


def test_the_driver_starts_trials_one_after_another(profile, reference):
    """With 1 s to start each trial, launches go out at 0, 1, 2 (runs end at 11, 12, 13), then at 11,
    12, 13 (ends 22, 23, 24), then at 22 and 23: the last run ends at 34 s."""
    result = simulate_search(tiny_spec(), profile, 3, TrialModel(step_time_s=1.0, start_s=1.0), reference)
    assert result.stages[0].wall_s == 34.0
    assert result.stages[0].busy_gpu_s == 80.0  # the start counts as idle


def test_a_stages_first_starts_each_start_a_new_actor(profile, reference):
    """The first 3 of 8 trials of 10 s on 3 GPUs start new actors, 2 s each: launches at 0, 2 and 4
    (ends 12, 14, 16); reused ones take 1 s: at 12, 14, 16 (ends 23, 25, 27), at 23 and 25: 36 s."""
    model = TrialModel(step_time_s=1.0, start_s=1.0, fresh_start_s=2.0)
    result = simulate_search(tiny_spec(), profile, 3, model, reference)
    assert result.stages[0].wall_s == 36.0 and result.fresh_start_s == 2.0


def test_a_fractional_gpu_packs_trials(profile, reference):
    spec = tiny_spec(resources={"cpus": 1, "gpus": 0.5})
    result = simulate_search(spec, profile, 2, TrialModel(step_time_s=1.0, start_s=0.0), reference)
    assert result.slots == 4
    assert result.stages[0].wall_s == 20.0  # 8 trials, 4 at a time
    assert result.stages[0].busy_gpu_s == 40.0  # each holds half a GPU


def test_packed_trials_spend_one_start_on_several_rows(profile, reference):
    """24 trials of 1 s on 8 GPUs, 1 s to start each: one after another the driver needs 24 s, and
    the last ends at 25 s. Four rows to a trial: 6 trials launched at 0 to 5 s, each training its
    rows back to back for 4 s after its start: the last ends at 10 s, the same 24 GPU-s trained.
    `auto` packs once a row's length is measured (the first ends at 2 s: the first two trials go out
    alone), each trial then sqrt(2 x work left x 1 s) long: 13 trials, 15 s; the same decision."""
    model = TrialModel(step_time_s=0.1, start_s=1.0)
    one = simulate_search(tiny_spec(designs_per_choice=12, rows_per_trial=1), profile, 8, model, reference).stages[0]
    four = simulate_search(tiny_spec(designs_per_choice=12, rows_per_trial=4), profile, 8, model, reference).stages[0]
    auto = simulate_search(tiny_spec(designs_per_choice=12), profile, 8, model, reference).stages[0]
    assert (one.tune_trials, one.trials, one.wall_s, one.busy_gpu_s) == (24, 24, 25.0, 24.0)
    assert (four.tune_trials, four.trials, four.wall_s, four.busy_gpu_s) == (6, 24, 10.0, 24.0)
    assert (auto.tune_trials, auto.trials, auto.wall_s, auto.busy_gpu_s) == (13, 24, 15.0, 24.0)
    assert one.kept == four.kept == auto.kept == one.best


def raced(lookahead: int) -> SearchSpec:
    return tiny_spec(designs_per_choice=12, racing={"min_blocks": 8, "lookahead": lookahead, "delta": 0.05})


def test_look_ahead_keeps_the_gpus_busy_and_stops_what_the_decision_makes_unnecessary(profile, reference):
    """2 choices x 12 blocks, KN selects `strong` once its 8-block first stage is in (the difference
    never varies). On 6 GPUs, one round at a time (lookahead 0): 16 trials in waves of 6, 6, 4,
    decided at 30 s, 2 GPUs idle in the last wave. With lookahead 2 the last wave also starts block 8;
    the decision at 30 s stops its two trials (20 GPU-s trained, wasted) and no GPU was idle."""
    model = TrialModel(step_time_s=1.0, start_s=0.0)
    one_round = simulate_search(raced(0), profile, 6, model, reference).stages[0]
    ahead = simulate_search(raced(2), profile, 6, model, reference).stages[0]
    for stage in (one_round, ahead):
        assert stage.outcome == "selected" and stage.kept == stage.best and stage.right is True
        assert stage.blocks == 8 and stage.wall_s == 30.0
    assert (one_round.trials, one_round.busy_gpu_s, one_round.wasted_gpu_s) == (16, 160.0, 0.0)
    assert one_round.gpu_use == pytest.approx(160 / 180)
    assert (ahead.trials, ahead.trials_wasted, ahead.busy_gpu_s, ahead.wasted_gpu_s) == (18, 2, 180.0, 20.0)
    assert ahead.gpu_use == 1.0


def test_decisions_follow_the_reference_whichever_choice_replays_its_best(profile, reference):
    """Each seed maps the reference's best onto a stage choice at random; the race keeps it every time."""
    bests = set()
    for seed in range(6):
        stage = simulate_search(raced(2), profile, 6, TrialModel(1.0, 0.0), reference, seed=seed).stages[0]
        assert stage.kept == stage.best
        bests.add(stage.best)
    assert bests == {"uniform", "spindle"}


def test_the_command_prints_a_table_or_json_and_refuses_bad_input(tmp_path):
    job = write_job(tmp_path, designs_per_choice=3, racing={"min_blocks": 2})
    done = cli("simulate", str(job), "--gpus", "4", "--step-time", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["slots"] == 2  # max_concurrent_trials: 2 caps the 4 slots
    assert [s["component"] for s in result["stages"]] == ["grouping", "strategy.G1"]
    assert result["total"]["trials"] == sum(s["trials"] for s in result["stages"]) > 0
    assert result["step_time_source"] == "given"
    table = cli("simulate", str(job), "--gpus", "4", "--step-time", "0.5")
    assert "GPU use" in table.stdout and "step time: given" in table.stdout
    bad = cli("simulate", str(job), "--gpus", "0")
    assert bad.returncode == 2 and "--gpus" in bad.stderr
    missing = cli("simulate", str(job), "--gpus", "4", "--scores", str(tmp_path / "none.parquet"))
    assert missing.returncode == 2 and "--scores" in missing.stderr


def test_the_start_cost_is_measured_on_a_run_where_the_driver_or_the_slots_set_the_pace(tmp_path):
    """`simulate --start-from RUN` (issue 38): the slot time that did not train, per trial, bounded by
    both regimes. Stage 0: 20 trials of 0.2 s on 16 slots in 9 s (the driver's pace: 0.45 s a start);
    stage 1: 20 trials of 10 s on 2 slots in 105 s (the slots' pace: 10 s idle over 20 trials, 0.5 s);
    stage 2 has too few trials to say anything. The median of 0.45 and 0.5."""
    from peft_search.errors import InputError
    from peft_search.search.simulate import measured_start_cost

    run = tmp_path / "run"
    stages = [(20, 0.2, 16, 9.0), (20, 10.0, 2, 105.0), (3, 1.0, 1, 60.0)]
    for index, (trials, seconds, _, _) in enumerate(stages):
        (run / "stages" / str(index) / "trials").mkdir(parents=True)
        for i in range(trials):
            record = {"trial_id": f"{index}-{i}", "stage": index, "choice": "a", "sample": i, "task": "sst2", "seed": 0,
                      "status": "finished", "wall_time_s": seconds}
            (run / "stages" / str(index) / "trials" / f"{index}-{i}.json").write_text(json.dumps(record))
    (run / "state.json").write_text(json.dumps({"stages": [{"stage": index, "status": "selected", "wall_time_s": wall, "slots": slots}
                                                            for index, (_, _, slots, wall) in enumerate(stages)]}))
    assert measured_start_cost(str(run)) == pytest.approx((0.45 + 0.5) / 2)

    job = write_job(tmp_path, designs_per_choice=3, racing={"min_blocks": 2})
    done = cli("simulate", str(job), "--gpus", "4", "--step-time", "0.5", "--start-from", str(run), "--json")
    assert done.returncode == 0, done.stderr
    assert "start cost 0.47 s per trial, measured on" in json.loads(done.stdout)["step_time_source"]
    with pytest.raises(InputError, match="--start-from"):
        measured_start_cost(str(tmp_path))  # not a run directory


def test_a_run_that_timed_new_and_reused_actors_apart_gives_the_simulator_both(tmp_path):
    """A stage records its starts on new actors and on reused ones (search/time_left.py, StartGaps):
    `simulate --start-from` charges a stage's first slots starts the one, the rest the other; a run
    from before keeps its one cost for both."""
    from peft_search.search.simulate import measured_trial_model

    run = tmp_path / "run"
    run.mkdir()
    stages = [{"stage": 0, "status": "selected", "start_cost_s": 0.8, "fresh_start_s": 1.4, "reused_start_s": 0.7},
              {"stage": 1, "status": "tie", "start_cost_s": 0.9, "fresh_start_s": 1.6, "reused_start_s": 0.9}]
    (run / "state.json").write_text(json.dumps({"stages": stages}))
    assert measured_trial_model(str(run), 0.5) == TrialModel(0.5, start_s=pytest.approx(0.8), fresh_start_s=pytest.approx(1.5))
    for stage in stages:
        del stage["fresh_start_s"], stage["reused_start_s"]
    (run / "state.json").write_text(json.dumps({"stages": stages}))
    assert measured_trial_model(str(run), 0.5) == TrialModel(0.5, start_s=pytest.approx(0.85), fresh_start_s=None)
