"""The staged search, by concern (docs/design.md, "Module map"):

- `spec/`      the job spec: models, YAML loading, error formatting (pure: space, pydantic, yaml)
- `storage/`   run storage: the run directory's layout, atomic writes, trial records, results and
               final.parquet; every file of a run goes through it (pyarrow)
- `trials.py`  the one path by which a trial runs: a `TrialRow`, its Tune trainable, its record
- `ray_tune.py` the one door to Ray Tune: `start_ray`, `run_experiment` (every experiment goes through it)
- `seeds.py`   seeds derived from the job's seed and what they are for
- `stage/`     one refinement stage: plan (pure), dispatch and racing (pure), Tune experiment,
               decision statistics (pure)
- `final/`     after the search: the final evaluation against the presets, and the export
- `cluster/`   what a local Ray could offer (preflight), and submitting a search as a Ray Job
- `controller.py`  runs a search: stage after stage, then the final evaluation
- `simulate.py` the job's search on N GPUs, simulated with the code above, and its rehearsal on Ray
- `status.py`  where a run stands, from its files (no Ray)

Imports space, train and ray (ray only where trials run); never report or cli.
"""
