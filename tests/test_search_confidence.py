"""Decision confidence against known answers: t quantiles, the paired-t posterior, block effects,
calibration on simulated stages."""

import math

import numpy as np
import pytest

from peft_search.search.stage.confidence import (
    betainc,
    compare_blocks,
    compare_independent,
    race_step,
    t_cdf,
    t_quantile,
)


def blocked(rows: dict[str, list]) -> dict[str, dict[int, float | None]]:
    return {choice: dict(enumerate(values)) for choice, values in rows.items()}


def mc_tolerance(p: float, draws: int) -> float:
    return 4 * math.sqrt(p * (1 - p) / draws)


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042), (10**7, 1.960)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)


@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 7, 30])
def test_t_cdf_inverts_the_quantile(df):
    for p in (0.001, 0.05, 0.3, 0.5, 0.9, 0.995):
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_cdf_known_closed_forms():
    assert t_cdf(5.0, 1) == pytest.approx(0.5 + math.atan(5.0) / math.pi, abs=1e-12)  # Cauchy
    assert t_cdf(2.0, 2) == pytest.approx(0.5 + 2.0 / (2 * math.sqrt(2 + 4)), abs=1e-12)
    assert betainc(3.0, 1.0, 0.4) == pytest.approx(0.4**3, abs=1e-14)
    assert betainc(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-14)


def test_two_blocks_give_the_paired_t_posterior_and_not_certainty():
    # Differences 0.02 and 0.03 in two blocks: P = T_1(mean / (sd / sqrt(2))) = T_1(5) ~ 0.937.
    scores = blocked({"good": [0.72, 0.53], "bad": [0.70, 0.50]})
    result = compare_blocks(scores, seed=3)
    d = np.array([0.02, 0.03])
    expected = t_cdf(d.mean() / (d.std(ddof=1) / math.sqrt(2)), 1)
    assert result.blocks == 2 and result.df == 1 and result.best == "good"
    assert result.p_best["good"] == pytest.approx(expected, abs=mc_tolerance(expected, result.draws))
    assert result.p_best["good"] < 0.97
    assert result.p_best["good"] + result.p_best["bad"] == pytest.approx(1.0)


def test_three_blocks_match_the_paired_t_posterior():
    scores = blocked({"a": [0.61, 0.70, 0.55], "b": [0.60, 0.66, 0.56]})
    d = np.array([0.01, 0.04, -0.01])
    expected = t_cdf(d.mean() / (d.std(ddof=1) / math.sqrt(3)), 2)
    result = compare_blocks(scores, seed=11)
    assert result.p_best["a"] == pytest.approx(expected, abs=mc_tolerance(expected, result.draws))


def test_identical_differences_in_two_blocks_stay_below_certainty():
    # Residuals are exactly zero: the floored sd keeps the Cauchy tails of df = 1.
    result = compare_blocks(blocked({"a": [0.80, 0.60], "b": [0.78, 0.58]}), seed=0)
    assert 0.9 < result.p_best["a"] < 1.0
    low, high = result.diff_to_best["b"].low, result.diff_to_best["b"].high
    assert low < -0.02 < high < 0.0


def test_one_block_says_nothing():
    result = compare_blocks(blocked({"a": [0.9], "b": [0.1], "c": [0.5]}), seed=0)
    assert result.blocks == 1 and result.df == 0
    assert result.p_best == {"a": None, "b": None, "c": None}
    assert result.diff_to_best["b"].mean == pytest.approx(-0.8) and result.diff_to_best["b"].low is None
    assert race_step(result, 0.95) == (set(), None)


def test_equal_choices_are_equally_likely_best():
    rows = {c: [0.7, 0.5, 0.6] for c in ("a", "b", "c", "d")}
    result = compare_blocks(blocked(rows), seed=5)
    for p in result.p_best.values():
        assert p == pytest.approx(0.25, abs=mc_tolerance(0.25, result.draws))
    assert race_step(result, 0.9) == (set(), None)


def test_block_effects_cost_no_confidence_but_unpaired_analysis_pays_for_them():
    diffs = [0.02, 0.03, 0.025]
    flat = blocked({"a": [0.60 + d for d in diffs], "b": [0.60] * 3})
    easy_and_hard = [0.30, -0.35, 0.20]  # the same for both choices
    shifted = blocked({"a": [0.60 + d + e for d, e in zip(diffs, easy_and_hard)], "b": [0.60 + e for e in easy_and_hard]})
    p_flat = compare_blocks(flat, seed=1).p_best["a"]
    p_shifted = compare_blocks(shifted, seed=1).p_best["a"]
    assert p_shifted == pytest.approx(p_flat, abs=1e-3) and p_shifted > 0.95
    unpaired = compare_independent({c: list(v.values()) for c, v in shifted.items()}, seed=1)
    assert unpaired.p_best["a"] < 0.7


def test_failed_design_drops_its_block():
    scores = blocked({"a": [0.70, 0.60, 0.75, 0.65], "b": [0.68, None, 0.74, 0.62], "c": [0.66, 0.59, float("nan"), 0.60]})
    result = compare_blocks(scores, seed=9)
    without = compare_blocks(blocked({"a": [0.70, 0.65], "b": [0.68, 0.62], "c": [0.66, 0.60]}), seed=9)
    assert result.blocks == 2 and result.df == 2
    assert result.p_best == without.p_best
    assert result.means["a"] == pytest.approx(0.675)
    # Pairwise intervals use every block shared with the best, not only the complete ones.
    assert result.diff_to_best["b"].n == 3 and result.diff_to_best["c"].n == 3


