"""Racing a stage: which blocks run, which choices are dropped, when the stage stops.

A paired stage plans `designs_per_choice` blocks. Racing runs them in rounds: round 0 is the first
`min_blocks` blocks of every choice (the selection procedure's first stage; a stage that plans no
more blocks than that first looks after 3, `selection.early_look`, where a tie can stop it); after each round the
selection procedure (`selection.select`: KN on the paired block scores, with a stop for ties;
docs/design.md, "Selection procedure") drops the choices it can and says whether the stage is
done: one choice selected, a tie within `delta`, or every planned block run (undecided).
Otherwise the next round adds `blocks_per_round` blocks to every remaining choice. Rounds say what
the procedure needs next, not what may run: later blocks train meanwhile (stage/dispatch.py), and
`race_state` judges the longest prefix of blocks complete for the survivors, in block order, so a
block that finished early never changes a verdict (`judged_records`: the records it rests on).

The race is a pure function of (plan, trial records, racing settings): `race_state` replays it
from the records every time, so a resumed stage continues exactly where the race stopped, and a
run interrupted and resumed decides as an uninterrupted one. Without racing (`racing: null`) the
"race" is one round of every planned row. Pure: numpy through `selection`; never ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from peft_search.search.stage.plan import PlanRow, StagePlan
from peft_search.search.stage.scores import design_scores, trial_scores
from peft_search.search.stage.selection import RUNNING, SELECTED, TIE, UNDECIDED, Selection, early_look, select


@dataclass(frozen=True)
class Elimination:
    round: int  # the round after which the choice was dropped (0-based)
    blocks: int  # blocks the choice had run by then
    p_best: float | None = None  # kept for state files written before the selection procedure
    behind: str | None = None  # the choice it fell behind
    gap: float | None = None  # by how much (mean difference), against ...
    allowance: float | None = None  # ... KN's allowance W at that moment


@dataclass(frozen=True)
class RaceState:
    round: int  # the round running now (or the last one, once done)
    blocks: int  # blocks every remaining choice runs up to this round
    survivors: tuple[str, ...]
    eliminated: dict[str, Elimination] = field(default_factory=dict)
    pending: tuple[PlanRow, ...] = ()  # rows of this round without a record
    done: bool = False
    reason: str = ""  # why the race stopped, once done
    outcome: str = RUNNING  # selected | tie | undecided once done (selection.py)
    tied: tuple[str, ...] = ()  # the tied choices, when the outcome is a tie
    kept: str | None = None  # the choice the procedure keeps: the selected one, or a tie's by `on_tie`
    decided_at: int | None = None  # once done: the blocks the procedure had judged when it stopped

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


def round_of(blocks: int, racing, planned: int) -> int:
    """The round (0-based) in which a choice's `blocks`-th block ran: round 0 ends with the first stage
    (`min_blocks`, at most the planned blocks), or at a small stage's early look
    (`selection.early_look`), whose next round ends with the first stage; then one round per
    `blocks_per_round` blocks."""
    first_stage = min(racing.min_blocks, planned)
    early = early_look(first_stage, planned)
    if early is not None and blocks <= early:
        return 0
    return (early is not None) + max(0, -(-(blocks - first_stage) // racing.blocks_per_round))


def round_end(blocks: int, racing, planned: int) -> int:
    """The blocks every survivor has run once the round holding the `blocks`-th block is complete."""
    first_stage = min(racing.min_blocks, planned)
    early = early_look(first_stage, planned)
    rounds = round_of(blocks, racing, planned)
    if early is not None and rounds == 0:
        return early
    return min(planned, first_stage + racing.blocks_per_round * (rounds - (early is not None)))


def stop_reason(selection: Selection, racing, planned_blocks: int) -> str:
    """Why a race that is done stopped, in words."""
    if selection.outcome == SELECTED:
        return (f"{selection.survivors[0]} selected after {selection.blocks} blocks ({racing.procedure.upper()}: the best "
                f"with probability >= {racing.confidence:g} if at least {racing.delta:g} better than the rest)")
    if selection.outcome == TIE:
        return f"tie within {racing.delta:g} of {', '.join(selection.tied)} after {selection.blocks} blocks"
    return f"every planned block ran ({planned_blocks}) without a selection or a tie within {racing.delta:g}"


def paper_choice(component: str) -> str | None:
    """The paper's pattern for a component (the S4 design found for T5: spindle grouping, uniform
    allocation, every group tuned, its strategies per group), as a stage's choice reads it."""
    from peft_search.space.components import (ALLOCATION, GROUPING, STRATEGY_PREFIX, TUNABLE_GROUPS, format_group_set,
                                              format_strategy_set)
    from peft_search.train.presets import PRESET_DESIGNS

    paper = PRESET_DESIGNS["s4-t5"]
    if component == GROUPING:
        return paper.grouping
    if component == ALLOCATION:
        return paper.allocation
    if component == TUNABLE_GROUPS:
        return format_group_set(paper.tunable_groups)
    if component.startswith(STRATEGY_PREFIX):
        group = int(component.removeprefix(STRATEGY_PREFIX))
        return format_strategy_set(paper.strategies[group - 1]) if group <= len(paper.strategies) else None
    return None


