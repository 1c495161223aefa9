"""What happens before a run exists and when it ends early: the run directory's place, the plan the
run starts from, the state of a run that fails, what a dry run cannot check offline, resources of a
local Ray, and the temp directories Ray's dashboard leaves. None of these tests starts Ray."""

import codecs
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import needs_minilm
from peft_search.cli import main
from peft_search.errors import InputError
from peft_search.search.spec import SearchSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "tests" / "specs" / "BASE.yaml").read_text())


def write_job(directory: Path, name: str = "job.yaml", **changes) -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump({**BASE, **changes}, sort_keys=False))
    return path


@pytest.mark.parametrize("stem", ["../escape", "my job", "...", "-rf", "a..b"])
def test_a_run_directory_is_one_level_inside_the_storage(tmp_path, stem):
    from peft_search.search.controller import new_run_dir

    spec = SearchSpec.from_dict({**BASE, "name": None, "storage": str(tmp_path / "runs")})
    run_dir = new_run_dir(spec, f"{stem}.yaml")
    assert run_dir.parent == tmp_path / "runs" and ".." not in run_dir.name and " " not in run_dir.name


@needs_minilm
def test_the_run_starts_from_the_plan_preflight_checked_and_records_why_it_failed(tmp_path, monkeypatch):
    from peft_search import ray_session
    from peft_search.search.controller import Controller, new_run_dir
    from peft_search.search.preflight import preflight
    from peft_search.search.stage.plan import plan_path, read_plan

    checked = preflight(write_job(tmp_path), storage=str(tmp_path / "runs"))
    assert checked.first_plan.num_trials == 3 * 4 and checked.unchecked == ()
    controller = Controller.create(checked.spec, new_run_dir(checked.spec, "job.yaml"), first_plan=checked.first_plan)
    assert read_plan(plan_path(controller.run_dir, 0)) == checked.first_plan

    def no_ray(address):
        raise RuntimeError("no Ray today")

    monkeypatch.setattr(ray_session, "init_ray", no_ray)
    # An error ends the run `failed`; Ctrl+C ends it `interrupted` (resumable, never decided).
    for error, status in ((RuntimeError, "failed"), (KeyboardInterrupt, "interrupted")):
        if error is KeyboardInterrupt:
            monkeypatch.setattr(ray_session, "init_ray", lambda address: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(error):
            controller.run()
        state = json.loads((controller.run_dir / "state.json").read_text())
        assert state["status"] == status and state["error"].startswith(error.__name__)
    assert "no Ray today" not in state["error"]  # the latest reason, not the first


@needs_minilm
def test_a_dry_run_lists_what_it_cannot_check_offline(tmp_path, capsys):
    job = write_job(tmp_path, backbone="some-org/a-model-nobody-cached", tasks=["sst2"], data={"source": "hub"})
    assert main(["run", str(job), "--storage", str(tmp_path / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not checked offline" in out
    assert "backbone some-org/a-model-nobody-cached: a Hub id not in the local cache" in out
    assert "tasks[0] sst2: read from the Hub (nyu-mll/glue)" in out
    assert not (tmp_path / "runs").exists()


@needs_minilm
def test_resources_are_checked_against_this_machine_only_when_ray_would_start_here(tmp_path, capsys):
    from peft_search.search.controller import Controller
    from peft_search.search.preflight import preflight

    job = write_job(tmp_path, resources={"cpus": 1000, "gpus": 0, "workers": 1})
    preflight(job, storage=str(tmp_path / "runs"), address="ray://cluster:10001")  # a cluster may have them
    with pytest.raises(InputError, match="resources.cpus: 1000 CPUs per trial, but this machine has"):
        preflight(job, storage=str(tmp_path / "runs"))
    # resume (no --address) refuses the run's own spec before Ray starts, and leaves its state alone
    run = tmp_path / "runs" / "old"
    Controller.create(load_spec(job), run)
    before = (run / "state.json").read_text()
    assert main(["resume", str(run)]) == 2
    assert "resources.cpus" in capsys.readouterr().err
    assert (run / "state.json").read_text() == before


def test_the_final_evaluations_own_resources_are_checked_too(tmp_path):
    from peft_search.search.preflight import preflight

    job = write_job(tmp_path, final={"resources": {"cpus": 1000}, "max_concurrent_trials": 2})
    preflight(job, storage=str(tmp_path / "runs"), address="ray://cluster:10001")
    with pytest.raises(InputError, match="final.resources.cpus: 1000 CPUs per trial, but this machine has"):
        preflight(job, storage=str(tmp_path / "runs"))
    spec = load_spec(write_job(tmp_path, final={"max_concurrent_trials": 2}))
    assert spec.final_resources == spec.resources and spec.final_max_concurrent_trials == 2
    spec = load_spec(write_job(tmp_path, final={"resources": {"cpus": 0.5}}))
    assert spec.final_resources.cpus == 0.5 and spec.final_max_concurrent_trials == spec.max_concurrent_trials


def test_job_files_are_utf8_or_what_their_byte_order_mark_says(tmp_path):
    text = yaml.safe_dump(BASE, sort_keys=False)
    for name, data in [("utf8.yaml", text.encode()), ("bom8.yaml", codecs.BOM_UTF8 + text.encode()),
                       ("utf16.yaml", text.encode("utf-16")), ("utf32.yaml", text.encode("utf-32"))]:
        (tmp_path / name).write_bytes(data)
        assert load_spec(tmp_path / name).name == "corpus"
    (tmp_path / "big.yaml").write_bytes(text.encode() + b"#" * (1 << 20))
    with pytest.raises(InputError, match="big.yaml: larger than 1 MiB"):
        load_spec(tmp_path / "big.yaml")


def test_merge_keys_may_override_but_a_key_may_not_repeat(tmp_path):
    job = tmp_path / "merge.yaml"
    text = yaml.safe_dump(BASE, sort_keys=False).replace("fidelity:\n", "fidelity: &f\n", 1)
    job.write_text(text + "final:\n  fidelity:\n    <<: *f\n    max_steps: 5\n")
    assert load_spec(job).final.fidelity.max_steps == 5
    job.write_text(job.read_text() + "    max_steps: 6\n")
    with pytest.raises(InputError, match=r"final.fidelity.max_steps: duplicate key 'max_steps' at lines \d+ and \d+"):
        load_spec(job)


def test_the_pymp_dirs_of_rays_dashboard_are_removed_at_exit(monkeypatch):
    """Ray's dashboard starts a multiprocessing forkserver whose socket lives in a `pymp-*` temp dir,
    and `ray.shutdown` kills the dashboard so that the directory stays. A child doing the same
    stands in for the dashboard here, and killing it for `ray.shutdown`."""
    pytest.importorskip("psutil")
    from peft_search import ray_session as connect

    code = (
        "import multiprocessing as mp, sys, time\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('forkserver').Process(target=time.sleep, args=(0,)); p.start(); p.join()\n"
        "    print('ready', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        found = connect.forkserver_dirs()
        assert len(found) == 1 and all(d.name.startswith("pymp-") for d in found)
        assert all(process.ppid() == child.pid for processes in found.values() for process in processes)
        monkeypatch.setattr(connect.ray, "shutdown", child.kill)  # as Ray ends its dashboard: no clean-up runs
        connect._stop_ray_and_clean_up()
        assert not any(d.exists() for d in found)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("final_tasks, field, message", [
    (["nosuchtask"], "final.tasks[0]", "nosuchtask"),
    (["sst2"], "final.tasks[0]", "not bundled"),  # the final evaluation reads the search's data source
    ([], "final.tasks", "empty list"),
])
def test_final_tasks_are_checked_like_the_search_tasks(tmp_path, capsys, final_tasks, field, message):
    job = write_job(tmp_path, final={"tasks": final_tasks})
    assert main(["run", str(job), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err and message in err
    assert not (tmp_path / "runs").exists()