def test_a_choice_that_always_fails_blocks_every_claim_unless_left_out():
    scores = blocked({"a": [0.70, 0.60, 0.75], "b": [0.60, 0.50, 0.65], "broken": [None, None, None]})
    assert set(compare_blocks(scores, seed=0).p_best.values()) == {None}
    result = compare_blocks(scores, seed=0, contenders=["a", "b"])
    assert result.p_best["a"] > 0.99 and result.p_best["broken"] is None
    alone = compare_blocks(scores, seed=0, contenders=["b"])
    assert alone.p_best["b"] == 1.0 and race_step(alone, 0.95) == (set(), "b")


def test_paired_interval_is_the_student_t_interval():
    result = compare_blocks(blocked({"a": [0.70, 0.60, 0.75], "b": [0.66, 0.59, 0.70]}), seed=0)
    d = np.array([-0.04, -0.01, -0.05])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    diff = result.diff_to_best["b"]
    assert (diff.mean, diff.low, diff.high, diff.n) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half, 3), abs=1e-6)
    assert result.diff_to_best["a"] == (0.0, 0.0, 0.0, 3)


def test_dropped_choice_keeps_its_interval_while_survivors_race_on():
    # "c" was dropped after two rounds; the race continues among a and b over all four blocks.
    scores = blocked({"a": [0.70, 0.60, 0.75, 0.65], "b": [0.69, 0.58, 0.74, 0.63], "c": [0.50, 0.41]})
    result = compare_blocks(scores, seed=2, contenders=["a", "b"])
    assert result.blocks == 4 and result.contenders == ("a", "b") and result.p_best["c"] is None
    assert result.diff_to_best["c"].n == 2 and result.diff_to_best["c"].high < 0
    with pytest.raises(ValueError, match="contenders \\['z'\\]"):
        compare_blocks(scores, seed=2, contenders=["a", "z"])


def test_race_step_drops_the_unlikely_and_crowns_the_sure():
    scores = blocked({"good": [0.80, 0.70, 0.75], "mid": [0.72, 0.60, 0.70], "bad": [0.50, 0.40, 0.45]})
    result = compare_blocks(scores, seed=4)
    eliminated, winner = race_step(result, 0.9)
    assert "bad" in eliminated and "good" not in eliminated
    assert winner == "good" and result.p_best["good"] >= 0.9
    assert race_step(result, 0.99999)[1] is None
    with pytest.raises(ValueError, match="between 0.5 and 1"):
        race_step(result, 0.4)


def test_same_seed_same_answer():
    scores = blocked({"a": [0.61, 0.70, 0.55], "b": [0.60, 0.66, 0.56], "c": [0.58, 0.69, 0.57]})
    assert compare_blocks(scores, seed=7) == compare_blocks(scores, seed=7)
    assert compare_blocks(scores, seed=7).p_best != compare_blocks(scores, seed=8).p_best
    lists = {c: list(v.values()) for c, v in scores.items()}
    assert compare_independent(lists, seed=7) == compare_independent(lists, seed=7)


def test_independent_needs_two_scores_per_choice_and_gives_welch_intervals():
    assert compare_independent({"a": [0.7, 0.8], "b": [0.6, None]}, seed=0).p_best == {"a": None, "b": None}
    result = compare_independent({"a": [0.70, 0.74, 0.72], "b": [0.60, 0.70]}, seed=0)
    va, vb = np.var([0.70, 0.74, 0.72], ddof=1) / 3, np.var([0.60, 0.70], ddof=1) / 2
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 1)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    diff = result.diff_to_best["b"]
    assert (diff.low, diff.high) == pytest.approx((-0.07 - half, -0.07 + half), abs=1e-9)
    assert 0.5 < result.p_best["a"] < 0.95


def test_bad_seed_is_rejected_with_its_range():
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2\\*\\*32\\)"):
        compare_blocks(blocked({"a": [0.1, 0.2], "b": [0.2, 0.3]}), seed=-1)


def test_confident_claims_are_mostly_right_on_simulated_stages():
    # 400 stages: 3 choices, 3 blocks, large block effects, noise sd 0.02, the first choice better by
    # one noise sd. Among stages claiming P(best) >= 0.9, the claimed winner must be the true best.
    rng = np.random.RandomState(123)
    claims = right = 0
    for stage in range(400):
        y = np.array([0.72, 0.70, 0.70])[:, None] + rng.normal(0, 0.1, size=3)[None, :] + rng.normal(0, 0.02, size=(3, 3))
        result = compare_blocks(blocked({c: list(y[i]) for i, c in enumerate("abc")}), seed=stage, draws=4000)
        top = max(result.p_best, key=result.p_best.get)
        if result.p_best[top] >= 0.9:
            claims += 1
            right += top == "a"
    assert claims >= 50  # enough claims for the rate to mean something
    assert right / claims >= 0.85
