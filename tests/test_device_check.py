"""benchmarks/device_check.py keeps working: on this CPU with tiny models and one timed step it
measures every variant, packs two trials, prints its table and writes its JSON (seconds)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_check_runs_on_the_cpu_path_and_writes_its_figures(tmp_path):
    out = tmp_path / "device-check.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--out", str(out), "--steps", "1",
               "--families", "bert", "gpt2", "--no-minilm"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["device"].startswith("CPU") and [row["model"] for row in figures["models"]] == ["bert", "gpt2"]
    for row in figures["models"]:
        assert all(row[key] > 0 for key in ("fp32_step_s", "bf16_step_s", "hf_peft_step_s"))
    assert len(figures["packing"]["packed_steps_per_s"]) == 2 and figures["packing"]["alone_steps_per_s"] > 0
    assert "| bert |" in result.stdout and "packing (bert)" in result.stdout
