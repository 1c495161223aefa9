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
unnecessary (docs/design.md, "Dispatch").

Packed trials (`rows_per_trial`, issue 38): Tune's driver starts one trial after another, each
costing it `start_s`, so short trials on many slots leave slots waiting for the driver (64 GPUs,
trials of 1 to 62 s: at most 71% used). `next_trial` hands out several consecutive useful rows as one
trial, trained back to back in one actor, each still its own record: the chunks of chunk
self-scheduling (Kruskal and Weiss, "Allocating independent subtasks on parallel processors", IEEE
TSE 1985), which spend one dispatch overhead on several tasks, sized in seconds by
`time_left.pack_target_s`: at most twice what the driver takes to start a trial on every slot (so it
keeps every slot fed), and, as the stage's work runs out, the economic lot size sqrt(2 x work left x
start cost) (so the last trials end together); a row at least that long goes alone. Rows are packed
once their task's duration is measured (an earlier stage's trials count). Pure: no ray, no I/O.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Container, Iterator

from peft_search.search.stage.estimate import config_steps
from peft_search.search.stage.plan import PlanRow, StagePlan
from peft_search.search.stage.racing import RaceState
from peft_search.search.time_left import pack_target_s


def row_steps(row: PlanRow) -> int:
    """A row's length for ordering: its optimiser steps, 0 when they are not known beforehand."""
    return config_steps(row.config) or 0


# `lookahead: auto` looks ahead by the blocks whose rows fill the cluster's slots this many times
# over (chosen with the simulator: docs/benchmarks.md, "A search on a cluster").
AUTO_SLOT_FILLS = 2


class Dispatch:
    """The order in which a stage's rows go out, and the rows a race can use now."""

    def __init__(self, plan: StagePlan, lookahead: int | str | None, slots: int = 1,
                 length: Callable[[PlanRow], float] = row_steps, rows_per_trial: int | str = 1):
        """`lookahead`: blocks past the procedure's next look that may be handed out; `auto`: as many
        as it takes for the surviving choices' rows to fill `slots` (trials the cluster runs at once)
        AUTO_SLOT_FILLS times; None: every planned block, as a stage without racing trains them all.
        `rows_per_trial`: rows one trial trains back to back (`next_trial`); `auto`: as many as make
        it last `pack_target_s`."""
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
        self.rows_per_trial = rows_per_trial

    def blocks_ahead(self, survivors: int) -> int:
        if self.lookahead != "auto":
            return self.lookahead
        # Rows, whether or not they go out packed: packing spares the driver starts, it does not put
        # more work in flight (sized by trials, the look-ahead wasted 8% more GPU-hours of the T5 job on
        # 256 GPUs in the simulator, for 6% less wall-clock).
        return math.ceil(AUTO_SLOT_FILLS * self.slots / max(1.0, survivors * self.rows_per_choice_block))

    def block_position(self, row: PlanRow) -> int:
        return self.position[row.block if row.block is not None else row.sample]

    def rows(self, race: RaceState, recorded: Container[str], running: Container[str] = (),
             every_block: bool = False) -> Iterator[PlanRow]:
        """The rows to hand out now, in order: those of the surviving choices in the blocks up to the
        procedure's next look plus the look-ahead (`every_block`: in every planned block, the stage's
        work left), without a record (`recorded`, which only grows) and not running now (`running`)."""
        if race.done:
            return
        survivors = set(race.survivors)
        limit = (len(self.position) if self.lookahead is None or every_block
                 else race.blocks + self.blocks_ahead(len(survivors)))
        # Rows before `start` are recorded or of a dropped choice: neither comes back within a stage.
        while self.start < len(self.order) and (self.order[self.start].trial_id in recorded
                                                or self.order[self.start].choice not in survivors):
            self.start += 1
        for row in self.order[self.start:]:
            if self.block_position(row) >= limit:
                return
            if row.choice in survivors and row.trial_id not in recorded and row.trial_id not in running:
                yield row

    def next_trial(self, race: RaceState, recorded: Container[str], running: Container[str] = (),
                   seconds: Callable[[PlanRow], float | None] = lambda row: None,
                   start_s: float = 0.0) -> list[PlanRow]:
        """The rows of the next trial, in order (empty: nothing to hand out now): the next useful row
        and, when packing, the useful rows after it until the trial has `rows_per_trial` of them, or
        under `auto` while their `seconds` (a row's expected wall time; None: not measured yet, and
        the trial goes out as it is) stay within `time_left.pack_target_s` of the work left."""
        useful = self.rows(race, recorded, running)
        first = next(useful, None)
        if first is None:
            return []
        rows = [first]
        if self.rows_per_trial != "auto":
            rows += itertools.islice(useful, self.rows_per_trial - 1)
            return rows
        total_s = seconds(first)
        if total_s is None or total_s >= pack_target_s(self.slots, start_s):
            return rows  # not measured yet, or long enough alone: no need to weigh the work left
        # The seconds of rows still to hand out: the survivors' rows in every planned block.
        left_s = sum(seconds(row) or 0.0 for row in self.rows(race, recorded, running, every_block=True))
        target_s = pack_target_s(self.slots, start_s, left_s)
        for row in useful:
            row_s = seconds(row)
            if row_s is None or total_s + row_s > target_s:
                break  # the trial is as long as it should be: the row goes out with the next one
            rows.append(row)
            total_s += row_s
        return rows

__all__ = ["AUTO_SLOT_FILLS", "Dispatch", "row_steps"]
