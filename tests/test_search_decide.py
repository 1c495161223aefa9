"""Decision statistics against constructed examples with known answers."""

import json
import math
import random
import statistics
from dataclasses import replace

import pytest

from peft_search.search.stage.decide import (
    Decision,
    TrialScore,
    decide,
    decide_stage,
    decide_trials,
    design_scores,
    summarize_choice,
)


def normal_scores(mean: float, sd: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(n)]


def test_far_separated_choices_are_decided_with_near_certainty():
    decision = decide(
        "grouping",
        {"uniform": normal_scores(0.60, 0.02, 30, 1), "spindle": normal_scores(0.80, 0.02, 30, 2), "bottleneck": normal_scores(0.40, 0.02, 30, 3)},
    )
    assert decision.winner == "spindle" and decision.runner_up == "uniform"
    assert decision.win_probability > 0.999


def test_identical_distributions_give_a_coin_flip():
    scores = normal_scores(0.7, 0.05, 40, 4)
    decision = decide("allocation", {"uniform": scores, "increasing": list(scores)})
    assert 0.4 < decision.win_probability < 0.6
    # Equal means: the tie goes to the choice listed first.
    assert decision.winner == "uniform"


def test_close_choices_are_uncertain():
    decision = decide("allocation", {"a": normal_scores(0.70, 0.05, 20, 5), "b": normal_scores(0.71, 0.05, 20, 6)})
    assert 0.5 < decision.win_probability < 0.99


def test_interval_contains_the_true_mean_with_the_expected_width():
    true_mean, sd, n = 0.75, 0.04, 200
    stats = summarize_choice("spindle", normal_scores(true_mean, sd, n, 7))
    assert stats.ci_low < true_mean < stats.ci_high
    # A 95% interval of a mean is about 2 x 1.96 standard errors wide.
    expected_width = 2 * 1.96 * statistics.stdev(stats.edf_scores) / math.sqrt(n)
    assert stats.ci_high - stats.ci_low == pytest.approx(expected_width, rel=0.15)
    assert stats.ci_low < stats.mean < stats.ci_high


def test_coverage_of_the_interval_over_many_samples():
    true_mean = 0.5
    intervals = [summarize_choice("x", normal_scores(true_mean, 0.1, 30, 100 + i)) for i in range(60)]
    covered = sum(s.ci_low < true_mean < s.ci_high for s in intervals)
    assert covered >= 52  # about 95% of 60


def test_edf_mean_and_median_of_a_small_example():
    stats = summarize_choice("G1+G2", [0.3, 0.1, None, 0.2, float("nan")])
    assert stats.edf_scores == (0.1, 0.2, 0.3)
    assert stats.edf_fractions == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert stats.mean == pytest.approx(0.2) and stats.median == pytest.approx(0.2)
    assert (stats.n_finished, stats.n_failed) == (3, 2)
    # Student-t with 2 degrees of freedom: 0.2 +- 4.303 x 0.1 / sqrt(3), wider than the data.
    assert stats.ci_low == pytest.approx(0.2 - 4.303 * 0.1 / 3**0.5, abs=1e-3)
    assert stats.ci_high == pytest.approx(0.2 + 4.303 * 0.1 / 3**0.5, abs=1e-3)


def test_a_choice_with_only_failed_designs_cannot_win():
    decision = decide("strategy.G1", {"adapter": [None, None, float("nan")], "lora": [0.5, 0.52]})
    assert decision.winner == "lora" and decision.runner_up is None
    assert decision.win_probability == 1.0  # the only choice that can win
    failed = decision.stats("adapter")
    assert (failed.n_finished, failed.n_failed, failed.mean, failed.ci_low) == (0, 3, None, None)
    nothing = decide("strategy.G1", {"adapter": [None], "lora": []})
    assert nothing.winner is None and nothing.runner_up is None


def test_design_scores_average_tasks_and_exclude_failed_trials():
    trials = [
        # design d1: sst2 over two seeds (0.8, 0.9) -> 0.85, mrpc one seed failed, one 0.65 -> 0.75
        TrialScore("spindle", "d1", "sst2", 0, 0.8),
        TrialScore("spindle", "d1", "sst2", 1, 0.9),
        TrialScore("spindle", "d1", "mrpc", 0, None),
        TrialScore("spindle", "d1", "mrpc", 1, 0.65),
        # design d2: mrpc failed on every seed -> no score
        TrialScore("spindle", "d2", "sst2", 0, 0.9),
        TrialScore("spindle", "d2", "mrpc", 0, float("nan")),
    ]
    scores = {d.design_id: d for d in design_scores(trials, ["sst2", "mrpc"])}
    assert scores["d1"].score == pytest.approx((0.85 + 0.65) / 2)
    assert (scores["d1"].trials, scores["d1"].failed_trials) == (4, 1)
    assert scores["d2"].score is None and scores["d2"].failed_trials == 1


