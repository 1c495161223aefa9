"""How sure a stage is of its decision (docs/design.md, "Decisions: paired designs, racing, a selection procedure").

A stage compares C choices of one component. Its designs come in blocks: block k holds one design
per choice, and they share every other random draw, the training seed and the data order. A design's
score is a number (higher is better) or None when the design failed.

Blocked comparison (`compare_blocks`). The scores of the blocks complete for every choice compared
are read as a randomized complete block design, the two-way additive model
score[c, k] = mu_c + beta_k + eps, eps ~ N(0, sigma^2), analysed the standard Bayesian way with the
noninformative prior (flat on every mu_c and beta_k, p(sigma^2) proportional to 1/sigma^2). Given
K complete blocks, the posterior of the choice effects' contrasts is multivariate Student-t with
nu = (C-1)(K-1) degrees of freedom, located at the choices' means over those blocks and scaled by
the residual mean square s^2 (the squared residuals of the additive fit, divided by nu). It is drawn
by Monte Carlo: sigma^2 = nu s^2 / chi2_nu, then mu_c = mean_c + sqrt(sigma^2 / K) z_c with z_c iid
N(0, 1); the block effects are shared by every choice and cancel from every contrast, so a block
that is easy or hard for all choices alike costs no confidence. A choice's probability of being the
best, P(best), is the fraction of draws in which its mu_c is the largest. For two choices this is the
paired t posterior of the mean block difference, P = T_{K-1}(mean(d) / (sd(d) / sqrt(K))).

Why this method: it is the textbook analysis of paired designs, it uses only the within-block
differences the blocks were built to measure, and it is honest with few blocks. At K = 2 and C = 2
the posterior has one degree of freedom (Cauchy tails), so two agreeing differences give a high
probability but never certainty; a percentile bootstrap of two values has no tails at all and says
"1.00". With fewer than 2 complete blocks (nu = 0) the data say nothing about the noise, and every
P(best) is None: the caller must not claim anything. A sole contender is the best, P(best) = 1.

Zero residuals: when every block shows exactly the same differences, s^2 = 0 and the posterior
would be a point. The residual standard deviation is therefore floored at 1e-3 times the largest
absolute score in the analysis (a metric measured on a finite evaluation set does not resolve
differences much finer than that). The floor only matters when the blocks agree to about that
precision; the same floor applies to every standard deviation below.

Independent comparison (`compare_independent`), for designs not in blocks: each choice has its own
mean and variance (Behrens-Fisher), and with the same prior per choice its posterior mean is
mu_c = mean_c + s_c / sqrt(n_c) t_{n_c - 1}, drawn by Monte Carlo; P(best) as above. A choice with
fewer than 2 scores makes every P(best) None.

Intervals shown to users are not Monte Carlo: the difference of each choice to the reference best
(the choice with the best mean) has a Student-t interval, paired over the blocks the two choices
share (df = shared - 1, so a choice dropped early by the race still gets one) or Welch's for
independent designs, with the t quantile computed from the regularized incomplete beta function.

Racing (`race_step`): after each round, a choice whose P(best) is below 1 - confidence is dropped,
and a choice whose P(best) reaches the confidence wins. Comparisons after a drop are made among the
surviving choices (`contenders`; by default every choice given), over the blocks complete for them.

Monte Carlo uses numpy's legacy `RandomState`, whose streams numpy keeps fixed across versions: the
same scores and seed give the same numbers anywhere. Pure: imports numpy and math only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

DRAWS = 20000
CONFIDENCE_LEVEL = 0.95
SD_FLOOR = 1e-3  # residual sd floor, relative to the largest absolute score
_TINY_SCALE = 1e-9  # floor's scale when every score is 0


class Difference(NamedTuple):
    """A choice's mean difference to the reference best (negative: worse) and its t interval."""

    mean: float | None  # None: no block (or, unpaired, no score) to compare
    low: float | None  # None: fewer than 2 pairs (or scores per choice)
    high: float | None
    n: int  # pairs (blocked) or the choice's scores (independent) behind it


@dataclass(frozen=True)
class Comparison:
    method: str  # "blocked" or "independent"
    choices: tuple[str, ...]  # every choice given, in the given order
    contenders: tuple[str, ...]  # the choices P(best) is computed among
    blocks: int  # blocked: complete blocks used for P(best); independent: 0
    df: int  # blocked: (C-1)(K-1); independent: the smallest n_c - 1 (0 when none)
    means: dict[str, float | None]  # posterior location: contenders' means over the data used
    best: str | None  # reference for diff_to_best: the contender with the best mean
    p_best: dict[str, float | None]  # None: not a contender, or no information (df = 0)
    diff_to_best: dict[str, Difference]
    confidence_level: float  # of the diff_to_best intervals
    draws: int
    seed: int


