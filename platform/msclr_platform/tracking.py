"""MLflow tracking: the local server, run lookup by name, and small logging helpers.

All writes go through one `mlflow server` (sqlite backend) over HTTP: workers chdir,
so relative sqlite paths would scatter databases, and concurrent sqlite writers lock.
When MLFLOW_TRACKING_URI is unset, msclr starts (or reuses) a server on 127.0.0.1 whose
database and artifacts live under one project directory (`msclr_home()`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from msclr_core.errors import ConfigError
from msclr_core.io_utils import atomic_write_text

RUN_NAME_TAG = "msclr.run_name"  # resume-by-name: one MLflow run per msclr run name


def msclr_home() -> Path:
    """Project-level directory for runs, checkpoints and the tracking database."""
    return Path(os.environ.get("MSCLR_HOME", Path.cwd() / "msclr_runs")).resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def start_server(root: Path, port: int | None = None, wait_s: float = 90.0) -> dict:
    """Start `mlflow server` on 127.0.0.1 detached from this process; return its info."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    db = root / "mlflow.db"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if server_healthy(uri):
            info = {"uri": uri, "pid": proc.pid, "port": port, "root": str(root)}
            atomic_write_text(root / "server.json", json.dumps(info))
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    tail = (root / "server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"mlflow server did not start on {uri} (log: {root / 'server.log'}):\n{tail}")


def ensure_tracking_uri(explicit: str | None = None, *, start: bool = True, quiet: bool = False) -> str:
    """The tracking URI to use: explicit > MLFLOW_TRACKING_URI > the local server (started if needed)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = msclr_home() / "mlflow"
    info_file = root / "server.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        if server_healthy(info["uri"]):
            return info["uri"]
    if not start:
        raise ConfigError("no MLflow server: set MLFLOW_TRACKING_URI or run `msclr ui`")
    info = start_server(root)
    if not quiet:
        print(f"MLflow UI: {info['uri']}  (local server, data in {root})", file=sys.stderr)
    return info["uri"]


def check_reachable(uri: str) -> None:
    """Fail before any compute when the tracking server is unreachable."""
    if uri.startswith("http") and not server_healthy(uri, timeout=5.0):
        raise ConfigError(f"MLflow tracking server {uri} is unreachable (check MLFLOW_TRACKING_URI or start it)")


def get_or_create_run(client, experiment: str, run_name: str, *, parent_run_id: str | None = None, tags=None):
    """Return (run_id, resumed): the run tagged with this msclr run name, or a new one."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    if found:
        return found[0].info.run_id, True
    all_tags = {RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


def logged_steps(client, run_id: str, key: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def log_params(client, run_id: str, params: dict) -> None:
    """Log params once (MLflow params are immutable): skip keys the run already has."""
    have = client.get_run(run_id).data.params
    from mlflow.entities import Param

    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(todo), 100):
        client.log_batch(run_id, params=todo[i : i + 100])


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MetricLogger:
    """Per-epoch metrics from rank 0, straight to the tracking server.

    If the server is unreachable (e.g. restarting), metrics are kept in memory and
    flushed with the next successful call, so a restart loses nothing. Steps already in
    the run (a resumed run re-running epochs after its last checkpoint) are not logged twice.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.pending: list = []
        self.failures = 0
        try:
            self.done = logged_steps(self.client, run_id, "loss")
        except Exception:  # noqa: BLE001 - server down at start: assume nothing logged
            self.done = set()

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step in self.done:
            return
        ts = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), ts, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.done.add(step)
        self.flush(raise_on_error=False)

    def flush(self, raise_on_error: bool = True) -> bool:
        while self.pending:
            batch = self.pending[:500]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception:  # noqa: BLE001 - keep locally, retry on the next call
                self.failures += 1
                if raise_on_error:
                    raise
                return False
            del self.pending[: len(batch)]
        return True
