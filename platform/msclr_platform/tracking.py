"""MLflow tracking: the local server, run lookup by name, and small logging helpers.

All writes go through one `mlflow server` (sqlite backend) over HTTP: workers chdir,
so relative sqlite paths would scatter databases, and concurrent sqlite writers lock.
When MLFLOW_TRACKING_URI is unset, msclr starts (or reuses) a server on 127.0.0.1 whose
database and artifacts live under one project directory (`msclr_home()`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import subprocess
import threading
import time
from pathlib import Path

# The local server (start, reuse, stop, health) lives in mlflow_server; re-exported here.
from .mlflow_server import (  # noqa: F401
    check_reachable,
    ensure_tracking_uri,
    msclr_home,
    server_healthy,
    server_root,
    start_server,
    stop_server,
)

RUN_NAME_TAG = "msclr.run_name"  # resume-by-name: one MLflow run per msclr run name


def _name_filter(name: str) -> str:
    """An MLflow filter string that matches the runs tagged `name`, and maybe more.

    MLflow's filter grammar has no escapes: a quoted value is taken between its quotes as
    it stands. So the name is quoted with a quote it does not contain, and the filter is
    parsed back with MLflow's own parser to prove it says exactly `name`. A name that
    holds both quotes (or that the parser reads otherwise) becomes a LIKE pattern with
    `_` (any one character) for each quote and backslash: a superset, filtered exactly
    by the caller. `%` and `_` in a name only widen a LIKE, never an `=`."""
    try:
        from mlflow.utils.search_utils import SearchUtils
    except ImportError:  # an MLflow that moved its parser: the LIKE superset is always right
        SearchUtils = None  # noqa: N806

    for quote in ("'", '"') if SearchUtils is not None else ():
        candidate = f"tags.`{RUN_NAME_TAG}` = {quote}{name}{quote}"
        try:
            (clause,) = SearchUtils.parse_search_filter(candidate)
        except Exception:  # noqa: BLE001 - MlflowException or a parser error: not this quoting
            continue
        if (clause.get("key"), clause.get("comparator"), clause.get("value")) == (RUN_NAME_TAG, "=", name):
            return candidate
    pattern = "".join("_" if c in "'\"\\" else c for c in name)
    return f"tags.`{RUN_NAME_TAG}` LIKE '{pattern}'"


def find_runs_by_name(client, experiment_ids: list[str], name: str, max_results: int | None = None) -> list:
    """The runs of these experiments tagged with msclr run name `name` (newest first), at most
    `max_results`. The one place a run name reaches an MLflow filter: any name is safe."""
    found, token, where = [], None, _name_filter(name)
    while max_results is None or len(found) < max_results:
        page = client.search_runs(experiment_ids, filter_string=where, max_results=1000, page_token=token)
        found += [run for run in page if run.data.tags.get(RUN_NAME_TAG) == name]
        token = page.token
        if not token:
            break
    return found if max_results is None else found[:max_results]


def get_or_create_run(client, experiment: str, run_name: str, *, parent_run_id: str | None = None, tags=None):
    """Return (run_id, resumed): the run tagged with this msclr run name, or a new one."""
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    found = find_runs_by_name(client, [exp_id], run_name, max_results=1)
    if found:
        return found[0].info.run_id, True
    all_tags = {**context_tags(), RUN_NAME_TAG: run_name, **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


@functools.lru_cache(maxsize=1)
def _context_tags() -> tuple:
    from mlflow.tracking.context.registry import resolve_tags

    tags = dict(resolve_tags())
    if "mlflow.source.git.commit" not in tags:  # the entry point is not in a checkout (-c, a console script)
        commit = git_commit()  # the checkout msclr runs from, if it is one
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = commit
    return tuple(tags.items())


def context_tags() -> dict:
    """MLflow's own context tags (what `mlflow.start_run` would set, the UI's Source, User and
    Git commit columns): mlflow.source.name/type, mlflow.user, mlflow.source.git.commit when
    msclr runs from a git checkout. The same for the whole process: resolved once."""
    return dict(_context_tags())


def logged_steps(client, run_id: str, key: str) -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def latest_values(client, run_id: str, key: str) -> dict[int, tuple[int, float]]:
    """step -> (timestamp, value) of the entry MLflow shows for that step: its latest one.

    MLflow keeps every value logged for a step; a run that replays an epoch (a restore,
    a resume) logs it again later, so the latest entry is the run that continued."""
    out: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in out or m.timestamp >= out[m.step][0]:
            out[m.step] = (m.timestamp, m.value)
    return out


def changed_metrics(batch: list, latest: dict[str, dict[int, tuple[int, float]]]) -> list:
    """The metrics of `batch` that the run lacks, or shows with another value at that step.

    A changed value is logged again with a timestamp after the entry it replaces, so the
    latest entry (what MLflow shows) is always the run that continues; an equal value (an
    exact replay) is not logged twice."""
    from mlflow.entities import Metric

    out = []
    for m in batch:
        seen = latest.get(m.key, {}).get(m.step)
        if seen is None:
            out.append(m)
        elif not (seen[1] == m.value or (math.isnan(seen[1]) and math.isnan(m.value))):
            out.append(Metric(m.key, m.value, max(m.timestamp, seen[0] + 1), m.step))
    return out


def log_params(client, run_id: str, params: dict) -> None:
    """Log params once (MLflow params are immutable): skip keys the run already has."""
    have = client.get_run(run_id).data.params
    from mlflow.entities import Param

    todo = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in have]
    for i in range(0, len(todo), 100):
        client.log_batch(run_id, params=todo[i : i + 100])


# Config keys that describe the machine a run ran on, not the experiment: tags `msclr.<key>`.
MACHINE_KEYS = ("tracking.tracking_uri", "data.path", "ray.address", "ray.storage_path")
# The evaluated encoder's final accuracies (`<key>.<convention>`, `<key>.ensemble`): its
# pretraining run shows them too, so the runs table compares parameters with results.
FINAL_METRICS = ("linear_top1", "knn_top1")


def log_config_params(client, run_id: str, flat: dict) -> None:
    """A flattened config: the hyper-parameters as params, the machine facts (MACHINE_KEYS)
    as tags `msclr.<key>` (a tag may change: a run resumed on another machine says so)."""
    from mlflow.entities import RunTag

    log_params(client, run_id, {k: v for k, v in flat.items() if k not in MACHINE_KEYS})
    tags = [RunTag(f"msclr.{k}", str(flat[k])) for k in MACHINE_KEYS if flat.get(k) is not None]
    if tags:
        client.log_batch(run_id, tags=tags)


def copy_final_metrics(client, run_id: str, metrics: list) -> None:
    """Log the FINAL_METRICS among an evaluation's metrics ([key, value, step], the evaluated
    encoder's unprefixed ones) on run_id, the run that was evaluated."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    final = [Metric(k, float(v), int(ts[0]) if ts else now, int(step)) for k, v, step, *ts in metrics
             if k.split(".", 1)[0] in FINAL_METRICS]
    if final:
        client.log_batch(run_id, metrics=final)


