"""Which plan rows a stage hands out next: the dispatch policy that the Tune searcher
(`experiment.StageSearcher`) and the cluster simulator (`search/simulate.py`) both call.

Barrier-free, as asynchronous successive halving removed the rung barrier from early stopping (Li et
al., MLSys 2020): whenever a slot is free the next useful row goes out, never waiting for a round's
slowest trial. Useful rows are those of the choices still in the race, in the blocks the selection
procedure needs for its next look (`RaceState.blocks`) and up to `lookahead` blocks past them;
block by block, and within a block longest trial first (an MNLI trial starts before an RTE trial,
so a block completes as early as its longest trial allows).

Results are judged in block order only: `racing.race_state` looks at the longest prefix of blocks
complete for the survivors, however the trials finished. This is the vector-filling rule of Luo,
Hong, Nelson and Wu for running a fully sequential selection procedure on parallel workers
("Fully sequential procedures for large-scale ranking-and-selection problems in parallel computing
environments", Operations Research 63(5), 2015): a trial's run time never decides which results
count, so on the same scores the procedure decides exactly as a sequential run would, and KN's
guarantee holds. The look-ahead bounds the work that can be wasted on blocks a decision makes
unnecessary (docs/design.md, "Dispatch"). Pure: no ray, no I/O.
"""

from __future__ import annotations

import math
from typing import Callable, Container, Iterator

from peft_search.search.stage.estimate import config_steps
from peft_search.search.stage.plan import PlanRow, StagePlan
from peft_search.search.stage.racing import RaceState


def row_steps(row: PlanRow) -> int:
    """A row's length for ordering: its optimiser steps, 0 when they are not known beforehand."""
    return config_steps(row.config) or 0


# `lookahead: auto` looks ahead by the blocks whose rows fill the cluster's slots this many times
# over (chosen with the simulator: docs/benchmarks.md, "A search on a cluster").
AUTO_SLOT_FILLS = 2


class Dispatch:
    """The order in which a stage's rows go out, and the rows a race can use now."""

    def __init__(self, plan: StagePlan, lookahead: int | str | None, slots: int = 1,
                 length: Callable[[PlanRow], float] = row_steps):
        """`lookahead`: blocks past the procedure's next look that may be handed out; `auto`: as many
        as it takes for the surviving choices' rows to fill `slots` (trials the cluster runs at once)
        AUTO_SLOT_FILLS times; None: every planned block, as a stage without racing trains them all."""
        blocks = sorted({row.block if row.block is not None else row.sample for row in plan.rows})
        self.position = {block: i for i, block in enumerate(blocks)}
        self.lookahead, self.slots = lookahead, slots
        choices = {row.choice for row in plan.rows}
        self.rows_per_choice_block = len(plan.rows) / max(1, len(choices) * len(blocks))  # tasks x seeds
        lengths = {}  # rows of one task and fidelity share their length: count it once per task
        for row in plan.rows:
            if row.task not in lengths:
                lengths[row.task] = length(row)
        self.order: tuple[PlanRow, ...] = tuple(
            sorted(plan.rows, key=lambda row: (self.block_position(row), -lengths[row.task])))  # stable: plan order
        self.start = 0  # the first row that may still go out

    def blocks_ahead(self, survivors: int) -> int:
        if self.lookahead != "auto":
            return self.lookahead
        return math.ceil(AUTO_SLOT_FILLS * self.slots / max(1.0, survivors * self.rows_per_choice_block))

    def block_position(self, row: PlanRow) -> int:
        return self.position[row.block if row.block is not None else row.sample]

    def rows(self, race: RaceState, recorded: Container[str], running: Container[str] = ()) -> Iterator[PlanRow]:
        """The rows to hand out now, in order: those of the surviving choices in the blocks up to the
        procedure's next look plus the look-ahead, without a record (`recorded`, which only grows)
        and not running now (`running`)."""
        if race.done:
            return
        survivors = set(race.survivors)
        limit = len(self.position) if self.lookahead is None else race.blocks + self.blocks_ahead(len(survivors))
        # Rows before `start` are recorded or of a dropped choice: neither comes back within a stage.
        while self.start < len(self.order) and (self.order[self.start].trial_id in recorded
                                                or self.order[self.start].choice not in survivors):
            self.start += 1
        for row in self.order[self.start:]:
            if self.block_position(row) >= limit:
                return
            if row.choice in survivors and row.trial_id not in recorded and row.trial_id not in running:
                yield row


__all__ = ["AUTO_SLOT_FILLS", "Dispatch", "row_steps"]
