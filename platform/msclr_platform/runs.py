"""Finding runs again: MLflow run ids by name, final checkpoints, the comparison table."""

from __future__ import annotations

from pathlib import Path

from msclr_core.errors import ConfigError

from .config import ExperimentConfig
from .tracking import ensure_tracking_uri, find_runs_by_name

KEY_METRICS = ["loss", "samples_per_s", "linear_top1", "knn_top1", "probe_knn_top1"]


def latest_checkpoint(cfg: ExperimentConfig) -> Path:
    from .train import CKPT_FILE, storage_path

    run_dir = Path(storage_path(cfg)) / cfg.name
    found = sorted(run_dir.glob(f"**/epoch-*/{CKPT_FILE}"), key=lambda p: p.parent.name)
    if not found:
        raise ConfigError(f"no checkpoint for run {cfg.name!r} under {run_dir}: run `msclr pretrain` first")
    return found[-1]


def final_state(cfg: ExperimentConfig) -> dict:
    from .train import load_state

    return load_state(latest_checkpoint(cfg))["model"]


def pretrain_run_id(cfg: ExperimentConfig) -> str | None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=True))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return None
    runs = find_runs_by_name(client, [exp.experiment_id], cfg.name, max_results=1)
    return runs[0].info.run_id if runs else None


def list_experiments(tracking_uri: str | None = None) -> list[dict]:
    """The server's experiments: [{"name", "experiment_id"}], by name."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ensure_tracking_uri(tracking_uri, quiet=True))
    found = [{"name": e.name, "experiment_id": e.experiment_id} for e in client.search_experiments()]
    return sorted(found, key=lambda e: e["name"])


def compare_runs(experiment: str, tracking_uri: str | None = None):
    """One row per run (indexed by run id): name, kind, parent, status, conventions, stream
    and key metrics. ConfigError when the server has no experiment of that name."""
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    uri = ensure_tracking_uri(tracking_uri, quiet=True)
    if MlflowClient(uri).get_experiment_by_name(experiment) is None:
        known = ", ".join(e["name"] for e in list_experiments(uri)) or "none"
        raise ConfigError(f"no MLflow experiment {experiment!r} at {uri} (experiments there: {known})")
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment], output_format="pandas")
    if df.empty:
        return pd.DataFrame()
    cols = {
        "tags.mlflow.runName": "run", "tags.msclr.kind": "kind", "status": "status",
        "tags.conventions": "conventions", "tags.stream": "stream", "tags.mlflow.parentRunId": "parent",
    }  # fmt: skip
    metric_cols = [c for c in df.columns if c.startswith("metrics.") and c.split(".", 1)[1].split(".")[0] in KEY_METRICS]
    out = df[[c for c in cols if c in df.columns] + metric_cols].rename(columns=cols)
    out.columns = [c.removeprefix("metrics.") for c in out.columns]
    out.index = pd.Index(df["run_id"], name="run_id")
    return out.round(4)