# --- Student t ---------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc: a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must lie in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast below its mean; above it, use I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_tail(x: float, df: float) -> float:
    """P(T > |x|) for Student t with df degrees of freedom."""
    if math.isinf(x):
        return 0.0
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + x * x))


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for Student t with df > 0 (not necessarily integer) degrees of freedom."""
    if not df > 0:
        raise ValueError(f"t_cdf: degrees of freedom must be positive, got {df}")
    if math.isnan(x):
        return math.nan
    tail = _t_tail(x, df)
    return 1.0 - tail if x > 0 else tail


@functools.lru_cache(maxsize=4096)  # a race asks for the same few quantiles at every look
def t_quantile(p: float, df: float) -> float:
    """The x with P(T <= x) = p, for 0 < p < 1 and df > 0 degrees of freedom."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie strictly between 0 and 1, got {p}")
    if not df > 0:
        raise ValueError(f"t_quantile: degrees of freedom must be positive, got {df}")
    if p == 0.5:
        return 0.0
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * (1.0 - p))
    # Solve I_w(df/2, 1/2) = 2 * tail for w = df / (df + x^2) by bisection: I_w is increasing in w.
    target = 2.0 * min(p, 1.0 - p)
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if betainc(df / 2.0, 0.5, mid) < target:
            lo = mid
        else:
            hi = mid
    w = 0.5 * (lo + hi)
    x = math.sqrt(df * (1.0 - w) / w)
    return x if p > 0.5 else -x


def _t_interval(mean: float, se: float, df: float, level: float) -> tuple[float, float]:
    half = t_quantile(0.5 + level / 2.0, df) * se
    return mean - half, mean + half


# --- comparisons -------------------------------------------------------------------------------


def _value(score) -> float | None:
    if score is None:
        return None
    value = float(score)
    return value if math.isfinite(value) else None


