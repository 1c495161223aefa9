"""The selection procedure (search/stage/selection.py: KN or KN++ with a tie stop) on synthetic paired
block scores with a known truth: its guarantee, heavy tails, a collapsing choice, ties, and what a
first stage too small for KN may and may not do."""

from __future__ import annotations

import numpy as np
import pytest

from peft_search.search.stage.selection import KN_MIN_FIRST_STAGE, kn_h2, select

CHOICES = ("a", "b", "c")


def scores_from(matrix: np.ndarray, choices=CHOICES) -> dict[str, dict[int, float]]:
    return {c: {b: float(matrix[i, b]) for b in range(matrix.shape[1])} for i, c in enumerate(choices)}


def run_sequentially(scores, planned: int, first_stage: int, delta: float = 0.05, confidence: float = 0.9,
                     procedure: str = "kn", choices=CHOICES):
    """Blocks arrive one at a time, as a race's rounds bring them; the procedure's verdict at the end."""
    for r in range(2, planned + 1):
        verdict = select(scores, choices, list(range(r)), delta=delta, confidence=confidence, first_stage=first_stage,
                         planned_blocks=planned, procedure=procedure)
        if verdict.done:
            return verdict
    return verdict


def synthetic(rng, means, noise, blocks, tails=None, collapse=None):
    """Scores = mean + a block effect shared by the block's choices + noise (normal, or Student t
    with `tails` degrees of freedom); `collapse` = (choice index, probability, score) plants trials
    that collapse to a fixed score."""
    shared = rng.normal(0, 0.05, blocks)
    noise = rng.standard_t(tails, (len(means), blocks)) * noise if tails else rng.normal(0, noise, (len(means), blocks))
    matrix = np.asarray(means)[:, None] + shared[None] + noise
    if collapse is not None:
        index, probability, score = collapse
        matrix[index, rng.random(blocks) < probability] = score
    return scores_from(matrix)


def test_h2_is_kns_constant():
    # eta = ((2 alpha / (k - 1)) ** (-2 / (n0 - 1)) - 1) / 2 and h2 = 2 eta (n0 - 1); k = 2, alpha = 0.05, n0 = 10
    assert kn_h2(2, 0.05, 10) == pytest.approx((0.1 ** (-2 / 9) - 1) * 9)
    assert kn_h2(3, 0.1, 8) > kn_h2(3, 0.1, 20)  # a smaller first stage pays with a wider region