def test_decide_trials_end_to_end():
    trials = []
    for choice, level in (("uniform", 0.6), ("spindle", 0.8), ("bottleneck", 0.7)):
        for d, noise in enumerate((-0.01, 0.0, 0.01)):
            for task, offset in (("sst2", 0.05), ("cola", -0.05)):
                trials.append(TrialScore(choice, f"{choice}-{d}", task, 0, level + offset + noise))
    trials.append(TrialScore("bottleneck", "bottleneck-3", "sst2", 0, None))  # one design fails
    trials.append(TrialScore("bottleneck", "bottleneck-3", "cola", 0, 0.99))
    decision = decide_trials("grouping", ["uniform", "spindle", "bottleneck", "increasing"], trials, ["sst2", "cola"], seed=11)
    assert decision.winner == "spindle" and decision.runner_up == "bottleneck"
    assert decision.stats("spindle").mean == pytest.approx(0.8)
    bottleneck = decision.stats("bottleneck")
    assert (bottleneck.n_finished, bottleneck.n_failed, bottleneck.n_failed_trials) == (3, 1, 1)
    assert decision.stats("increasing").n_finished == 0  # planned nothing, still reported
    assert [c.choice for c in decision.choices] == ["uniform", "spindle", "bottleneck", "increasing"]
    with pytest.raises(ValueError, match="not in this stage"):
        decide_trials("grouping", ["uniform"], trials, ["sst2", "cola"])


def test_decisions_are_deterministic_and_serialise():
    scores = {"a": normal_scores(0.7, 0.05, 25, 8), "b": normal_scores(0.72, 0.05, 25, 9), "c": [None]}
    first, again = decide("allocation", scores, seed=5), decide("allocation", scores, seed=5)
    assert first == again
    assert decide("allocation", scores, seed=6).win_probability != first.win_probability  # Monte Carlo seed
    restored = Decision.from_dict(json.loads(json.dumps(first.to_dict())))
    assert restored == first


def test_two_designs_per_choice_never_claim_certainty():
    # The quickstart's old "probability 1.00" from 2 designs per choice: far apart, but two values.
    decision = decide("grouping", {"uniform": [0.60, 0.62], "spindle": [0.50, 0.55]})
    assert decision.winner == "uniform"
    assert 0.5 < decision.win_probability < 0.99
    assert decide("grouping", {"uniform": [0.60], "spindle": [0.50]}).win_probability is None  # one each: no noise estimate


def paired_trials(levels: dict[str, float], block_effects: list[float], noise: float = 0.003) -> list[TrialScore]:
    rng = random.Random(0)
    return [
        TrialScore(choice, f"{choice}-{k}", "sst2", 0, level + effect + rng.gauss(0, noise), block=k)
        for k, effect in enumerate(block_effects)
        for choice, level in levels.items()
    ]


def test_paired_blocks_remove_the_shared_noise():
    # Block effects (+-0.1) dwarf the 0.02 gap; pairing sees through them, independent designs cannot.
    effects = [0.1, -0.1, 0.05, -0.05]
    trials = paired_trials({"uniform": 0.70, "spindle": 0.72}, effects)
    paired = decide_stage("grouping", ["uniform", "spindle"], trials, ["sst2"], seed=1)
    assert paired.method == "blocked" and paired.blocks == 4 and paired.winner == "spindle"
    assert paired.win_probability > 0.95
    spindle = paired.stats("spindle")
    assert spindle.blocks == 4 and spindle.diff_mean == 0.0
    uniform = paired.stats("uniform")
    assert uniform.diff_mean < uniform.diff_high < 0  # the interval of the gap excludes 0
    unpaired = decide_stage("grouping", ["uniform", "spindle"], [replace(t, block=None) for t in trials], ["sst2"], seed=1)
    assert unpaired.method == "independent" and unpaired.win_probability < 0.75


def test_a_race_limits_the_winner_to_its_survivors():
    from peft_search.search.stage.racing import Elimination, RaceState

    trials = paired_trials({"uniform": 0.70, "spindle": 0.72, "bottleneck": 0.60}, [0.0, 0.01, -0.01])
    race = RaceState(round=1, blocks=3, survivors=("uniform", "spindle"), eliminated={"bottleneck": Elimination(0, 2, 0.001)},
                     done=True, reason="every planned block ran (3)")
    decision = decide_stage("grouping", ["uniform", "spindle", "bottleneck"], trials, ["sst2"], seed=2, race=race,
                            trials_planned=30)
    assert decision.winner == "spindle" and decision.rounds == 2 and decision.race_reason.startswith("every")
    assert decision.stats("bottleneck").eliminated_round == 0 and decision.stats("bottleneck").p_best is None
    assert decision.stats("bottleneck").diff_mean < 0  # still compared to the best, over its blocks
    assert (decision.trials_run, decision.trials_planned) == (9, 30)
    assert Decision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision


