"""An MLflow outage is bounded: one retry budget, then a local fallback and `msclr runs sync`.

Budget. `tracking.retry_budget_s` bounds how long a run waits out an outage of the tracking
server: from the first failed request of the outage (by rank 0's MetricLogger or by the
driver) until then + budget, everyone retries; a request that succeeds ends the outage.
Rank 0 never blocks training on MLflow (its logger retries in the background) and hands
the start of an unfinished outage to the driver with its return value, so the driver's
end-of-run requests only get what is left of the same budget. MLflow's own HTTP retries,
which hold a single request for minutes, are switched off in the driver and the workers
(`tracking_env`, passed to the workers in their runtime_env); a value the user set wins.

Fallback. When the budget is spent the trained state is already safe in the checkpoint;
the driver writes what it still had to log (the final encoder, the plots, the epoch history,
the evaluation) into `<run directory>/mlflow-offline/` with a manifest, and stops with
TrackingUnavailable (exit 1), which names that directory and the one command that uploads
it into the run and closes the run once the server is back: `msclr runs sync NAME`.
A later `msclr pretrain` of that name refuses to start until it is synced.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path

from msclr_core.errors import ConfigError, MsclrError
from msclr_core.io_utils import atomic_write_text

FALLBACK_DIR = "mlflow-offline"
MANIFEST = "manifest.json"


class TrackingUnavailable(MsclrError):
    """The MLflow server stayed unreachable for the whole retry budget (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, *, fallback: Path | None = None, result=None, reason: str | None = None):
        super().__init__(message)
        self.fallback, self.result = fallback, result  # result: the PretrainResult, when training finished
        self.reason = reason or message  # what failed, without the advice


class TrackingBudget:
    """The outage clock of one run (see the module docstring)."""

    def __init__(self, budget_s: float, outage_since: float | None = None):
        self.budget_s, self.outage_since = budget_s, outage_since

    def failed(self) -> None:
        self.outage_since = self.outage_since or time.time()

    def succeeded(self) -> None:
        self.outage_since = None

    def join(self, outage_since: float | None) -> None:
        """Take over an outage another process (rank 0) saw start, if it started earlier."""
        if outage_since is not None:
            self.outage_since = min(self.outage_since or outage_since, outage_since)

    def waited(self) -> float:
        return 0.0 if self.outage_since is None else time.time() - self.outage_since

    def remaining(self) -> float:
        return max(0.0, self.budget_s - self.waited())

    def spent(self) -> bool:
        return self.outage_since is not None and self.waited() >= self.budget_s


def transient(err: BaseException) -> bool:
    """A failure an outage explains (no connection, timeout, 5xx), not a refused request."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500
    return isinstance(err, (OSError, requests.exceptions.RequestException))


class BudgetedClient:
    """An MlflowClient whose calls retry transient failures within the run's TrackingBudget.
    Once the budget is spent every call raises TrackingUnavailable at once (`offline`)."""

    def __init__(self, client, budget: TrackingBudget, uri: str):
        self._client, self.budget, self.uri = client, budget, uri
        self.offline = False
        self.last_error: BaseException | None = None

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(attr, args, kwargs)

    def call(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), retried within the budget: several requests made by MLflow's
        fluent API (mlflow.pytorch's model logging) as one call."""
        return self._call(fn, args, kwargs)

    def _call(self, fn, args, kwargs):
        delay = 1.0
        while not self.offline:
            try:
                out = fn(*args, **kwargs)
            except Exception as err:
                if not transient(err):
                    raise
                self.budget.failed()
                self.last_error = err
                if self.budget.spent():
                    self.offline = True
                    break
                time.sleep(min(delay, self.budget.remaining()))
                delay = min(delay * 2, 15.0)
                continue
            self.budget.succeeded()
            return out
        error = str(self.last_error or "").strip().splitlines()
        raise TrackingUnavailable(f"MLflow server {self.uri} unreachable for {self.budget.waited():.0f} s "
                                  f"(tracking.retry_budget_s={self.budget.budget_s:g}): {error[0][:200] if error else ''}")


