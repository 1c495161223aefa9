"""Copy the committed part of a study run into docs/study/NAME: what `peft-search report`, `resume`
and docs/study/tables.py need (spec, state, plans, trial records, Parquet tables, the final
evaluation's records), without Ray Tune's experiment folders, kept weights, `.started` markers or the
rendered report. A file already there is replaced; one the run no longer has is removed.

    .venv/bin/python docs/study/collect.py RUN_DIR NAME     # NAME: staged, joint or random
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEPT = {".json", ".yaml", ".parquet"}
SKIPPED_DIRS = {"report", "weights"}  # and every Tune experiment folder: tune, tune-*


def kept(relative: Path) -> bool:
    parts = relative.parts[:-1]
    if any(p in SKIPPED_DIRS or p == "tune" or p.startswith("tune-") for p in parts):
        return False
    return relative.suffix in KEPT


def collect(run: Path, target: Path) -> int:
    if not (run / "state.json").is_file():
        raise SystemExit(f"{run} is not a run directory (no state.json)")
    wanted = {p.relative_to(run) for p in run.rglob("*") if p.is_file() and kept(p.relative_to(run))}
    if target.exists():
        for old in [p for p in target.rglob("*") if p.is_file() and p.relative_to(target) not in wanted]:
            old.unlink()
    for relative in sorted(wanted):
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run / relative, target / relative)
    return len(wanted)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    run, name = Path(sys.argv[1]), sys.argv[2]
    count = collect(run, Path(__file__).resolve().parent / name)
    print(f"{count} files from {run} in docs/study/{name}")