def test_a_sole_survivor_is_as_sure_as_the_round_that_left_it_alone():
    """A race that drops the last other choice in its final round: the winner's P(best) is the one
    that round computed (among both), never 1 because it is alone afterwards."""
    from peft_search.search.stage.racing import Elimination, RaceState

    trials = paired_trials({"uniform": 0.70, "spindle": 0.72}, [0.0, 0.03, -0.02])  # close, noisy
    both = decide_stage("grouping", ["uniform", "spindle"], trials, ["sst2"], seed=3)
    race = RaceState(round=1, blocks=3, survivors=("spindle",),
                     eliminated={"uniform": Elimination(1, 3, both.stats("uniform").p_best)}, done=True,
                     reason="one choice left")
    raced = decide_stage("grouping", ["uniform", "spindle"], trials, ["sst2"], seed=3, race=race)
    assert raced.winner == "spindle"
    assert raced.win_probability == both.win_probability < 0.999
    assert raced.stats("uniform").p_best == both.stats("uniform").p_best  # dropped in that round: still compared
    # A choice dropped in an earlier round is no longer compared for P(best).
    earlier = replace(race, eliminated={"uniform": Elimination(0, 2, 0.01)})
    assert decide_stage("grouping", ["uniform", "spindle"], trials, ["sst2"], seed=3, race=earlier).win_probability == 1.0


def test_a_design_repeated_in_every_block_is_scored_per_block():
    # A last stage: nothing but the studied component is free, so each choice has one design, and
    # blocks 0..2 train it with seeds of their own. Each block is one paired replicate of seed noise.
    trials = []
    for block, (lora, mix) in enumerate([(0.70, 0.74), (0.66, 0.71), (0.72, 0.75)]):
        trials += [TrialScore("lora", "d-lora", "sst2", 100 + block, lora, block=block),
                   TrialScore("mix", "d-mix", "sst2", 100 + block, mix, block=block)]
    designs = design_scores(trials, ["sst2"])
    assert [(d.choice, d.block, d.score) for d in designs if d.choice == "mix"] == [("mix", 0, 0.74), ("mix", 1, 0.71), ("mix", 2, 0.75)]
    decision = decide_stage("strategy.G4", ["lora", "mix"], trials, ["sst2"])
    assert decision.winner == "mix" and decision.blocks == 3
    stats = {s.choice: s for s in decision.choices}
    assert stats["mix"].blocks == 3 and stats["mix"].mean == pytest.approx(0.7333333)
    assert stats["lora"].diff_mean == pytest.approx(-0.04)  # paired: the mean of -0.04, -0.05, -0.03


@pytest.mark.parametrize("outcome, kept, words", [
    ("tie", "uniform", ("tie: uniform: mean ", "within 0.05 of uniform, spindle over 3 blocks")),
    ("selected", "spindle", ("selected: spindle: mean ", "by KN over 3 blocks (confidence 0.9 if at least 0.05 better")),
    ("undecided", None, ("undecided: spindle: mean ", "the best mean after 3 blocks (no guarantee at delta 0.05)")),
])
def test_a_finished_race_decides_as_its_selection_procedure_says_and_claims_no_p_best(outcome, kept, words):
    from peft_search.search.spec import Racing
    from peft_search.search.stage.racing import RaceState
    from peft_search.search.controller import describe_decision

    trials = paired_trials({"uniform": 0.70, "spindle": 0.72}, [0.0, 0.01, -0.01])
    race = RaceState(round=1, blocks=3, survivors=("uniform", "spindle") if outcome != "selected" else ("spindle",),
                     done=True, reason="why", outcome=outcome, tied=("uniform", "spindle") if outcome == "tie" else (),
                     kept=kept)
    decision = decide_stage("grouping", ["uniform", "spindle"], trials, ["sst2"], seed=2, race=race,
                            racing=Racing(confidence=0.9, delta=0.05, on_tie="first"))
    assert decision.winner == (kept or "spindle")  # undecided: the best mean
    assert decision.outcome == outcome and decision.win_probability is None
    assert all(stats.p_best is None for stats in decision.choices)
    assert decision.stats("uniform").diff_high is not None  # the paired interval to the best stays
    line = describe_decision(0, 1, decision)  # the run's line: the outcome, once
    assert line.startswith("stage 1/1 (grouping) " + words[0]) and words[1] in line and line.count(outcome) == 1
    assert Decision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision
