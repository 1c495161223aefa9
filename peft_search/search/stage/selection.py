"""Selecting a stage's best choice with a stated guarantee (docs/design.md, "Selection procedure").

The procedure is Kim and Nelson's fully sequential indifference-zone procedure for paired
(common-random-number) data, KN (Kim & Nelson 2001, "A fully sequential procedure for
indifference-zone selection in simulation", ACM TOMACS 11(3):251-273), with an equivalence stop
for ties (two one-sided tests, Schuirmann 1987).

Data: k choices; block j gives every choice one design score X_ij, the designs of a block sharing
every other random draw (paired). The user states `delta`, the smallest difference in score worth
finding, and the confidence 1 - alpha.

KN. The first n0 blocks (the first stage) are run for every choice. Then
    eta = ((2 alpha / (k - 1)) ** (-2 / (n0 - 1)) - 1) / 2,   h2 = 2 eta (n0 - 1),
and for every pair (i, l) S2_il is the sample variance of X_ij - X_lj over the first n0 blocks.
After r >= n0 blocks, with W_il(r) = max(0, delta / (2 r) * (h2 S2_il / delta**2 - r)), a choice i
is eliminated when mean_i(r) < mean_l(r) - W_il(r) for some surviving l; one more block per
survivor, and again, until one choice is left. Guarantee (KN's theorem, for normally distributed
block scores, unknown and unequal variances, any correlation between choices): if the best
choice's mean exceeds every other by at least delta, it is selected with probability >= 1 - alpha.
A pair's region closes at r = h2 S2_il / delta**2 blocks (W = 0); before then only a difference
large against the noise eliminates.

Ties. When the survivors are within delta of each other, KN would go on until the regions close.
The stage instead stops as soon as, for every survivor i and the leader L (the survivors' best
mean), the paired-t interval of mean_i - mean_L lies inside (-delta, delta), over at least n0
blocks: a tie within delta, kept by the spec's `on_tie` rule. Each interval is two one-sided tests
at alpha / ((m - 1) x looks) (m survivors; looks: the blocks at which the test can be made, from
n0 to the planned number): Bonferroni over the pairs and over the repeated looks, so that a
difference of delta or more is called a tie with probability at most alpha. The tie test comes
before KN's screening at each block: a stage whose choices are all within delta says so instead of
picking among them by noise.

A stage that plans no more blocks than its first stage (a 6-block stage under the default first
stage of 8) would look only once, after its last block; it also looks after TIE_FIRST_LOOK (3)
blocks, where a tie can stop it, that look counted among the looks the tie test's error is shared
over. Larger stages look from n0 on, as before.

KN++ (Kim & Nelson 2006, "On the asymptotic validity of fully sequential selection procedures for
steady-state simulation", Operations Research 54(3):475-488): KN with variance updating. At every look
r >= n0, S2_il is the variance of the paired differences over all r blocks, and eta and h2 take its
r - 1 degrees of freedom in place of n0 - 1:
    eta(r) = ((2 alpha / (k - 1)) ** (-2 / (r - 1)) - 1) / 2,   h2(r) = 2 eta(r) (r - 1).
h2 falls from KN's value at n0 towards -2 ln(2 alpha / (k - 1)) as blocks accrue (21.7 at n0 = 8 and 9.9
in the limit for 15 choices at alpha 0.05), so a pair's region closes after about half the blocks, and
the variance learns of heavy-tailed blocks (a collapse) that a first stage missed. Its guarantee is
asymptotic (as delta -> 0, the variances estimated ever better); the decisions replay measures it on
the recorded references (docs/design.md, "Selection procedure").

KN screens only with a first stage of at least KN_MIN_FIRST_STAGE blocks: its normal theory takes
the variances from the first stage, and stage scores are heavy-tailed (see the constant). With a
smaller first stage (`racing.min_blocks` below 8) a stage stops early only for a tie.

When the planned blocks run out first, the stage keeps the survivors' best mean and claims
nothing ("undecided": no guarantee).

Failed designs: a pair's statistics use the blocks where both choices have a score, in block order.
Pure: numpy and math only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from peft_search.search.stage.confidence import t_quantile

SELECTED, TIE, UNDECIDED, RUNNING = "selected", "tie", "undecided", "running"
KN, KN_PLUS_PLUS = "kn", "kn++"
PROCEDURES = (KN, KN_PLUS_PLUS)
DEFAULT_DELTA = 0.05  # on a score of scale 1: what CPU-scale stages can resolve (docs/benchmarks.md, "Decisions")
# KN drops choices only after a first stage of at least this many blocks. Its variances come from
# the first stage and assume normal scores; stage scores are heavy-tailed (a trial that collapses to
# the majority class moves its block by 0.2 to 0.3). On the decisive reference (one choice collapses
# in 6 of 16 blocks) KN's selections were right 3-6% of the time with first stages of 3 and 5
# blocks and 98% with 8 (docs/benchmarks.md).
KN_MIN_FIRST_STAGE = 8
# A stage that plans no more blocks than its first stage would look once, after its last block, and
# could never stop early. It looks first after this many blocks too (the old default first stage: a
# paired t interval on 2 degrees of freedom), where only a tie can stop it; that early look takes its
# share of the tie test's error like any other look.
TIE_FIRST_LOOK = 3


def early_look(first_stage: int, planned_blocks: int) -> int | None:
    """The blocks of a small stage's early look (a tie can stop it there), or None: a stage that plans
    more blocks than its first stage looks after every block from its first stage on."""
    if first_stage >= planned_blocks and TIE_FIRST_LOOK < first_stage:
        return TIE_FIRST_LOOK
    return None


def kn_h2(choices: int, alpha: float, first_stage: int) -> float:
    """KN's h^2 for k choices, error alpha and n0 first-stage blocks (KN++: the blocks its variance
    is taken over)."""
    if choices < 2:
        return 0.0
    eta = ((2 * alpha / (choices - 1)) ** (-2 / (first_stage - 1)) - 1) / 2
    return 2 * eta * (first_stage - 1)


def blocks_to_close(h2: float, variance: float, delta: float) -> int:
    """Blocks after which a pair's continuation region is closed (W = 0)."""
    return math.ceil(h2 * variance / delta**2)


