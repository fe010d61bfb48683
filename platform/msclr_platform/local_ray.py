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

Loopback: `ray.init(_node_ip_address="127.0.0.1")` alone does not keep Ray on loopback.
Ray 2.60 rewrites a loopback node IP into the host's address unless it runs in
single-node mode (`ray_constants.ENABLE_RAY_CLUSTER`, false by default on macOS and
Windows, env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER), and then its GCS, raylet, workers and
agents listen on 0.0.0.0 / :: / the host IP. In single-node mode the node IP stays
127.0.0.1 and every one of them binds 127.0.0.1 (the C++ gRPC servers listen on
127.0.0.1 exactly when the node IP is 127.0.0.1). We switch it on for the ray.init call
of our private runtime only: a driver that later connects to a real cluster must still
report its real address.

Token auth: the runtime runs with RAY_AUTH_MODE=token (unless the user set the mode
explicitly), and msclr creates the token file itself, 0600 in a 0700 directory, instead
of letting Ray write a world-readable ~/.ray/auth_token.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path

from .localhost import free_port, private_file

_exported: str | None = None  # the RAY_ADDRESS we set for our own runtime (not a user's)


def user_ray_address() -> str | None:
    """RAY_ADDRESS as the user set it (ignoring the one we exported for our runtime)."""
    address = os.environ.get("RAY_ADDRESS")
    return address if address and address != _exported else None


def job_env_vars() -> dict:
    """The env_vars of the runtime env `ray job submit` gave this driver ({} outside a job)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job manager for the entrypoint
    try:
        return dict(((json.loads(raw) if raw else {}).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def token_path() -> Path | None:
    """The file Ray reads its auth token from (None when RAY_AUTH_TOKEN holds it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_token() -> Path | None:
    """Make sure the owner-only token of a new local runtime exists; return its file.

    `ray.init(address="local")` turns token auth on unless RAY_AUTH_MODE says otherwise
    (it sets the variable itself and refreshes its cached config: setting it here
    instead would leave this driver's config on "disabled"). A missing token file is
    created 0600 (its directory 0700 when we create it); an existing one of ours that
    others can read is tightened to 0600.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "token")
    if mode.lower() != "token":
        print(f"msclr: RAY_AUTH_MODE={mode}: the local Ray runtime runs without token auth", file=sys.stderr)
        return None
    path = token_path()
    if path is not None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_file(path, secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
    return path


@contextlib.contextmanager
def _single_node_mode():
    """Keep a loopback node IP as 127.0.0.1 during ray.init (see the module docstring)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def connect_ray(address: str, **kwargs) -> None:
    """ray.init(address=...) to an existing cluster. A loopback GCS (our own runtime, joined by
    a subprocess or a job's driver) is joined in single-node mode, else Ray rewrites the node IP
    to the host's address, where that runtime does not listen, and the driver waits forever."""
    import ray

    host = address.split("://")[-1].rsplit(":", 1)[0]
    loopback = host in ("127.0.0.1", "localhost", "[::1]", "::1")
    with _single_node_mode() if loopback else contextlib.nullcontext():
        ray.init(address=address, **kwargs)


def start_local_ray(num_cpus: int | None = None, env_vars: dict | None = None, **kwargs) -> str:
    """Start a new local Ray runtime bound to loopback, with token auth; return its GCS address."""
    import ray

    global _exported
    ensure_token()
    port = free_port()
    _exported = f"127.0.0.1:{port}"
    os.environ.update({"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": _exported, **(env_vars or {})})
    with _single_node_mode():
        ray.init(
            address="local", num_cpus=num_cpus, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1",
            include_dashboard=True, runtime_env={"env_vars": env_vars} if env_vars else None, log_to_driver=True,
            **kwargs,
        )  # fmt: skip
    return _exported