def _check(seed: int, draws: int, confidence_level: float) -> None:
    if not (isinstance(seed, (int, np.integer)) and 0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must lie strictly between 0 and 1, got {confidence_level}")


def _contenders(choices: tuple[str, ...], contenders: Iterable[str] | None) -> tuple[str, ...]:
    if not choices:
        raise ValueError("no choices to compare: give at least one choice's scores")
    if contenders is None:
        return choices
    wanted = set(contenders)
    unknown = sorted(wanted - set(choices))
    if unknown:
        raise ValueError(f"contenders {unknown} are not among the scored choices {list(choices)}")
    return tuple(c for c in choices if c in wanted)


def _floor(values: Iterable[float]) -> float:
    scale = max((abs(v) for v in values), default=0.0)
    return SD_FLOOR * (scale if scale > 0 else _TINY_SCALE)


def _p_best(mu: np.ndarray, contenders: tuple[str, ...]) -> dict[str, float]:
    wins = np.bincount(np.argmax(mu, axis=1), minlength=len(contenders))
    return {c: float(w) / mu.shape[0] for c, w in zip(contenders, wins)}


def compare_blocks(
    scores: Mapping[str, Mapping[int, float | None]],
    seed: int,
    draws: int = DRAWS,
    confidence_level: float = CONFIDENCE_LEVEL,
    contenders: Iterable[str] | None = None,
) -> Comparison:
    """P(best) of each contender from blocked designs, and paired intervals to the best.

    scores[choice][block] is the score of the choice's design in that block (None or NaN: failed; a
    missing block: not run). P(best) uses the blocks in which every contender has a score; by default
    every choice given is a contender, so a choice whose designs all failed leaves every P(best)
    None; a caller that applies decide.py's rule (such a choice cannot win) leaves it out, and a race
    passes its surviving choices.
    """
    _check(seed, draws, confidence_level)
    choices = tuple(scores)
    clean = {c: {int(k): v for k, s in scores[c].items() if (v := _value(s)) is not None} for c in choices}
    racing = _contenders(choices, contenders)
    complete = sorted(set.intersection(*(set(clean[c]) for c in racing))) if racing else []
    K, C = len(complete), len(racing)
    floor = _floor(v for c in choices for v in clean[c].values())

    means: dict[str, float | None] = {c: None for c in choices}
    p_best: dict[str, float | None] = {c: None for c in choices}
    df = 0
    if K:
        y = np.array([[clean[c][k] for k in complete] for c in racing])
        row = y.mean(axis=1)
        means.update({c: float(m) for c, m in zip(racing, row)})
        df = (C - 1) * (K - 1)
        if C == 1:
            p_best[racing[0]] = 1.0  # the only contender is the best among the contenders
        elif df > 0:
            residual = y - row[:, None] - y.mean(axis=0)[None, :] + y.mean()
            s2 = max(float((residual**2).sum()) / df, floor**2)
            rng = np.random.RandomState(seed)
            sigma2 = df * s2 / rng.chisquare(df, size=draws)
            z = rng.standard_normal((draws, C))
            p_best.update(_p_best(row[None, :] + np.sqrt(sigma2 / K)[:, None] * z, racing))

    best = _reference_best(racing, means, {c: _mean(clean[c].values()) for c in choices})
    if best is None:
        diff_to_best = {c: Difference(None, None, None, 0) for c in choices}
    else:
        diff_to_best = {c: _paired_difference(clean[c], clean[best], floor, confidence_level, c == best) for c in choices}
    return Comparison("blocked", choices, racing, K, df, means, best, p_best, diff_to_best, confidence_level, draws, seed)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def _reference_best(
    racing: tuple[str, ...], means: Mapping[str, float | None], own_means: Mapping[str, float | None]
) -> str | None:
    """The contender with the best mean over the data used (ties: listed first); when no data is
    shared by all contenders, the best mean over each contender's own scores."""
    for table in (means, own_means):
        ranked = [c for c in racing if table[c] is not None]
        if ranked:
            return max(ranked, key=lambda c: table[c])  # max keeps the first of equal keys
    return None


def _paired_difference(
    own: Mapping[int, float], best: Mapping[int, float], floor: float, level: float, is_best: bool
) -> Difference:
    shared = sorted(set(own) & set(best))
    n = len(shared)
    if is_best:
        return Difference(0.0, 0.0, 0.0, n)
    if n == 0:
        return Difference(None, None, None, 0)
    d = np.array([own[k] - best[k] for k in shared])
    mean = float(d.mean())
    if n < 2:
        return Difference(mean, None, None, 1)
    sd = max(float(d.std(ddof=1)), floor)
    low, high = _t_interval(mean, sd / math.sqrt(n), n - 1, level)
    return Difference(mean, low, high, n)


def compare_independent(
    scores: Mapping[str, Sequence[float | None]],
    seed: int,
    draws: int = DRAWS,
    confidence_level: float = CONFIDENCE_LEVEL,
    contenders: Iterable[str] | None = None,
) -> Comparison:
    """P(best) of each contender from designs not in blocks (Behrens-Fisher by simulation), and
    Welch intervals to the best. scores[choice] lists its design scores (None or NaN: failed);
    contenders as in `compare_blocks`."""
    _check(seed, draws, confidence_level)
    choices = tuple(scores)
    clean = {c: [v for s in scores[c] if (v := _value(s)) is not None] for c in choices}
    racing = _contenders(choices, contenders)
    floor = _floor(v for c in choices for v in clean[c])
    n = {c: len(clean[c]) for c in choices}
    mean = {c: _mean(clean[c]) for c in choices}
    sd = {c: max(float(np.std(clean[c], ddof=1)), floor) if n[c] >= 2 else None for c in choices}

    means: dict[str, float | None] = {c: (mean[c] if c in racing else None) for c in choices}
    p_best: dict[str, float | None] = {c: None for c in choices}
    df = min((n[c] - 1 for c in racing), default=0)
    if len(racing) == 1 and n[racing[0]] >= 1:
        p_best[racing[0]] = 1.0
    elif racing and df >= 1:
        rng = np.random.RandomState(seed)
        mu = np.column_stack(
            [mean[c] + sd[c] / math.sqrt(n[c]) * rng.standard_t(n[c] - 1, size=draws) for c in racing]
        )
        p_best.update(_p_best(mu, racing))

    best = _reference_best(racing, means, means)
    diff_to_best = {c: _welch_difference(c, best, n, mean, sd, confidence_level) for c in choices}
    return Comparison(
        "independent", choices, racing, 0, max(df, 0), means, best, p_best, diff_to_best, confidence_level, draws, seed
    )


def _welch_difference(c: str, best: str | None, n, mean, sd, level: float) -> Difference:
    if best is None or mean[c] is None:
        return Difference(None, None, None, n[c])
    if c == best:
        return Difference(0.0, 0.0, 0.0, n[c])
    diff = mean[c] - mean[best]
    if sd[c] is None or sd[best] is None:
        return Difference(diff, None, None, n[c])
    va, vb = sd[c] ** 2 / n[c], sd[best] ** 2 / n[best]
    df = (va + vb) ** 2 / (va**2 / (n[c] - 1) + vb**2 / (n[best] - 1))  # Welch-Satterthwaite
    low, high = _t_interval(diff, math.sqrt(va + vb), df, level)
    return Difference(diff, low, high, n[c])


# --- racing ------------------------------------------------------------------------------------


def race_step(comparison: Comparison, confidence: float) -> tuple[set[str], str | None]:
    """Choices to drop (P(best) < 1 - confidence) and the winner (P(best) >= confidence), if any.

    A choice whose P(best) is None (not a contender, or too few blocks to know) is never dropped
    and never wins."""
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"racing confidence must lie strictly between 0.5 and 1, got {confidence}")
    known = {c: p for c, p in comparison.p_best.items() if p is not None}
    eliminated = {c for c, p in known.items() if p < 1.0 - confidence}
    winners = [c for c, p in known.items() if p >= confidence]
    return eliminated, (winners[0] if winners else None)