def eval_run_name(name: str) -> str:
    """The evaluation run of run `name`: the distinguishing part first, so nested rows in the
    MLflow runs table tell the evaluation from its pretraining run at a glance."""
    return f"eval · {name}"


def metric_key(name: str) -> str:
    """MLflow metric names allow [A-Za-z0-9_.\\-/ :]: 'ntu-rgb+d' -> 'ntu-rgb_d', 'a|b' -> 'a:b'."""
    return re.sub(r"[^A-Za-z0-9_.\-/ :]", "_", name.replace("|", ":"))


def dataset_digest(ds) -> str:
    """Digest from the manifest and the array files' sizes/mtimes: never hash a memmap."""
    h = hashlib.sha256((Path(ds.root) / "manifest.json").read_bytes())
    for f in sorted(Path(ds.root).glob("*.npy")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def log_dataset(client, run_id: str, source: str, ds) -> None:
    """The training dataset as the run's MLflow input (context "pretrain"): name, source, digest."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    from mlflow.exceptions import RestException

    table = pd.DataFrame({"sample": list(ds.sample_names), "label": np.asarray(ds.labels)})
    dataset = mlflow.data.from_pandas(table, source=source, name=ds.name, digest=dataset_digest(ds))
    inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "pretrain")])]
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except RestException as err:
            # Runs that log the same new dataset at once (a sweep's concurrent trials) race on its
            # insert: one wins, the others fail on the unique key. Retried, the server finds the
            # dataset and only links it to the run.
            if attempt == 2 or not re.search(r"unique constraint|duplicate", str(err), re.IGNORECASE):
                raise
            time.sleep(0.2 * (attempt + 1))


def log_table(client, run_id: str, table, artifact_file: str) -> None:
    """A DataFrame as an MLflow table of the run (the artifact view renders it, mlflow.load_table
    reads it): what MlflowClient.log_table writes, except that logging it again replaces the
    table instead of appending to it, so a retried upload or a re-evaluation shows each row once."""
    import json
    import tempfile

    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    table = table.map(lambda v: str(v) if isinstance(v, (dict, list, tuple, set)) else v)  # JSON cells
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / Path(artifact_file).name
        table.to_json(local, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(local), artifact_path=str(Path(artifact_file).parent).strip(".") or None)
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))


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
    """Make the run show `history` (rows with an "epoch" key); return how many metrics were logged.

    The checkpoint's history is the durable copy of every epoch's metrics, and it is the
    run that continues: whatever the worker could not deliver (server down at the end,
    worker killed with a backlog) is sent from here, an epoch the run shows with other
    values (replayed after a restore or a resume) is logged again later, so that its
    latest value is this history's, and nothing equal is sent twice."""
    ts = int(time.time() * 1000)
    batch = [m for row in history for m in epoch_metrics(row, row["epoch"], ts)]
    latest = {key: latest_values(client, run_id, key) for key in sorted({m.key for m in batch})}
    todo = changed_metrics(batch, latest)
    for i in range(0, len(todo), 1000):  # MLflow's log_batch limit
        client.log_batch(run_id, metrics=todo[i : i + 1000])
    return len(todo)


class MetricLogger:
    """Per-epoch metrics from rank 0 to the tracking server, without ever blocking training.

    `log` only queues; a background thread sends one epoch per `log_batch`. While the server
    is unreachable (restarting, network) the backlog stays in memory and the thread retries
    with backoff, so a restart loses nothing and training never waits on MLflow. An epoch
    the run already shows with the same values (an exact replay after a restore) is not sent
    again; one it shows with other values is sent again, later, so that MLflow's latest value
    is the run that continues (changed_metrics). A batch whose reply was lost is re-sent
    unchanged (same timestamps), which the server de-duplicates.

    `close(timeout_s)` waits for the backlog at the end of training, but never longer than
    the outage in progress may still last: `retry_budget_s` from its first failed send
    (`outage_since`, which the driver takes over: one budget for the whole run).

    This loop replaces MLflow's own HTTP retries, which would hold one request for minutes:
    construct the logger where MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 (the train worker sets it).
    """

    def __init__(self, tracking_uri: str, run_id: str, retry_s: float = 1.0, max_retry_s: float = 15.0,
                 retry_budget_s: float = math.inf):  # fmt: skip
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.run_id = run_id
        self.retry_s, self.max_retry_s, self.retry_budget_s = retry_s, max_retry_s, retry_budget_s
        self.failures = 0  # failed send attempts (what a server outage costs: retries, not data)
        self.outage_since: float | None = None  # wall time of the first failed send of the outage in progress
        self._pending: list[tuple[int, list]] = []  # (step, metrics), oldest first
        self._latest: dict[str, dict[int, tuple[int, float]]] = {}  # key -> step -> (timestamp, value) shown
        self._closing = self._abandoned = False
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

    def budget_spent(self) -> bool:
        since = self.outage_since
        return since is not None and time.time() - since >= self.retry_budget_s

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait for the backlog to reach the server: True if it did. Gives up (and stops the
        sender, so nothing arrives after the driver took over) when the outage in progress
        has used the retry budget, or after timeout_s."""
        deadline = time.monotonic() + (math.inf if timeout_s is None else timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._pending:
                if time.monotonic() >= deadline or self.budget_spent():
                    self._abandoned = True
                    self._cond.notify_all()
                    return False
                self._cond.wait(timeout=0.5)
            return True

    def _send_loop(self) -> None:
        delay = self.retry_s
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing or self._abandoned)
                if self._abandoned or not self._pending:
                    return
                step, batch = self._pending[0]
            try:
                self._send(batch)
            except Exception:  # noqa: BLE001 - server unreachable: keep the backlog, retry later
                with self._cond:
                    self.failures += 1
                    self.outage_since = self.outage_since or time.time()
                    self._cond.notify_all()
                time.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            delay = self.retry_s
            with self._cond:
                self.outage_since = None
                self._pending.pop(0)
                self._cond.notify_all()

    def _send(self, batch: list) -> None:
        for key in sorted({m.key for m in batch} - self._latest.keys()):
            self._latest[key] = latest_values(self.client, self.run_id, key)
        todo = changed_metrics(batch, self._latest)
        if todo:
            self.client.log_batch(self.run_id, metrics=todo)
        for m in todo:
            self._latest[m.key][m.step] = (m.timestamp, m.value)
