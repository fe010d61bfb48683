"""One experiment end to end: pretrain on Ray Train, then evaluate, all tracked in MLflow.

    run_experiment(cfg) = run_pretrain(cfg) + run_evaluation(cfg, ...)

The MLflow pretraining run is found by its msclr run name (tag), so re-running the
same command resumes both the Ray run and the MLflow run. Evaluation runs are children
of their pretraining run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from msclr_core import __version__ as core_version
from msclr_core import evaluation as E
from msclr_core.errors import MsclrError

from . import plots
from .config import ExperimentConfig, flatten
from .tracking import check_reachable, ensure_tracking_uri, get_or_create_run, git_commit, log_params, sync_history


@dataclass
class PretrainResult:
    run_id: str
    checkpoint_dir: str
    history: list[dict]
    state: dict  # the final MSCLR state_dict (CPU tensors)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def dataset_digest(ds) -> str:
    """Digest from the manifest and the array files' sizes/mtimes: never hash a memmap."""
    root = Path(ds.root)
    h = hashlib.sha256((root / "manifest.json").read_bytes())
    for f in sorted(root.glob("*.npy")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def log_dataset(client, run_id: str, cfg: ExperimentConfig, ds) -> None:
    import mlflow
    import pandas as pd

    table = pd.DataFrame({"sample": list(ds.sample_names), "label": np.asarray(ds.labels)})
    dataset = mlflow.data.from_pandas(table, source=cfg.data.path, name=ds.name, digest=dataset_digest(ds))
    from mlflow.entities import DatasetInput, InputTag

    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "pretrain")])]
    )


def run_pretrain(cfg: ExperimentConfig, *, parent_run_id: str | None = None, quiet: bool = False) -> PretrainResult:
    import ray

    from .data import dataset_for
    from .train import CKPT_FILE, check_resources, init_ray, load_state, make_trainer, preflight

    uri = ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=quiet)
    check_reachable(uri)  # before any compute
    preflight(cfg)
    ds = dataset_for(cfg)
    client = _client(uri)
    tags = {
        "msclr.version": core_version, "git.commit": git_commit(), "msclr.kind": "pretrain",
        "conventions": ",".join(cfg.conventions), "stream": cfg.stream, "objective": cfg.method.objective,
    }  # fmt: skip
    run_id, resumed = get_or_create_run(client, cfg.tracking.experiment, cfg.name, parent_run_id=parent_run_id, tags=tags)
    if not quiet:
        print(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) at {uri}", flush=True)
    log_params(client, run_id, flatten(cfg.to_dict()))
    if resumed:  # a killed or failed attempt left it RUNNING or FAILED: it is running again
        client.update_run(run_id, status="RUNNING")
    else:
        log_dataset(client, run_id, cfg, ds)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            client.log_artifact(run_id, str(Path(d) / "config.yaml"))
    init_ray(cfg)
    check_resources(cfg)
    loop_config = {"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri}
    system = _system_metrics(uri, run_id, cfg)
    try:
        result = make_trainer(cfg, loop_config).fit()
        if result.error:
            raise result.error
    except Exception as err:
        client.set_terminated(run_id, "FAILED")
        raise worker_project_error(err) or err
    finally:
        if system is not None:
            system.finish()
    with result.checkpoint.as_directory() as d:
        state = load_state(Path(d) / CKPT_FILE)
    # Epochs whose metrics the worker could not deliver (tracking server down at the end).
    sync_history(client, run_id, state["history"])
    _log_pretrain_artifacts(client, run_id, cfg, state)
    client.set_terminated(run_id, "FINISHED")
    del ray  # imported for its side effects on the driver
    return PretrainResult(run_id, result.checkpoint.path, state["history"], state["model"])


def worker_project_error(err: BaseException) -> MsclrError | None:
    """The MsclrError a worker raised inside Ray's failure wrapper, so the CLI prints its
    message (exit code 2) instead of a Ray traceback: e.g. a checkpoint that could not be written."""
    for failure in getattr(err, "worker_failures", {}).values():
        while failure is not None:
            if isinstance(failure, MsclrError):
                return failure
            failure = getattr(failure, "cause", None) or failure.__cause__
    return None


def _system_metrics(uri: str, run_id: str, cfg: ExperimentConfig):
    if not cfg.tracking.system_metrics:
        return None
    try:
        import mlflow
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        mlflow.set_tracking_uri(uri)
        monitor = SystemMetricsMonitor(run_id, sampling_interval=5)
        monitor.start()
        return monitor
    except Exception as err:  # noqa: BLE001 - system metrics are optional (psutil)
        print(f"system metrics disabled: {err}")
        return None


def _log_pretrain_artifacts(client, run_id: str, cfg: ExperimentConfig, state: dict) -> None:
    import torch

    from .data import load_split
    from .evaluate import encoder_from_state

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        encoder = {k: v for k, v in state["model"].items() if k.startswith("encoder_q.")}
        torch.save(encoder, d / "encoder_q.pt")
        plots.training_curves(state["history"], d / "training_curves.png")
        paths = [d / "encoder_q.pt", d / "training_curves.png"]
        if cfg.tracking.embedding_plot:
            conv = cfg.conventions[0]
            sub = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_test_samples=600))
            test = load_split(sub, cfg.data.test_part, conventions=[conv])
            feats = E.extract_features(encoder_from_state(cfg, state["model"]), test.arrays[conv], conv, cfg.stream)
            plots.embedding_pca(feats.numpy(), test.labels, [], d / "embedding_pca.png", f"{cfg.name}: {conv} test features")
            paths.append(d / "embedding_pca.png")
        for p in paths:
            client.log_artifact(run_id, str(p))


