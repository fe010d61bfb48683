"""The local MLflow server: one per tracking root (MSCLR_HOME/mlflow), reused, stoppable.

`start_server(root)` starts `mlflow server` on 127.0.0.1 with a sqlite database and
proxied artifacts under `root`, detached from the caller (its own session, so it
outlives the command that started it and serves the next one). Its state file
`root/server.json` holds uri, pid and port; a later start in the same root reuses the
server when that pid is alive, is this root's `mlflow server` (its command line names
this root's database) and answers /health, and otherwise starts a new one on the remembered port
(a free one if that port is taken). A lock file serialises concurrent starts.
`stop_server(root)` (`msclr ui --stop`) stops it and keeps the port for the next start.

Everything under `root` is the owner's only: directories 0700, the database, log and
state files 0600 (the server runs with umask 077, so the artifacts it writes are too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from msclr_core.errors import ConfigError, MsclrError
from msclr_core.io_utils import atomic_write_text

from .localhost import free_port, port_free, private_dir, private_file

STATE = "server.json"


def msclr_home() -> Path:
    """Project-level directory for runs, checkpoints and the tracking database."""
    return Path(os.environ.get("MSCLR_HOME", Path.cwd() / "msclr_runs")).resolve()


def server_root() -> Path:
    """Where the local server of this MSCLR_HOME keeps its database, artifacts and state."""
    return msclr_home() / "mlflow"


def server_healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def read_state(root: Path) -> dict:
    """The state file of `root` ({} when there is none or it is unreadable)."""
    try:
        state = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(root: Path, state: dict) -> None:
    atomic_write_text(root / STATE, json.dumps(state))
    os.chmod(root / STATE, 0o600)


def _server_process(root: Path, state: dict) -> psutil.Process | None:
    """The live process recorded in `state` if it is still this root's `mlflow server` (pid reuse safe)."""
    try:
        proc = psutil.Process(int(state["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by the process that started it
            return None
        cmd = proc.cmdline()
    except (KeyError, TypeError, ValueError, psutil.Error):
        return None
    db = f"sqlite:///{root / 'mlflow.db'}"
    return proc if "server" in cmd and db in cmd else None


def running_server(root: Path) -> dict | None:
    """The recorded server of `root` if it is alive, ours and healthy; else None."""
    state = read_state(root)
    if _server_process(root, state) is not None and server_healthy(state["uri"]):
        return state
    return None


@contextlib.contextmanager
def _locked(root: Path):
    """Hold `root`'s lock file: one start or stop at a time per root, across processes."""
    with open(private_file(root / "server.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _kill_group(pid: int, wait_s: float = 15.0) -> None:
    """SIGTERM the server's process group (launcher and its workers), SIGKILL what outlives wait_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when we are its parent
            if not _group_alive(pid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(p.info["status"] != psutil.STATUS_ZOMBIE for p in _group_members(pgid))


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pgid:
                members.append(p)
    return members


def start_server(root: Path, port: int | None = None, wait_s: float = 90.0) -> dict:
    """The MLflow server of `root`: the running one if healthy, else a new one on 127.0.0.1.

    Returns its state (uri, pid, port, root) plus "reused". With `port`, a new server
    uses that port, and a running one on another port is an error.
    """
    root = private_dir(Path(root).resolve())
    with _locked(root):
        state = read_state(root)
        proc = _server_process(root, state)
        if proc is not None and server_healthy(state["uri"]):
            if port and port != state["port"]:
                raise ConfigError(
                    f"the MLflow server of {root} already runs on port {state['port']}, not {port}: "
                    "stop it first (`msclr ui --stop`)"
                )
            return {**state, "reused": True}
        if proc is not None:  # ours but not answering: replace it
            _kill_group(proc.pid)
        remembered = state.get("port")
        if not port and isinstance(remembered, int) and port_free(remembered):
            port = remembered
        state = _launch(root, port or free_port(), wait_s)
        _write_state(root, state)
        return {**state, "reused": False}


def _launch(root: Path, port: int, wait_s: float) -> dict:
    db = private_file(root / "mlflow.db")  # an empty file is an empty sqlite database
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(private_dir(root / "artifacts")),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = root / "server.log"
    # MLflow's job runner (GenAI scorers) is a dozen more processes that msclr never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(private_file(log), "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env, umask=0o077
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if server_healthy(uri):
            return {"uri": uri, "pid": proc.pid, "port": port, "root": str(root)}
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    _kill_group(proc.pid, wait_s=5.0)
    tail = log.read_text(errors="replace")[-2000:]
    raise MsclrError(f"mlflow server did not start on {uri} (log: {log}):\n{tail}")


def stop_server(root: Path, wait_s: float = 15.0) -> dict | None:
    """Stop the recorded server of `root`; return its state, or None when none was running.

    The port stays in the state file, so the next start serves the same address.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        return None
    with _locked(root):
        state = read_state(root)
        proc = _server_process(root, state)
        if state.get("port"):
            _write_state(root, {"port": state["port"], "root": str(root)})
        if proc is None:
            return None
        _kill_group(proc.pid, wait_s)
        return state


def ensure_tracking_uri(
    explicit: str | None = None, *, start: bool = True, quiet: bool = False, port: int | None = None
) -> str:
    """The tracking URI to use: explicit > MLFLOW_TRACKING_URI > the local server (started if needed)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = server_root()
    if not start:
        info = running_server(root) if root.is_dir() else None
        if info is None:
            raise ConfigError("no MLflow server: set MLFLOW_TRACKING_URI or run `msclr ui`")
        return info["uri"]
    info = start_server(root, port=port)
    if not quiet and not info["reused"]:
        print(f"MLflow UI: {info['uri']}  (local server, data in {root})", file=sys.stderr)
    return info["uri"]


def check_reachable(uri: str) -> None:
    """Fail before any compute when the tracking server is unreachable."""
    if uri.startswith("http") and not server_healthy(uri, timeout=5.0):
        raise ConfigError(f"MLflow tracking server {uri} is unreachable (check MLFLOW_TRACKING_URI or start it)")
