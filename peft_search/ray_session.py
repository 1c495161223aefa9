"""Starting Ray, in one place for every layer (docs/design.md, "Service rules"): a cluster at an
address, or Ray started in this process, with its dashboard on 127.0.0.1 only for a search
(`init_ray`) and without one for a standalone multi-worker trial (`train.distributed`). Imports
nothing of peft_search, like `atomic.py`.

Temp files: Ray's dashboard (a child of this process when Ray starts here) runs its modules through
a `multiprocessing` forkserver, whose listening socket lives in a `pymp-*` directory of the temp
dir. Ray ends the dashboard with a signal, so multiprocessing's own clean-up never runs and every
local start used to leave one such directory behind. At exit we stop Ray ourselves and, once the
processes that held them are gone, remove the `pymp-*` directories whose sockets our own
descendants held. A driver killed with SIGKILL still leaves its directory (nothing runs then): it
holds only a dead `listener-*` socket and is safe to delete.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
from pathlib import Path

import ray

DASHBOARD_PORT = 8265


def init_local_ray_without_dashboard() -> None:
    """Ray in this process for a multi-worker trial outside a search (`peft-search train --workers`):
    its progress comes back through a queue, so no dashboard and no worker logs. Always a local Ray
    (address="local"): a bare init would join whatever cluster `ray start` recorded."""
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)


def init_ray(address: str | None) -> str | None:
    """Connect to `address`, or start Ray in-process with its dashboard on 127.0.0.1 only.

    Without an address Ray always starts here (`address="local"`): a bare `ray.init()` would instead
    join whatever cluster `ray start` last recorded on this machine (/tmp/ray/ray_current_cluster)
    or RAY_ADDRESS names, silently dropping our dashboard settings, and run the search on resources
    preflight never checked. Returns the dashboard URL when this process started it."""
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    port = DASHBOARD_PORT if _port_is_free(DASHBOARD_PORT) else _free_port()
    if port != DASHBOARD_PORT:
        print(f"port {DASHBOARD_PORT} is taken (another search or Ray?); the dashboard uses {port}", flush=True)
    try:
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                           log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception when its dashboard cannot start
        if "dashboard" not in str(error):
            raise
        # Another Ray took the port between our check and its bind: start again on a free one.
        ray.shutdown()
        port = _free_port()
        print(f"the dashboard could not bind its port (another Ray?); it uses {port}", flush=True)
        context = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                           log_to_driver=False)
    atexit.register(_stop_ray_and_clean_up)  # runs before Ray's own atexit shutdown (registered earlier)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def forkserver_dirs() -> dict[Path, list]:
    """The `pymp-*` directories (multiprocessing's temp dirs) holding sockets of this process's
    descendants (Ray's dashboard forkserver among them), each with the psutil processes holding them."""
    import psutil  # a dependency of ray[default]

    temp = Path(tempfile.gettempdir()).resolve()
    found: dict[Path, list] = {}
    for process in psutil.Process().children(recursive=True):
        try:
            connections = process.net_connections(kind="unix")
        except psutil.Error:
            continue  # gone already, or not ours to inspect
        for connection in connections:
            path = Path(connection.laddr) if isinstance(connection.laddr, str) and connection.laddr else None
            if path is not None and path.parent.name.startswith("pymp-") and path.parent.parent == temp:
                found.setdefault(path.parent, []).append(process)
    return found


def _stop_ray_and_clean_up() -> None:
    import psutil

    owners = forkserver_dirs()  # while Ray's processes are still alive to be asked
    ray.shutdown()
    _, alive = psutil.wait_procs([p for processes in owners.values() for p in processes], timeout=3)
    for directory, processes in owners.items():
        if not any(p in alive for p in processes):  # never pull a directory from under a live process
            shutil.rmtree(directory, ignore_errors=True)


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