@dataclass(frozen=True)
class Dropped:
    blocks: int  # blocks of the choice when it was dropped
    by: str  # the survivor it fell behind
    gap: float  # mean_by - mean_dropped at that moment
    allowance: float  # W at that moment: the gap had to exceed it


@dataclass(frozen=True)
class Selection:
    """Where the procedure stands after the blocks seen so far."""

    outcome: str  # running | selected | tie | undecided
    survivors: tuple[str, ...]
    dropped: dict[str, Dropped] = field(default_factory=dict)
    blocks: int = 0  # blocks screened (complete for the survivors)
    tied: tuple[str, ...] = ()  # the choices within delta of each other, when outcome == tie
    leader: str | None = None  # the survivors' best mean

    @property
    def done(self) -> bool:
        return self.outcome != RUNNING


def _pairs(scores: Mapping[str, Mapping[int, float | None]], i: str, l: str, blocks: Sequence[int]) -> np.ndarray:
    """X_i - X_l over the blocks (in the given order) where both have a score."""
    own, other = scores.get(i, {}), scores.get(l, {})
    return np.array([own[b] - other[b] for b in blocks
                     if own.get(b) is not None and other.get(b) is not None], dtype=np.float64)


def _mean(scores: Mapping[int, float | None], blocks: Sequence[int]) -> float:
    values = [scores[b] for b in blocks if scores.get(b) is not None]
    return float(np.mean(values)) if values else -math.inf