def tracking_env(budget_s: float) -> dict[str, str]:
    """MLflow's HTTP settings for the driver and the workers: no retries of its own (msclr
    retries within the budget) and a request timeout that fits in the budget."""
    timeout = max(1, min(30, int(budget_s // 3)))
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout)),
    }


def tracking_client(uri: str, budget_s: float, budget: TrackingBudget | None = None) -> BudgetedClient:
    """The driver's client: MLflow's retries off for this process, msclr's budget on."""
    from mlflow.tracking import MlflowClient

    os.environ.update(tracking_env(budget_s))
    return BudgetedClient(MlflowClient(uri), budget or TrackingBudget(budget_s), uri)


# ---------------------------------------------------------------- what goes to MLflow at the end


def upload_pretrain(client, run_id: str, history: list[dict], files: list[Path], status: str = "FINISHED",
                    before_close=None) -> None:
    """The end of a pretraining run: its epoch history, artifacts and final state.
    `before_close(client, run_id)`: more to log while the run is still open (the driver logs
    the encoder as an MLflow model; `msclr runs sync` does not: encoder_q.pt is in the files)."""
    from .tracking import sync_history

    sync_history(client, run_id, history)
    for f in files:
        client.log_artifact(run_id, str(f))
    if before_close is not None:
        before_close(client, run_id)
    client.set_terminated(run_id, status)


def upload_evaluation(client, record: dict, files_dir: Path) -> str:
    """An evaluation run from its record (name, experiment, parent_run_id, run_id or None,
    tags, params, metrics [[key, value, step]], files): created if needed, then FINISHED."""
    from mlflow.entities import Metric

    from .tracking import copy_final_metrics, get_or_create_run, log_params, log_table

    run_id = record.get("run_id") or get_or_create_run(
        client, record["experiment"], record["name"], parent_run_id=record.get("parent_run_id"), tags=record["tags"])[0]
    for key, value in record["tags"].items():
        client.set_tag(run_id, key, value)
    log_params(client, run_id, record["params"])
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), int(ts[0]) if ts else now, int(step)) for k, v, step, *ts in record["metrics"]]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for name in record["files"]:
        client.log_artifact(run_id, str(files_dir / name))
    if "results.csv" in record["files"]:  # results.csv as a table the MLflow UI renders
        log_table(client, run_id, results_view(files_dir / "results.csv"), RESULTS_TABLE)
    if record.get("parent_run_id"):  # the run that was evaluated: its final accuracies beside its params
        copy_final_metrics(client, record["parent_run_id"], record["metrics"])
    client.set_terminated(run_id, "FINISHED")
    return run_id


RESULTS_TABLE = "results_table.json"  # an evaluation run's results as an MLflow table (mlflow.load_table)
RESULTS_COLUMNS = ("model", "convention", "linear_top1", "linear_top5", "knn_top1", "probe", "collapsed")


def results_view(results_csv: Path):
    """One row per model and convention of an evaluation's results.csv: RESULTS_COLUMNS."""
    import pandas as pd

    table = pd.read_csv(results_csv)
    return table[[c for c in RESULTS_COLUMNS if c in table.columns]]


# ---------------------------------------------------------------- the fallback directory


def default_fallback(name: str) -> Path:
    """Where the fallback of run `name` is when ray.storage_path is the default."""
    from .tracking import msclr_home

    return msclr_home() / "ray" / name / FALLBACK_DIR


def fallback_dir(run_dir: str, name: str) -> Path:
    """Under the Ray run directory; for object-store storage, under MSCLR_HOME/offline."""
    from .tracking import msclr_home

    return msclr_home() / "offline" / name if "://" in run_dir else Path(run_dir) / FALLBACK_DIR