def run_evaluation(cfg: ExperimentConfig, state: dict | None, *, parent_run_id: str | None, name: str | None = None,
                   label: str = "pretrained", references=None):
    """Evaluate an encoder state (None = random init) with the references the config asks for
    (or `references`), in an MLflow run nested under parent_run_id.

    Metrics: `<key>.<convention>` for the evaluated encoder (linear_top1, linear_top5, knn_top1,
    test_selected_top1, ...), `<reference>.<key>.<convention>` for each reference (raw,
    random_init, supervised). A collapsed probe is tagged (`msclr.collapsed`) and warned about."""
    from mlflow.entities import Metric

    from .data import dataset_for
    from .evaluate import collapsed_rows, evaluate_run, primary_logits, primary_top1, results_table

    uri = ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=True)
    client = _client(uri)
    eval_name = name or f"{cfg.name}/eval"
    run_id, _ = get_or_create_run(
        client, cfg.tracking.experiment, eval_name, parent_run_id=parent_run_id,
        tags={"msclr.kind": "evaluation", "conventions": ",".join(cfg.conventions), "stream": cfg.stream},
    )  # fmt: skip
    try:
        report = evaluate_run(cfg, state, label=label, references=references)
    except BaseException as err:
        client.set_terminated(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    log_params(client, run_id, {f"protocol.{k}": v for k, v in report.protocol.items()})
    now = int(time.time() * 1000)
    metrics = []
    for row in report.rows:
        prefix = "" if row["model"] == label else metric_key(row["model"]).replace("-", "_") + "."
        conv = metric_key(row["convention"])
        metrics += [Metric(f"{prefix}{k}.{conv}", float(v), now, 0) for k, v in row.items()
                    if isinstance(v, (int, float)) and v == v and k not in ("best_val_epoch",)]
    metrics.append(Metric("linear_top1", float(primary_top1(report, label)), now, 0))
    client.log_batch(run_id, metrics=metrics)
    bad = collapsed_rows(report)
    if bad:
        client.set_tag(run_id, "msclr.collapsed", ",".join(bad))
        print(f"WARNING: collapsed linear probe (one class predicted for >= 90% of test clips): {', '.join(bad)}",
              flush=True)
    classes = list(dataset_for(cfg).classes)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        results_table(report).to_csv(d / "results.csv")
        which, logits = primary_logits(report, label)
        cm = E.confusion_matrix(logits.argmax(1), report.test_labels, len(classes))
        plots.confusion(cm, classes, d / "confusion.png", f"{eval_name} ({which})")
        own = {metric_key(k.split("/", 1)[1]): v for k, v in report.test_logits.items() if k.startswith(f"{label}/")}
        np.savez(d / "test_logits.npz", labels=report.test_labels, **own)  # what --fuse reads
        for f in ("results.csv", "confusion.png", "test_logits.npz"):
            client.log_artifact(run_id, str(d / f))
    client.set_terminated(run_id, "FINISHED")
    return run_id, report


def metric_key(name: str) -> str:
    """MLflow metric names allow [A-Za-z0-9_.\\-/ :]: 'ntu-rgb+d' -> 'ntu-rgb_d', 'a|b' -> 'a:b'."""
    return re.sub(r"[^A-Za-z0-9_.\-/ :]", "_", name.replace("|", ":"))


def run_experiment(cfg: ExperimentConfig, *, parent_run_id: str | None = None, quiet: bool = False) -> dict:
    pre = run_pretrain(cfg, parent_run_id=parent_run_id, quiet=quiet)
    out = {"name": cfg.name, "pretrain_run_id": pre.run_id, "checkpoint": pre.checkpoint_dir}
    if cfg.eval.enabled:
        eval_id, report = run_evaluation(cfg, pre.state, parent_run_id=pre.run_id)
        from .evaluate import primary_top1

        out.update(eval_run_id=eval_id, results=report.rows, linear_top1=primary_top1(report))
    return out