def select(scores: Mapping[str, Mapping[int, float | None]], choices: Sequence[str], blocks: Sequence[int], *,
           delta: float, confidence: float, first_stage: int, planned_blocks: int,
           procedure: str = KN) -> Selection:
    """Replay KN and the tie stop over `blocks` (in the order they ran; each one complete, or as
    complete as failures allow, for the choices still in at that point) and return where it stands.

    scores[choice][block] is a design score (None: failed). `planned_blocks` is how many blocks the
    stage can run at most: once they all ran, a stage still undecided ends `undecided`. `procedure`:
    KN (first-stage variances) or KN++ (variances updated at every look)."""
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown selection procedure {procedure!r}: one of {', '.join(PROCEDURES)}")
    alpha = 1 - confidence
    screening = first_stage >= KN_MIN_FIRST_STAGE  # below it, only the tie stop
    survivors = [c for c in choices if any(v is not None for v in scores.get(c, {}).values())]
    if len(survivors) <= 1:
        return Selection(SELECTED if survivors else UNDECIDED, tuple(survivors), blocks=len(blocks),
                         leader=survivors[0] if survivors else None)
    choices_at_start = len(survivors)
    h2 = kn_h2(choices_at_start, alpha, first_stage) if screening else 0.0
    variance = _pair_variances(scores, survivors, list(blocks[:first_stage]))
    if procedure == KN_PLUS_PLUS:  # each pair's differences over every block, once: a look takes a prefix
        pair_differences = {(i, l): _positioned_pairs(scores, i, l, blocks) for i in survivors for l in survivors if i != l}
    dropped: dict[str, Dropped] = {}
    first_stage = max(first_stage, 2)  # one block says nothing about the noise: a 1-block stage just runs
    early = early_look(first_stage, planned_blocks)
    # The tie test may be made once per block from n0 on, and at a small stage's early look.
    looks = (early is not None) + max(1, planned_blocks - first_stage + 1)
    for r in range(early or first_stage, len(blocks) + 1):
        if early is not None and early < r < first_stage:
            continue  # no look between a small stage's early look and its end
        seen = list(blocks[:r])
        means = {c: _mean(scores.get(c, {}), seen) for c in survivors}
        leader = max(survivors, key=lambda c: (means[c], -survivors.index(c)))
        if _tied(scores, survivors, leader, seen, delta, alpha / looks, early or first_stage):
            return Selection(TIE, tuple(survivors), dropped, r, tied=tuple(survivors), leader=leader)
        out = {}
        if not screening or r < first_stage:
            continue
        if procedure == KN_PLUS_PLUS:  # variances over every block seen, h2 on their degrees of freedom
            variance = {pair: _prefix_variance(differences, r) for pair, differences in pair_differences.items()
                        if pair[0] in survivors and pair[1] in survivors}
        for i in survivors:
            for l in survivors:
                if i == l or not math.isfinite(variance[i, l][0]):
                    continue
                pair_variance, pairs = variance[i, l]
                pair_h2 = kn_h2(choices_at_start, alpha, pairs) if procedure == KN_PLUS_PLUS else h2
                allowance = max(0.0, delta / (2 * r) * (pair_h2 * pair_variance / delta**2 - r))
                gap = means[l] - means[i]
                if gap > allowance and i not in out:  # the best mean is never behind: one always survives
                    out[i] = Dropped(r, l, gap, allowance)
        dropped.update(out)
        survivors = [c for c in survivors if c not in out]
        if len(survivors) == 1:
            return Selection(SELECTED, tuple(survivors), dropped, r, leader=survivors[0])
    seen = list(blocks)
    means = {c: _mean(scores.get(c, {}), seen) for c in survivors}
    leader = max(survivors, key=lambda c: (means[c], -survivors.index(c)))
    outcome = UNDECIDED if len(blocks) >= planned_blocks else RUNNING
    return Selection(outcome, tuple(survivors), dropped, len(blocks), leader=leader)


def _positioned_pairs(scores, i: str, l: str, blocks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(positions in `blocks`, X_i - X_l) where both have a score, in block order: `_pairs` over any prefix
    of `blocks` is the differences at positions before its length."""
    own, other = scores.get(i, {}), scores.get(l, {})
    kept = [(at, own[b] - other[b]) for at, b in enumerate(blocks) if own.get(b) is not None and other.get(b) is not None]
    return np.array([at for at, _ in kept], dtype=np.int64), np.array([d for _, d in kept], dtype=np.float64)


def _prefix_variance(differences: tuple[np.ndarray, np.ndarray], blocks: int) -> tuple[float, int]:
    """(variance, count) of a pair's differences over the first `blocks` blocks, as `_pair_variances`."""
    positions, values = differences
    d = values[: int(np.searchsorted(positions, blocks))]
    return (float(np.var(d, ddof=1)) if len(d) >= 2 else math.inf, len(d))


def _pair_variances(scores, survivors: Sequence[str], blocks: Sequence[int]) -> dict[tuple[str, str], tuple[float, int]]:
    """(i, l) -> (variance of X_i - X_l over the blocks where both have a score, how many such blocks)."""
    variance = {}
    for i in survivors:
        for l in survivors:
            if i != l:
                d = _pairs(scores, i, l, blocks)
                variance[i, l] = (float(np.var(d, ddof=1)) if len(d) >= 2 else math.inf, len(d))
    return variance


def _tied(scores, survivors: Sequence[str], leader: str, blocks: Sequence[int], delta: float, alpha: float,
          first_stage: int) -> bool:
    """Every survivor's paired interval to the leader inside (-delta, delta) (TOST, Bonferroni)."""
    others = [c for c in survivors if c != leader]
    level_tail = alpha / len(others)  # one-sided, per comparison
    for c in others:
        d = _pairs(scores, c, leader, blocks)
        if len(d) < max(2, first_stage):
            return False
        half = t_quantile(1 - level_tail, len(d) - 1) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
        mean = float(np.mean(d))
        if not (-delta < mean - half and mean + half < delta):
            return False
    return True


__all__ = ["KN", "KN_PLUS_PLUS", "PROCEDURES", "RUNNING", "SELECTED", "TIE", "TIE_FIRST_LOOK", "UNDECIDED", "Dropped", "Selection", "blocks_to_close",
           "early_look", "kn_h2", "select"]