def sync_command(name: str, fallback: Path) -> str:
    extra = "" if fallback == default_fallback(name) else f" --dir {shlex.quote(str(fallback))}"
    return f"msclr runs sync {shlex.quote(name)}{extra}"


def read_manifest(fallback: Path) -> dict | None:
    try:
        return json.loads((fallback / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{fallback / MANIFEST}: unreadable fallback manifest ({err})") from None


def _update_manifest(fallback: Path, run: dict, **part) -> None:
    manifest = read_manifest(fallback) or {"format": "msclr-mlflow-offline", "version": 1, **run, "evaluations": []}
    manifest.update(part)
    atomic_write_text(fallback / MANIFEST, json.dumps(manifest, indent=1))


def save_pretrain(fallback: Path, run: dict, run_id: str, history: list[dict], files: list[Path], status: str) -> None:
    """Keep the end of pretraining run `run_id` for `msclr runs sync`. `run`: run_name,
    experiment, tracking_uri (the URI given explicitly, None for the local server)."""
    d = fallback / "pretrain"
    d.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, d / f.name)
    atomic_write_text(d / "history.json", json.dumps(history))
    _update_manifest(fallback, run, pretrain={"run_id": run_id, "status": status,
                                              "files": [f.name for f in files]})  # fmt: skip


def save_evaluation(fallback: Path, run: dict, record: dict, files_dir: Path) -> None:
    manifest = read_manifest(fallback) or {}
    d = fallback / f"eval-{len(manifest.get('evaluations', []))}"
    d.mkdir(parents=True, exist_ok=True)
    for name in record["files"]:
        shutil.copy2(files_dir / name, d / name)
    _update_manifest(fallback, run, evaluations=[*manifest.get("evaluations", []), {**record, "dir": d.name}])


def refuse_if_pending(run_dir: str, name: str) -> None:
    """A run with results still waiting in its fallback must be synced before it trains again."""
    fallback = fallback_dir(run_dir, name)
    if (fallback / MANIFEST).exists():
        raise ConfigError(f"run {name!r} has results from an MLflow outage waiting in {fallback}: upload them "
                          f"first with `{sync_command(name, fallback)}`")  # fmt: skip


def sync(name: str, directory: str | None = None, tracking_uri: str | None = None) -> dict:
    """`msclr runs sync NAME`: upload a fallback into its runs and close them, then remove it."""
    from mlflow.tracking import MlflowClient

    from .tracking import check_reachable, ensure_tracking_uri

    fallback = Path(directory) if directory else default_fallback(name)
    manifest = read_manifest(fallback)
    if manifest is None:
        raise ConfigError(f"no results of run {name!r} waiting in {fallback} (nothing to sync; --dir names another "
                          "fallback directory)")  # fmt: skip
    if manifest.get("run_name") != name:
        raise ConfigError(f"{fallback / MANIFEST} holds run {manifest.get('run_name')!r}, not {name!r}")
    uri = ensure_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or manifest.get("tracking_uri"),
                              quiet=True)  # fmt: skip
    check_reachable(uri)
    client = MlflowClient(uri)
    done = []
    pre = manifest.get("pretrain")
    if pre:
        history = json.loads((fallback / "pretrain" / "history.json").read_text())
        upload_pretrain(client, pre["run_id"], history, [fallback / "pretrain" / f for f in pre["files"]], pre["status"])
        done.append(f"{name} ({pre['run_id']}): {len(history)} epochs, {', '.join(pre['files'])}, {pre['status']}")
    for record in manifest.get("evaluations", []):
        run_id = upload_evaluation(client, {**record, "parent_run_id": record.get("parent_run_id")}, fallback / record["dir"])
        done.append(f"{record['name']} ({run_id}): {len(record['metrics'])} metrics, {', '.join(record['files'])}")
    shutil.rmtree(fallback)
    return {"run_name": name, "tracking_uri": uri, "uploaded": done}
