"""MLflow tracking: the local server, run lookup by name, and small logging helpers.

All writes go through one `mlflow server` (sqlite backend) over HTTP: workers chdir,
so relative sqlite paths would scatter databases, and concurrent sqlite writers lock.
When MLFLOW_TRACKING_URI is unset, msclr starts (or reuses) a server on 127.0.0.1 whose
database and artifacts live under one project directory (`msclr_home()`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
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
    # MLflow's job runner (GenAI scorers) is a dozen more processes that msclr never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, env=env)
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
    with contextlib.suppress(ProcessLookupError):  # the server's workers too, not just the launcher
        os.killpg(proc.pid, signal.SIGKILL)
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


def epoch_metrics(row: dict, step: int, timestamp_ms: int) -> list:
    """MLflow Metric entities for one epoch's stats (numbers only; the step is the epoch)."""
    from mlflow.entities import Metric

    return [
        Metric(k, float(v), timestamp_ms, step)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]


def sync_history(client, run_id: str, history: list[dict]) -> int:
    """Log the epochs of `history` (rows with an "epoch" key) that the run lacks; return how many.

    The checkpoint's history is the durable copy of every epoch's metrics: whatever the
    worker could not deliver (server down at the end, worker killed with a backlog) is
    sent from here, and never twice.
    """
    done = logged_steps(client, run_id, "loss")
    missing = [row for row in history if row["epoch"] not in done]
    ts = int(time.time() * 1000)
    for row in missing:
        client.log_batch(run_id, metrics=epoch_metrics(row, row["epoch"], ts))
    return len(missing)


class MetricLogger:
    """Per-epoch metrics from rank 0 to the tracking server, without ever blocking training.

    `log` only queues; a background thread sends one epoch per `log_batch`. While the server
    is unreachable (restarting, network) the backlog stays in memory and the thread retries
    with backoff, so a restart loses nothing and training never waits on MLflow. Nothing
    is logged twice: steps the run already has (epochs re-run after a restore) are skipped,
    and a batch whose reply was lost is re-sent unchanged (same timestamps), which the
    server de-duplicates. `close(timeout_s)` waits for the backlog at the end of training.

    This loop replaces MLflow's own HTTP retries, which would hold one request for minutes:
    construct the logger where MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 (the train worker sets it).
    """

    def __init__(self, tracking_uri: str, run_id: str, retry_s: float = 1.0, max_retry_s: float = 15.0):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.failures = 0  # failed send attempts (what a server outage costs: retries, not data)
        self._pending: list[tuple[int, list]] = []  # (step, metrics), oldest first
        self._done: set[int] | None = None  # steps the run has; read on first contact
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_loop, name="msclr-metrics", daemon=True)
        self._thread.start()

    def log(self, metrics: dict[str, float], step: int) -> None:
        batch = epoch_metrics(metrics, step, int(time.time() * 1000))
        with self._cond:
            self._pending.append((step, batch))
            self._cond.notify_all()

    def log_history(self, history: list[dict]) -> None:
        """Queue restored epochs too: a killed worker may have died with them unsent."""
        for row in history:
            self.log(row, step=row["epoch"])

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self, timeout_s: float = 60.0) -> bool:
        """Wait up to timeout_s for the backlog to reach the server; True if it did."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._pending, timeout=timeout_s)

    def _send_loop(self) -> None:
        delay = self.retry_s
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                step, batch = self._pending[0]
            try:
                self._send(step, batch)
            except Exception:  # noqa: BLE001 - server unreachable: keep the backlog, retry later
                self.failures += 1
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            delay = self.retry_s
            with self._cond:
                self._pending.pop(0)
                self._cond.notify_all()

    def _send(self, step: int, batch: list) -> None:
        if self._done is None:
            self._done = logged_steps(self.client, self.run_id, "loss")
        if step not in self._done:
            self.client.log_batch(self.run_id, metrics=batch)
            self._done.add(step)
