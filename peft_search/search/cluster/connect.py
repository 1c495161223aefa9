"""Connecting to Ray: a cluster at an address, or Ray started in this process with its dashboard on
127.0.0.1 only (DESIGN.md section 4, "Local by default")."""

from __future__ import annotations

import socket

import ray

DASHBOARD_PORT = 8265


def init_ray(address: str | None) -> str | None:
    """Connect to `address`, or start Ray in-process with its dashboard on 127.0.0.1 only.

    Returns the dashboard URL when this process started it."""
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, log_to_driver=False)
        return None
    port = DASHBOARD_PORT if _port_is_free(DASHBOARD_PORT) else _free_port()
    if port != DASHBOARD_PORT:
        print(f"port {DASHBOARD_PORT} is taken (another search or Ray?); the dashboard uses {port}", flush=True)
    try:
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=False)
    except Exception as error:  # noqa: BLE001 - Ray raises a bare Exception when its dashboard cannot start
        if "dashboard" not in str(error):
            raise
        # Another Ray took the port between our check and its bind: start again on a free one.
        ray.shutdown()
        port = _free_port()
        print(f"the dashboard could not bind its port (another Ray?); it uses {port}", flush=True)
        context = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=False)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


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
