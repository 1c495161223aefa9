"""A multi-node Ray cluster on this machine, for the `distributed` tests: `ray.cluster_utils.Cluster`
(Ray's own multi-node test utility: every node a real raylet with its own processes), its head
without CPUs so that no trial runs there. It is kept off the machine's "current cluster" file
(/tmp/ray/ray_current_cluster, which `Cluster` would write and delete): while it runs, a plain
`ray.init()` elsewhere on the machine must not find and join it, or lose it."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager

import pytest


@contextmanager
def local_ray_cluster(prefix: str, **head_node_args):
    """Yield (cluster, its temp dir); on exit shut down Ray in this process and the cluster."""
    import ray
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Ray's sockets live under its temp dir (a Unix socket path holds at most 107 bytes): a short one.
    temp_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    patch = pytest.MonkeyPatch()
    patch.setattr(ray._private.utils, "write_ray_address", lambda *args, **kwargs: None)
    patch.setattr(ray._common.utils, "reset_ray_address", lambda *args, **kwargs: None)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": temp_dir, **head_node_args})
        yield cluster, temp_dir
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        patch.undo()
        shutil.rmtree(temp_dir, ignore_errors=True)