def test_kn_plus_plus_h2_narrows_towards_its_limit_as_blocks_accrue():
    # KN++ takes h2 on the degrees of freedom of the variance it uses: KN's value at n0, then down
    # towards -2 ln(2 alpha / (k - 1)) (9.9 for 15 choices at alpha 0.05)
    values = [kn_h2(15, 0.05, r) for r in (8, 16, 32, 10_000)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(-2 * np.log(2 * 0.05 / 14), rel=1e-3)


@pytest.mark.parametrize("procedure", ["kn", "kn++"])
@pytest.mark.parametrize("tails", [None, 3], ids=["normal", "student-t-3"])
def test_the_best_by_delta_is_selected_at_least_as_often_as_promised(tails, procedure):
    rng = np.random.default_rng(0)
    runs, confidence = 150, 0.9
    verdicts = [run_sequentially(synthetic(rng, [0.75, 0.70, 0.69], 0.02, 60, tails=tails), 60, KN_MIN_FIRST_STAGE,
                                 confidence=confidence, procedure=procedure) for _ in range(runs)]
    right = sum(v.outcome == "selected" and v.survivors == ("a",) for v in verdicts)
    assert right / runs >= confidence
    assert np.mean([v.blocks for v in verdicts]) < 30  # and it stops early


def test_with_fifteen_choices_kn_plus_plus_selects_the_best_after_far_fewer_blocks():
    """Issue 38: a 15-choice stage (tunable groups, a group's strategies) is where KN spends most of a
    search's blocks; KN++'s updated variances close the regions after about half of them, and the
    best by delta is still selected as often as promised."""
    choices = tuple(f"c{i}" for i in range(15))
    rng = np.random.default_rng(7)
    means = [0.75] + [0.70 - 0.002 * i for i in range(14)]
    stages = []
    for _ in range(20):
        shared = rng.normal(0, 0.05, 80)
        stages.append(scores_from(np.asarray(means)[:, None] + shared[None] + rng.normal(0, 0.06, (15, 80)), choices))
    verdicts = {procedure: [run_sequentially(scores, 80, KN_MIN_FIRST_STAGE, confidence=0.95, procedure=procedure,
                                             choices=choices) for scores in stages] for procedure in ("kn", "kn++")}
    for procedure, runs in verdicts.items():
        assert sum(v.outcome == "selected" and v.survivors == ("c0",) for v in runs) / len(runs) >= 0.95, procedure
    blocks = {procedure: np.mean([v.blocks for v in runs]) for procedure, runs in verdicts.items()}
    assert blocks["kn++"] < 0.7 * blocks["kn"]  # 18 blocks against 32 on these scores


@pytest.mark.parametrize("procedure", ["kn", "kn++"])
def test_a_choice_that_collapses_often_is_dropped_and_never_selected(procedure):
    rng = np.random.default_rng(1)
    verdicts = [run_sequentially(synthetic(rng, [0.74, 0.78, 0.70], 0.015, 40, collapse=(1, 0.4, 0.51)), 40,
                                 KN_MIN_FIRST_STAGE, procedure=procedure) for _ in range(100)]
    # b scores best when it learns and collapses 40% of the time: its mean (0.67) is the worst.
    assert sum(v.survivors == ("b",) for v in verdicts) <= 10
    assert sum(v.outcome == "selected" and v.survivors == ("a",) for v in verdicts) >= 85


def test_choices_within_delta_are_a_tie_long_before_the_planned_blocks():
    rng = np.random.default_rng(2)
    verdicts = [run_sequentially(synthetic(rng, [0.700, 0.702, 0.701], 0.01, 16), 16, 3) for _ in range(100)]
    ties = [v for v in verdicts if v.outcome == "tie"]
    assert len(ties) >= 80 and all(set(v.tied) == set(CHOICES) for v in ties)
    assert np.mean([v.blocks for v in ties]) <= 6


def test_a_difference_of_delta_is_rarely_called_a_tie():
    rng = np.random.default_rng(3)
    verdicts = [run_sequentially(synthetic(rng, [0.75, 0.70, 0.70], 0.02, 16), 16, 3) for _ in range(100)]
    assert sum(v.outcome == "tie" and "a" in v.tied for v in verdicts) <= 10


def test_below_kns_first_stage_nothing_is_dropped_and_an_unsettled_stage_ends_undecided():
    scores = scores_from(np.array([[0.80, 0.81, 0.79, 0.80], [0.50, 0.52, 0.49, 0.51], [0.70, 0.60, 0.75, 0.62]]))
    verdict = run_sequentially(scores, 4, 3)
    assert not verdict.dropped and verdict.outcome == "undecided" and verdict.leader == "a"
    assert set(verdict.survivors) == set(CHOICES)


def test_failed_designs_leave_their_blocks_out_of_the_pairs_they_belong_to():
    matrix = np.array([[0.8] * 10, [0.5] * 10, [0.6] * 10]) + np.linspace(0, 0.01, 10)
    scores = scores_from(matrix)
    scores["b"][3] = None
    verdict = run_sequentially(scores, 10, KN_MIN_FIRST_STAGE)
    assert verdict.outcome == "selected" and verdict.survivors == ("a",) and set(verdict.dropped) == {"b", "c"}


def test_a_six_block_stage_stops_for_a_tie_as_early_as_under_the_old_first_stage_of_3():
    """Issue 38: under the default first stage of 8, a stage planning 6 blocks looked only after its
    last block. It now looks after 3 blocks too (selection.early_look): on the same scores it calls
    the tie at the same block as the old default (min_blocks 3) did, and a difference of delta is
    still rarely called a tie there."""
    rng = np.random.default_rng(5)
    stages = [synthetic(rng, [0.700, 0.701, 0.700], 0.002, 6) for _ in range(50)]
    default = [run_sequentially(scores, 6, min(KN_MIN_FIRST_STAGE, 6), confidence=0.95) for scores in stages]
    old = [run_sequentially(scores, 6, 3, confidence=0.95) for scores in stages]
    assert all(v.outcome == "tie" for v in default) and all(v.blocks == 3 for v in default)
    assert [v.blocks for v in default] == [v.blocks for v in old]
    apart = [run_sequentially(synthetic(rng, [0.75, 0.70, 0.70], 0.02, 6), 6, min(KN_MIN_FIRST_STAGE, 6), confidence=0.95)
             for _ in range(100)]
    assert sum(v.outcome == "tie" and "a" in v.tied for v in apart) <= 5
