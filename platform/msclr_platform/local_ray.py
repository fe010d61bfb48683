"""A private local Ray runtime on 127.0.0.1 that every one of its processes can find.

`ray.init(address="local")` starts a fresh head node, but Ray's own helper actors look
the cluster up again later without being told where it is: Train V2's
PlacementGroupCleaner calls the State API with no address, which reads RAY_ADDRESS,
then /tmp/ray/ray_current_cluster (written by the last `ray start` on the machine,
possibly long dead), then greps for gcs_server processes (and refuses if it finds
several). With a stale file or a second cluster on the machine the cleaner's thread dies
with "Timed out while waiting for GCS", and placement groups of early-stopped Tune
trials are never freed: the next trial waits forever.

So we choose the GCS port ourselves and export RAY_ADDRESS before starting: the raylet
and every worker inherit it and find this cluster, whatever else runs on the machine.
"""

from __future__ import annotations

import os
import socket

_exported: str | None = None  # the RAY_ADDRESS we set for our own runtime (not a user's)


def user_ray_address() -> str | None:
    """RAY_ADDRESS as the user set it (ignoring the one we exported for our runtime)."""
    address = os.environ.get("RAY_ADDRESS")
    return address if address and address != _exported else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None, env_vars: dict | None = None, **kwargs) -> str:
    """Start a new local Ray runtime bound to loopback; return its GCS address."""
    import ray

    global _exported
    port = _free_port()
    _exported = f"127.0.0.1:{port}"
    os.environ.update({"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": _exported, **(env_vars or {})})
    ray.init(
        address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
        include_dashboard=True, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=True,
        **kwargs,
    )  # fmt: skip
    return _exported
