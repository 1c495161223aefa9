"""Multi-worker trials: the same per-worker loop (`loop.train_worker`) on a Ray Train `TorchTrainer`.

Ray is imported here only, lazily. Traps this module handles (seen with Ray 2.60):
- Ray 2.60 runs Train V2. Accelerate inside a Train worker picks up Ray's process group (gloo on
  CPU, DDP-wrapped model, sharded loader), so Ray's `prepare_model` is never called.
- On CPU every worker asks for half a CPU: on a 2-CPU machine, 2 workers plus the Tune trial that
  may host them fit, where whole CPUs would wait forever.
- The driver's environment does not reach the workers: everything they need travels in
  `train_loop_config` (the trial row, the queue, the save directory).
- With no Ray running, a local one is started (no dashboard).

Live reporting: rank 0 puts each epoch's metrics, its progress lines and, at the end, the outcome on
a `ray.util.queue.Queue`; `fit()` runs in a thread while the calling thread drains the queue and
calls `on_epoch`, so the caller sees epochs as they happen, in its own thread (where `ray.tune.report`
works when the caller is a Tune trial). Every rank also calls `ray.train.report` per epoch; inside a
Tune trial with no `on_epoch`, `TuneReportCallback` forwards those to Tune.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid

from peft_search.train.prepare import check_inputs
from peft_search.train.trial import TrialConfig

CPU_PER_WORKER = 0.5
POLL_S = 0.2


def _worker_main(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train

    from peft_search.errors import InputError
    from peft_search.train.loop import train_worker
    from peft_search.train.prepare import prepare

    config: TrialConfig = loop_config["config"]  # the object itself: Ray pickles it, validated once upstream
    queue = loop_config["queue"]
    rank = ray.train.get_context().get_world_rank()

    def emit(metrics: dict) -> None:
        if rank == 0:
            queue.put({"kind": "epoch", "metrics": metrics})
        ray.train.report(metrics)

    def log(line: str) -> None:
        if rank == 0:
            queue.put({"kind": "log", "line": line})

    try:
        prepared = prepare(config, log if loop_config["verbose"] else None)
        outcome = train_worker(config, prepared, emit=emit, log=log if loop_config["verbose"] else None,
                               save_dir=loop_config["save_dir"])
    except InputError as error:  # checked on the driver already; seen here only if a worker's view differs
        outcome = {"status": "failed", "error": f"worker {rank}: {error}"}
    if rank == 0:
        queue.put({"kind": "result", "outcome": outcome})


def _ensure_ray():
    import ray

    from peft_search.ray_session import init_local_ray_without_dashboard

    init_local_ray_without_dashboard()
    return ray


def run_on_ray(config, on_epoch=None, save_dir=None, log=None) -> dict:
    """Check the inputs here (InputError), then train on `config.workers` Ray Train workers."""
    data = check_inputs(config)  # also fills the tokenisation cache the workers then read
    if log is not None:
        log(f"data: {config.task}, {len(data.train):,} train / {len(data.validation):,} validation examples; "
            f"starting {config.workers} Ray Train workers")
    ray = _ensure_ray()
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    use_gpu = ray.cluster_resources().get("GPU", 0) >= config.workers
    callbacks = []
    if on_epoch is None:
        try:
            from ray.tune.integration.ray_train import TuneReportCallback

            callbacks.append(TuneReportCallback())
        except RuntimeError:
            pass  # not inside a Tune trial
    queue = Queue(actor_options={"num_cpus": 0})
    storage = tempfile.mkdtemp(prefix="peft-search-train-")
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"config": config, "queue": queue, "save_dir": save_dir, "verbose": log is not None},
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": CPU_PER_WORKER},
        ),
        # A fresh name per call: the search's records, not Ray Train's run directories, identify trials.
        run_config=RunConfig(name=f"trial-{uuid.uuid4().hex[:12]}", storage_path=storage, callbacks=callbacks),
    )
    box: dict = {}

    def fit():
        try:
            box["result"] = trainer.fit()
        except BaseException as error:  # noqa: BLE001 - reported as the trial's status below
            box["error"] = error

    thread = threading.Thread(target=fit, name=f"peft-search-trial-{config.design_id}", daemon=True)
    started = time.perf_counter()
    thread.start()
    outcome = None
    try:
        while True:
            try:
                item = queue.get(block=True, timeout=POLL_S)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    break
                continue
            if item["kind"] == "epoch" and on_epoch is not None:
                on_epoch(item["metrics"])
            elif item["kind"] == "log" and log is not None:
                log(item["line"])
            elif item["kind"] == "result":
                outcome = item["outcome"]
        thread.join()
    finally:
        queue.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    if outcome is None:  # a worker died or raised before rank 0 could hand back its outcome
        error = box.get("error")
        message = f"{type(error).__name__}: {error}" if error is not None else "the workers ended without a result"
        outcome = {"status": "oom" if "out of memory" in message.lower() else "failed", "error": message[:2000]}
    if log is not None:
        log(f"ray: {config.workers} workers done in {time.perf_counter() - started:.1f}s")
    return outcome
