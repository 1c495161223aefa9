"""The report's figures as PNG files: per stage, the empirical distribution (EDF) of design scores per
choice, RegNet-style (Radosavovic et al., 2020): x = design score, y = fraction of the choice's scored
designs that score at most x. A curve further right is a better choice at every quantile; where
curves cross, the choice is better only for some designs. Matplotlib with the Agg backend (files only,
no display).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from peft_search.search.stage.decide import Decision, kept_as  # noqa: E402


def edf_plot(decision: Decision, title: str, path: Path) -> Path:
    """Cumulative step curves of every scored choice's design scores, with each choice's mean marked."""
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    scores = [s for c in decision.choices for s in c.edf_scores]
    low, high = (min(scores), max(scores)) if scores else (0.0, 1.0)
    pad = max((high - low) * 0.05, 1e-3)
    for stats, label in zip(decision.choices, legend_labels(decision)):
        if not stats.scored:
            axes.plot([], [], label=label)
            continue
        xs = [low - pad, *stats.edf_scores, high + pad]
        ys = [0.0, *stats.edf_fractions, 1.0]
        (line,) = axes.step(xs, ys, where="post", linewidth=2.4 if stats.choice == decision.winner else 1.4, label=label)
        axes.axvline(stats.mean, color=line.get_color(), linestyle=":", linewidth=1)
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("design score (mean over tasks of the main metric)")
    axes.set_ylabel("fraction of designs with score <= x")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def legend_labels(decision: Decision) -> list[str]:
    """Each choice's legend entry: its designs, and for the kept choice what the stage claimed
    ("selected", "tie (kept)" or "kept: best mean, no claim"; docs/design.md, "Outcomes")."""
    labels = []
    for stats in decision.choices:
        label = f"{stats.choice} (n={stats.n_finished}" + (f", {stats.n_failed} failed)" if stats.n_failed else ")")
        if not stats.scored:
            label += ": no scored design"
        elif stats.choice == decision.winner:
            label += f" - {kept_as(decision)}"
        labels.append(label)
    return labels


def comparison_plot(rows: list[dict], tasks: list[str], path: Path) -> Path:
    """Mean dev score over seeds per contender (bars, one group per task) with the std as error bars."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    width = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        xs = [t + (i - (len(rows) - 1) / 2) * width for t in range(len(tasks))]
        means = [row["tasks"][task]["mean"] or 0.0 for task in tasks]
        stds = [row["tasks"][task]["std"] or 0.0 for task in tasks]
        axes.bar(xs, means, width=width, yerr=stds, capsize=2, label=row["contender"])
    axes.set_xticks(range(len(tasks)), tasks)
    axes.set_ylabel("dev score (mean over seeds)")
    axes.legend(fontsize=8, ncol=2)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path
