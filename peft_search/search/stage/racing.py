"""Racing a stage: which blocks run, which choices are dropped, when the stage stops.

A paired stage plans `designs_per_choice` blocks. Racing (DESIGN.md section 2, "Racing") runs them
in rounds: round 0 is the first `min_blocks` blocks of every choice; after each round the blocked
comparison (`confidence.compare_blocks`) over the round's blocks gives each remaining choice its
posterior probability of being the best; choices below 1 - confidence are dropped; the stage stops
when one choice reaches `confidence`, when one choice is left, or when every block has run.
Otherwise the next round adds `blocks_per_round` blocks to every remaining choice.

The race is a pure function of (plan, trial records, racing settings, seed): `race_state` replays
it from the records every time, so a resumed stage continues exactly where the race stopped, and a
run interrupted and resumed decides as an uninterrupted one. Without racing (`racing: null`) the
"race" is one round of every planned row. Pure: numpy through `confidence`; never ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from peft_search.search.stage.confidence import compare_blocks, race_step
from peft_search.search.stage.plan import PlanRow, StagePlan
from peft_search.search.stage.scores import design_scores, trial_scores


@dataclass(frozen=True)
class Elimination:
    round: int  # the round after which the choice was dropped (0-based)
    blocks: int  # blocks the choice had run by then
    p_best: float | None  # its probability of being the best at that moment


@dataclass(frozen=True)
class RaceState:
    round: int  # the round running now (or the last one, once done)
    blocks: int  # blocks every remaining choice runs up to this round
    survivors: tuple[str, ...]
    eliminated: dict[str, Elimination] = field(default_factory=dict)
    pending: tuple[PlanRow, ...] = ()  # rows of this round without a record
    done: bool = False
    reason: str = ""  # why the race stopped, once done

    @property
    def needed(self) -> int:
        """Rows still to train before the current round can be judged."""
        return len(self.pending)


def block_scores(records: Sequence[dict], tasks: Sequence[str]) -> dict[str, dict[int, float | None]]:
    """choice -> block -> design score, from a stage's records."""
    table: dict[str, dict[int, float | None]] = {}
    for design in design_scores(trial_scores(records), tasks):
        if design.block is not None:
            table.setdefault(design.choice, {})[design.block] = design.score
    return table


def judge_round(scores: dict[str, dict[int, float | None]], survivors: Sequence[str], blocks: Sequence[int], racing,
                round_index: int, seed: int) -> tuple[list[str], dict[str, Elimination], str | None]:
    """One round's verdict over `blocks`: (survivors after it, the choices dropped, a winner or None)."""
    comparison = compare_blocks({c: {b: scores.get(c, {}).get(b) for b in blocks} for c in survivors}, seed=seed + round_index)
    dropped, winner = race_step(comparison, racing.confidence)
    eliminated = {c: Elimination(round_index, len(blocks), comparison.p_best.get(c)) for c in survivors if c in dropped}
    return [c for c in survivors if c not in dropped], eliminated, winner


def stop_reason(winner: str | None, survivors: Sequence[str], count: int, total: int, racing) -> str | None:
    """Why the race stops after a round, or None when it goes on."""
    if winner is not None:
        return f"{winner} is the best with probability >= {racing.confidence:g}"
    if len(survivors) <= 1:
        return "one choice left"
    if count >= total:
        return f"every planned block ran ({total})"
    return None


def race_state(plan: StagePlan, records: Sequence[dict], racing, tasks: Sequence[str], seed: int) -> RaceState:
    """Where the race of `plan` stands given its trial records (see the module docstring)."""
    recorded = {r["trial_id"] for r in records}
    choices = tuple(c for c in plan.choices if any(row.choice == c for row in plan.rows))  # infeasible ones plan nothing
    if racing is None or not plan.rows or plan.rows[0].block is None:
        pending = tuple(row for row in plan.rows if row.trial_id not in recorded)
        blocks = len({row.block if row.block is not None else row.sample for row in plan.rows})
        return RaceState(0, blocks, choices, pending=pending, done=not pending, reason="every planned design ran")
    all_blocks = sorted({row.block for row in plan.rows})
    scores = block_scores(records, tasks)
    survivors = list(choices)
    eliminated: dict[str, Elimination] = {}
    count = min(racing.min_blocks, len(all_blocks))
    round_index = 0
    while True:
        in_round = all_blocks[:count]
        pending = tuple(
            row for row in plan.rows if row.choice in survivors and row.block in in_round and row.trial_id not in recorded
        )
        if pending:
            return RaceState(round_index, count, tuple(survivors), eliminated, pending)
        survivors, dropped, winner = judge_round(scores, survivors, in_round, racing, round_index, seed)
        eliminated.update(dropped)
        reason = stop_reason(winner, survivors, count, len(all_blocks), racing)
        if reason is not None:
            return RaceState(round_index, count, tuple(survivors), eliminated, done=True, reason=reason)
        count = min(count + racing.blocks_per_round, len(all_blocks))
        round_index += 1


__all__ = ["Elimination", "RaceState", "block_scores", "judge_round", "race_state", "stop_reason"]