def kept_on_tie(selection: Selection, on_tie: str, component: str) -> str:
    """Which tied choice a tie keeps (racing.on_tie): the best mean, the first listed, or the paper's."""
    if on_tie == "first":
        return selection.tied[0]
    if on_tie == "paper" and paper_choice(component) in selection.tied:
        return paper_choice(component)
    return selection.leader


def judge(scores, choices: Sequence[str], blocks: Sequence[int], racing, planned_blocks: int) -> Selection:
    """The selection procedure over the blocks run so far (in order), with the spec's settings."""
    return select(scores, choices, blocks, delta=racing.delta, confidence=racing.confidence,
                  first_stage=min(racing.min_blocks, planned_blocks), planned_blocks=planned_blocks,
                  procedure=racing.procedure)


def race_state(plan: StagePlan, records: Sequence[dict], racing, tasks: Sequence[str], seed: int = 0) -> RaceState:
    """Where the race of `plan` stands given its trial records (see the module docstring). `seed`
    is unused (the procedure draws nothing) and kept for callers written before it."""
    recorded = {r["trial_id"] for r in records}
    choices = tuple(c for c in plan.choices if any(row.choice == c for row in plan.rows))  # infeasible ones plan nothing
    if racing is None or not plan.rows or plan.rows[0].block is None:
        pending = tuple(row for row in plan.rows if row.trial_id not in recorded)
        blocks = len({row.block if row.block is not None else row.sample for row in plan.rows})
        return RaceState(0, blocks, choices, pending=pending, done=not pending, reason="every planned design ran",
                         outcome=UNDECIDED if not pending else RUNNING)
    rows_by_block: dict[int, list[PlanRow]] = {}
    for row in plan.rows:
        rows_by_block.setdefault(row.block, []).append(row)
    all_blocks = sorted(rows_by_block)
    planned = len(all_blocks)
    scores = block_scores(records, tasks)
    survivors = list(choices)
    eliminated: dict[str, Elimination] = {}
    count = round_end(1, racing, planned)  # the first look

    def complete(block: int) -> bool:
        return all(row.trial_id in recorded for row in rows_by_block[block] if row.choice in survivors)

    while True:
        pending = tuple(row for block in all_blocks[:count] for row in rows_by_block[block]
                        if row.choice in survivors and row.trial_id not in recorded)
        if pending:
            return RaceState(round_of(count, racing, planned), count, tuple(survivors), eliminated, pending)
        # Judge the longest prefix of blocks complete for the survivors, in block order: blocks that
        # finished early beyond it wait (stage/dispatch.py). The procedure replays every look up to it.
        judged = count
        while judged < planned and complete(all_blocks[judged]):
            judged += 1
        selection = judge(scores, choices, all_blocks[:judged], racing, planned)
        eliminated = {c: Elimination(round_of(out.blocks, racing, planned), out.blocks, None, out.by, out.gap, out.allowance)
                      for c, out in selection.dropped.items()}
        survivors = list(selection.survivors)
        if selection.done:
            kept = (selection.survivors[0] if selection.outcome == SELECTED
                    else kept_on_tie(selection, racing.on_tie, plan.component) if selection.outcome == TIE else None)
            reason = stop_reason(selection, racing, planned)
            if selection.outcome == TIE:
                reason += f"; kept {kept} ({racing.on_tie})"
            return RaceState(round_of(selection.blocks, racing, planned), round_end(selection.blocks, racing, planned),
                             tuple(survivors), eliminated, done=True, reason=reason, outcome=selection.outcome,
                             tied=selection.tied, kept=kept, decided_at=selection.blocks)
        count = round_end(judged + 1, racing, planned)


def judged_records(plan: StagePlan, race: RaceState, records: Sequence[dict]) -> list[dict]:
    """The records the race's verdict rests on: blocks up to where it decided (or has judged), and a
    dropped choice's only up to its drop. The others trained ahead of a decision (the dispatch's
    look-ahead) and count as spent, not as evidence: the decision is the one a sequential race makes."""
    if plan.rows and plan.rows[0].block is None:
        return list(records)
    blocks = sorted({row.block for row in plan.rows})
    judged = race.decided_at if race.decided_at is not None else race.blocks
    position = {block: i for i, block in enumerate(blocks)}

    def counted(record: dict) -> bool:
        at = position.get(record.get("block"))
        if at is None:
            return True
        out = race.eliminated.get(record.get("choice"))
        return at < (out.blocks if out is not None else judged)

    return [r for r in records if counted(r)]


__all__ = ["Elimination", "RaceState", "block_scores", "judge", "judged_records", "kept_on_tie", "paper_choice", "race_state",
           "round_of", "stop_reason"]
