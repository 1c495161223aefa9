"""Run the whole study in order (docs/study.md).

Resumable: run it again after an interruption and it goes on where it stopped (every step is a
`peft-search` command that never retrains a recorded trial).

    .venv/bin/python docs/study/pipeline.py --data-dir ../shared/data/glue --storage runs

1. the staged search (jobs/study-minilm-cpu.yaml): run, or resume its run under --storage;
2. the joint (TPE) and random searches with as many designs as the staged search trained: their
   `joint.trials` must equal that count (the script stops and says so when it does not);
3. each search's discovered design to docs/study/designs/staged.json, joint.json and random.json;
4. the final evaluation of the staged run with docs/study/final.yaml;
5. after each step, the run's committed part to docs/study/<name> (collect.py), its report to
   docs/study/reports/<name>/ (the EDF plots docs/study.md shows) and the tables of docs/study.md
   (tables.py --write).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

STUDY = Path(__file__).resolve().parent
ROOT = STUDY.parent.parent
JOBS = {"staged": "jobs/study-minilm-cpu.yaml", "joint": "jobs/study-minilm-cpu-joint.yaml",
        "random": "jobs/study-minilm-cpu-random.yaml"}
CLI = [sys.executable, "-m", "peft_search.cli"]


def say(line: str) -> None:
    print(f"study: {line}", flush=True)


def run_dir(storage: Path, name: str) -> Path | None:
    """The newest run of the job `name` under storage (its directory is NAME-YYYYMMDD-HHMMSS)."""
    spec_name = yaml.safe_load((ROOT / JOBS[name]).read_text())["name"]
    runs = sorted(p for p in storage.glob(f"{spec_name}-2*") if (p / "state.json").is_file())
    return runs[-1] if runs else None


def state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def command(*args: str) -> None:
    say(" ".join(["peft-search", *args]))
    subprocess.run([*CLI, *args], cwd=ROOT, check=True)


def search(name: str, storage: Path, data_dir: str) -> Path:
    """Run the search `name` to its end (or resume it); its run directory."""
    run = run_dir(storage, name)
    if run is None:
        command("run", JOBS[name], "--data-dir", data_dir, "--storage", str(storage))
        run = run_dir(storage, name)
    elif state(run)["status"] != "finished":
        command("resume", str(run))
    collect(run, name)
    return run


def collect(run: Path, name: str) -> None:
    """The run's committed part, its report (EDF plots per stage; rendered from that part), the tables."""
    subprocess.run([sys.executable, str(STUDY / "collect.py"), str(run), name], cwd=ROOT, check=True)
    subprocess.run([*CLI, "report", f"docs/study/{name}", "--out", f"docs/study/reports/{name}"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, str(STUDY / "tables.py"), "--write"], cwd=ROOT, check=True)


def write_design(run: Path, name: str) -> None:
    design = state(run)["discovered"]["design"]
    (STUDY / "designs").mkdir(exist_ok=True)
    (STUDY / "designs" / f"{name}.json").write_text(json.dumps(design, indent=2, sort_keys=True) + "\n")
    say(f"{name}: discovered design in docs/study/designs/{name}.json")


def designs_trained(run: Path) -> int:
    """Designs the staged search trained: its trial records over tasks x seeds."""
    spec = yaml.safe_load((run / "spec.yaml").read_text())
    records = len(list(run.glob("stages/*/trials/*.json")))
    return records // (len(spec["tasks"]) * len(spec["seeds"]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the GLUE files, e.g. ../shared/data/glue")
    parser.add_argument("--storage", default="runs", help="where the study's runs are kept (default: runs)")
    args = parser.parse_args(argv)
    storage = Path(args.storage).resolve()
    staged = search("staged", storage, args.data_dir)
    write_design(staged, "staged")
    count = designs_trained(staged)
    for name in ("joint", "random"):
        planned = yaml.safe_load((ROOT / JOBS[name]).read_text())["joint"]["trials"]
        if planned != count:
            say(f"the staged search trained {count} designs: set joint.trials: {count} in {JOBS[name]} (it says {planned})")
            return 1
    for name in ("joint", "random"):
        write_design(search(name, storage, args.data_dir), name)
    command("evaluate", str(staged), "--final", "docs/study/final.yaml")
    collect(staged, "staged")
    say("done: docs/study.md's tables are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
