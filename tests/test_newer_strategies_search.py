"""Issue 39 end to end, as a user runs it: a job that opens the design space to the newer strategies
(`strategies`) and races them in a strategy stage plans, runs on the local Ray, decides, and exports;
the exported method loads with `load_peft` and scores what the export says. MiniLM on the bundled
tweets, 3-step trials: about a minute."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from drivers import cli, write_job
from peft_search.search.final.export import evaluate_export
from tiny_search_run import needs_minilm_and_tweets

pytestmark = needs_minilm_and_tweets
STRATEGIES = ["lora", "dora", "ia3", "vera", "loha", "rslora"]


def test_a_search_over_the_newer_strategies_runs_races_and_exports(tmp_path):
    job = write_job(tmp_path, strategies=STRATEGIES, designs_per_choice=3, racing={"min_blocks": 2},
                    stages=[{"component": "strategy.G1", "candidates": ["dora", "ia3+vera", "loha+rslora"]}],
                    storage=str(tmp_path / "runs"))
    dry = cli("run", str(job), "--dry-run", timeout=300)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "strategies from lora, dora, ia3, vera, loha, rslora" in dry.stdout
    assert "stage 0's designs: each strategy's share of their trainable parameters: " in dry.stdout

    result = cli("run", str(job), timeout=500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    rows = pq.read_table(run / "results.parquet").to_pylist()
    assert rows and all(row["status"] == "finished" for row in rows)
    used = {strategy for row in rows for group in row["strategies"].split()
            for strategy in group.split(":")[1].split("+") if strategy != "-"}
    assert {"dora", "ia3", "vera", "loha", "rslora"} <= used <= set(STRATEGIES)  # the job's strategies only
    state = json.loads((run / "state.json").read_text())
    assert state["stages"][0]["decision"]["outcome"] in ("selected", "tie", "undecided")

    out = tmp_path / "export"
    exported = cli("export", str(run), "--out", str(out), timeout=300)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    entry = json.loads((out / "export.json").read_text())["tasks"]["tweets"]
    assert evaluate_export(Path(out), "tweets")["score"] == entry["score"]  # load_peft onto a fresh MiniLM
