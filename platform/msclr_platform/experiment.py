"""One experiment end to end: pretrain on Ray Train, then evaluate, all tracked in MLflow.

    run_experiment(cfg) = run_pretrain(cfg) + run_evaluation(cfg, ...)

The MLflow pretraining run is found by its msclr run name (tag), so re-running the
same command resumes both the Ray run and the MLflow run, after comparing the configs
(resume.py). Evaluation runs are children of their pretraining run. Every run ends
FINISHED, FAILED or KILLED whatever stops it (lifecycle.py), and an MLflow outage costs
at most the retry budget, after which the results wait in a fallback directory for
`msclr runs sync` (offline.py).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msclr_core import __version__ as core_version
from msclr_core import evaluation as E
from msclr_core.errors import MsclrError

from . import plots, resume
from .config import ExperimentConfig, flatten
from .lifecycle import (
    DRIVER_TAG, as_interrupted, claim_run, closing_run, driver_identity, new_stop_key, signal_guard,
    stop_at_step_boundary,
)  # fmt: skip
from .offline import (
    TrackingUnavailable, fallback_dir, refuse_if_pending, save_evaluation, save_pretrain, sync_command, tracking_client,
    upload_evaluation, upload_pretrain,
)  # fmt: skip
from .tracking import (
    check_reachable, ensure_tracking_uri, find_runs_by_name, get_or_create_run, log_config_params,
    eval_run_name, log_dataset, metric_key,
)  # fmt: skip


@dataclass
class PretrainResult:
    run_id: str
    checkpoint_dir: str
    history: list[dict]
    state: dict  # the final MSCLR state_dict (CPU tensors)
    cfg: ExperimentConfig | None = None  # the config it ran (renamed by --new-run)
    dataset: object = None  # the Dataset it trained on, opened once per driver run


@dataclass
class Hooks:
    """How a caller that is not `msclr pretrain` joins the one pretraining path: a sweep
    trial adds its tags (msclr.kind "trial", trial_id) and Tune's report callback."""

    tags: dict = dataclasses.field(default_factory=dict)  # on the MLflow run (msclr.kind overrides "pretrain")
    callbacks: list = dataclasses.field(default_factory=list)  # Ray Train callbacks (TuneReportCallback)


def run_pretrain(cfg: ExperimentConfig, *, parent_run_id: str | None = None, quiet: bool = False,
                 on_change: str = "refuse", hooks: Hooks | None = None) -> PretrainResult:
    """Pretrain (or resume) run cfg.name. `on_change`: what to do when the run exists with
    another config: "refuse" (ConfigChanged), "new-run", "resume-changed" (resume.py).
    Raises Interrupted (SIGINT/SIGTERM: the run is KILLED) or TrackingUnavailable (the
    results wait in the fallback directory) instead of leaving the run RUNNING."""
    with signal_guard() as guard:
        return _run_pretrain(cfg, guard, parent_run_id=parent_run_id, quiet=quiet, on_change=on_change,
                             hooks=hooks or Hooks())  # fmt: skip


def _run_pretrain(cfg: ExperimentConfig, guard, *, parent_run_id, quiet, on_change, hooks: Hooks) -> PretrainResult:
    from .data import consistency_status
    from .resources import check_resources
    from .train import init_ray, make_trainer, preflight

    ds = preflight(cfg)  # the dataset (NaN/inf, consistency) against the config: before any server
    uri = ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=quiet)
    check_reachable(uri)  # before any compute
    client = tracking_client(uri, cfg.tracking.retry_budget_s)
    cfg, run_id, resumed, plan = open_pretrain_run(client, cfg, parent_run_id, on_change, hooks.tags)
    if resumed:  # refused (before closing_run) if its driver is alive; else says if one was killed
        claim_run(client, client.get_run(run_id), cfg.name)
    with closing_run(client, run_id, guard, cfg.name):
        if resumed:  # a killed or failed attempt left it RUNNING, KILLED or FAILED: it is running again
            client.update_run(run_id, status="RUNNING")
        else:
            client.set_tag(run_id, DRIVER_TAG, driver_identity())
        if not quiet:
            print(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) at {uri}", flush=True)
        log_config_params(client, run_id, {**flatten(cfg.to_dict()), "tracking.tracking_uri": uri})  # the one used
        if not plan.stored:
            log_dataset(client, run_id, cfg.data.path, ds)
            client.set_tag(run_id, "msclr.consistency", consistency_status(cfg, ds))
            resume.log_config(client, run_id, cfg)
        resume.record(client, run_id, plan, from_epoch=resume_epoch(cfg))
        init_ray(cfg)
        guard.install()  # ray.init installed its own SIGTERM handler
        check_resources(cfg)
        stop_key = new_stop_key(run_id)
        loop_config = {"config": cfg.to_dict(), "run_id": run_id, "tracking_uri": uri, "stop_key": stop_key}
        trainer = make_trainer(cfg, loop_config, callbacks=hooks.callbacks)
        system = _system_metrics(uri, run_id, cfg)
        try:
            with stop_at_step_boundary(guard, trainer, stop_key):
                result = trainer.fit()
        except Exception as err:
            if guard.signum:  # aborted after a stop signal: the workers did not stop in time
                raise as_interrupted(err, guard, f"the Ray Train run was aborted; {_checkpoint_note(cfg)}") from None
            raise worker_project_error(err) or err
        finally:
            if system is not None:
                system.finish()
        info = result.return_value or {}
        client.budget.join(info.get("outage_since"))  # one retry budget: rank 0's outage goes on here
        state = _final_state(result)
        if guard.signum:
            _stop_interrupted(client, run_id, cfg, state, info, guard)
        return _finish_pretrain(client, run_id, cfg, state, result.checkpoint.path, ds)


def open_pretrain_run(client, cfg: ExperimentConfig, parent_run_id: str | None, on_change: str, tags: dict | None = None):
    """(cfg, run_id, resumed, plan): the MLflow run this attempt trains, found by name and
    checked against its stored config (resume.plan_resume), or created. Nothing is written
    to a run that is refused."""
    from .train import run_directory

    tags = {
        "msclr.version": core_version, "msclr.kind": "pretrain",  # the commit: mlflow.source.git.commit
        "conventions": ",".join(cfg.conventions), "stream": cfg.stream, "objective": cfg.method.objective, **(tags or {}),
    }  # fmt: skip
    refuse_if_pending(run_directory(cfg), cfg.name)
    run_id, resumed = get_or_create_run(client, cfg.tracking.experiment, cfg.name, parent_run_id=parent_run_id, tags=tags)
    if not resumed:
        return cfg, run_id, False, resume.Plan(cfg, stored=False)

    def run_exists(name: str) -> str | None:
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        found = find_runs_by_name(client, [exp.experiment_id], name, max_results=1)
        return found[0].info.run_id if found else None

    plan = resume.plan_resume(client, cfg, run_id, on_change, run_exists=run_exists)
    if plan.cfg.name != cfg.name:  # --new-run
        cfg = plan.cfg
        refuse_if_pending(run_directory(cfg), cfg.name)
        run_id, resumed = get_or_create_run(client, cfg.tracking.experiment, cfg.name, parent_run_id=parent_run_id,
                                            tags=tags)  # fmt: skip
        print(f"msclr: {'resuming' if resumed else 'starting'} run {cfg.name!r} for this config", flush=True)
        if not resumed:
            plan = resume.Plan(cfg, stored=False)
    return cfg, run_id, resumed, plan


def resume_epoch(cfg: ExperimentConfig) -> int:
    """The epoch an attempt starts at: 1 + the last checkpoint's (read from its directory name)."""
    from .runs import latest_checkpoint

    try:
        return int(latest_checkpoint(cfg).parent.name.split("-")[-1]) + 1
    except (MsclrError, ValueError):
        return 1


def _checkpoint_note(cfg: ExperimentConfig) -> str:
    epoch = resume_epoch(cfg) - 1
    return f"its last checkpoint is epoch {epoch}" if epoch else "it has no checkpoint yet"


def _final_state(result) -> dict | None:
    from .train import CKPT_FILE, load_state

    if result.checkpoint is None:
        return None
    with result.checkpoint.as_directory() as d:
        return load_state(Path(d) / CKPT_FILE)


def _stop_interrupted(client, run_id: str, cfg: ExperimentConfig, state: dict | None, info: dict, guard) -> None:
    """The workers stopped on a signal: log the epochs the checkpoint has, and raise
    Interrupted (closing_run closes the run as KILLED)."""
    from .tracking import sync_history

    if state is not None:
        try:
            sync_history(client, run_id, state["history"])
        except TrackingUnavailable:
            pass  # they are in the checkpoint: the resumed run logs them
    stopped = info.get("stopped")
    if stopped is None:
        where = "after training had finished (the next start logs the artifacts and closes the run)"
    elif stopped.get("step") is None:
        where = f"at the end of epoch {stopped['epoch']}"
    else:
        where = f"in epoch {stopped['epoch']} after step {stopped['step']} of {stopped['steps']} (it is trained again)"
    raise as_interrupted(KeyboardInterrupt(), guard, f"{where}; {_checkpoint_note(cfg)}")


def _finish_pretrain(client, run_id: str, cfg: ExperimentConfig, state: dict, checkpoint: str, ds) -> PretrainResult:
    """Log the run's end (history, encoder, plots) and close it FINISHED; during an outage
    that outlasts the budget, keep them in the fallback directory and raise TrackingUnavailable."""
    from .logged_model import log_encoder
    from .train import run_directory

    result = PretrainResult(run_id, checkpoint, state["history"], state["model"], cfg, ds)
    with tempfile.TemporaryDirectory() as d:
        files = write_pretrain_artifacts(cfg, state, Path(d), ds)
        last_epoch = state["history"][-1]["epoch"] if state["history"] else 0
        try:  # the encoder as an MLflow model too, logged while the run is still RUNNING (logged_model.py)
            upload_pretrain(client, run_id, state["history"], files,
                            before_close=lambda c, r: log_encoder(c, r, cfg, state, ds, last_epoch))
        except TrackingUnavailable as err:
            fallback = fallback_dir(run_directory(cfg), cfg.name)
            save_pretrain(fallback, run_meta(cfg), run_id, state["history"], files, "FINISHED")
            raise offline_error(str(err), result, fallback, "the final encoder, plots and epoch history") from None
    return result


def run_meta(cfg: ExperimentConfig) -> dict:
    """What a fallback manifest needs to find the runs again (the URI only when given explicitly)."""
    uri = cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    return {"run_name": cfg.name, "experiment": cfg.tracking.experiment, "tracking_uri": uri}


def offline_error(reason: str, result: PretrainResult, fallback: Path, contents: str) -> TrackingUnavailable:
    name = result.cfg.name
    return TrackingUnavailable(
        f"{reason}. Run {name!r} (MLflow run {result.run_id}) is not closed: its trained state is safe in "
        f"{result.checkpoint_dir}, and {contents} are in {fallback}. When the server is back, upload them and close "
        f"the run with: {sync_command(name, fallback)}", fallback=fallback, result=result, reason=reason)  # fmt: skip


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
        import sys

        print(f"msclr: system metrics disabled: {err}", file=sys.stderr)
        return None


def write_pretrain_artifacts(cfg: ExperimentConfig, state: dict, d: Path, ds=None) -> list[Path]:
    """The files a finished pretraining run logs: the query encoder's weights, the loss/lr
    curves and (tracking.embedding_plot) a PCA plot of test embeddings, written into d."""
    import torch

    from .data import dataset_for, load_split
    from .evaluate import encoder_from_state

    encoder = {k: v for k, v in state["model"].items() if k.startswith("encoder_q.")}
    torch.save(encoder, d / "encoder_q.pt")
    plots.training_curves(state["history"], d / "training_curves.png")
    paths = [d / "encoder_q.pt", d / "training_curves.png"]
    if cfg.tracking.embedding_plot:
        conv = cfg.conventions[0]
        sub = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_test_samples=600))
        ds = ds or dataset_for(cfg)
        test = load_split(sub, cfg.data.test_part, conventions=[conv], ds=ds)
        feats = E.extract_features(encoder_from_state(cfg, state["model"]), test.arrays[conv], conv, cfg.stream)
        plots.embedding_pca(feats.numpy(), test.labels, list(ds.classes), d / "embedding_pca.png",
                            f"{cfg.name}: {conv} test features")  # the legend names the classes
        paths.append(d / "embedding_pca.png")
    return paths


def run_evaluation(cfg: ExperimentConfig, state: dict | None, *, parent_run_id: str | None, name: str | None = None,
                   label: str = "pretrained", references=None, offline: Path | None = None, ds=None):
    """Evaluate an encoder state (None = random init) with the references the config asks for
    (or `references`), in an MLflow run nested under parent_run_id.

    Metrics: `<key>.<convention>` for the evaluated encoder (linear_top1, linear_top5, knn_top1, test_selected_top1,
    ...), `<reference>.<key>.<convention>` for each reference (raw, random_init, supervised); the encoder's final
    ones on parent_run_id too (copy_final_metrics). A collapsed probe is tagged (`msclr.collapsed`) and warned
    about. `offline`: the tracking server is gone; the results go into that fallback directory (offline.py)
    instead, and (None, report) is returned. `ds`: the Dataset, when the caller opened it."""
    from .data import dataset_for
    from .evaluate import evaluate_run
    from .train import run_directory

    ds = ds or dataset_for(cfg)
    eval_name = name or eval_run_name(cfg.name)
    record = {"name": eval_name, "experiment": cfg.tracking.experiment, "parent_run_id": parent_run_id, "run_id": None,
              "tags": {"msclr.kind": "evaluation", "conventions": ",".join(cfg.conventions), "stream": cfg.stream}}

    def evaluate(d: Path):
        report = evaluate_run(cfg, state, label=label, references=references, ds=ds)
        return report, evaluation_outputs(cfg, report, label, eval_name, d, list(ds.classes))

    with signal_guard() as guard, tempfile.TemporaryDirectory() as d:
        if offline is not None:
            report, outputs = evaluate(Path(d))
            save_evaluation(offline, run_meta(cfg), _with(record, outputs), Path(d))
            return None, report
        uri = ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=True)
        client = tracking_client(uri, cfg.tracking.retry_budget_s)
        run_id, _ = get_or_create_run(client, record["experiment"], eval_name, parent_run_id=parent_run_id,
                                      tags=record["tags"])  # fmt: skip
        with closing_run(client, run_id, guard, eval_name):
            report, outputs = evaluate(Path(d))
            record = _with({**record, "run_id": run_id}, outputs)
            try:
                upload_evaluation(client, record, Path(d))  # also copies the final accuracies to the parent
            except TrackingUnavailable as err:
                fallback = fallback_dir(run_directory(cfg), cfg.name)
                save_evaluation(fallback, run_meta(cfg), record, Path(d))
                raise TrackingUnavailable(
                    f"{err}. Evaluation run {eval_name!r} (MLflow run {run_id}) is not closed; its results are in "
                    f"{fallback}. When the server is back, upload them with: {sync_command(cfg.name, fallback)}",
                    fallback=fallback) from None  # fmt: skip
    return run_id, report


def evaluation_outputs(cfg: ExperimentConfig, report, label: str, eval_name: str, d: Path, classes: list) -> dict:
    """An evaluation's params, metrics ([key, value, step, timestamp ms]: when they were
    computed, also when an outage delays the upload), tags and files (written into d)."""
    from .evaluate import collapsed_rows, primary_logits, results_table

    metrics, now = [], int(time.time() * 1000)
    for row in report.rows:
        prefix = "" if row["model"] == label else metric_key(row["model"]).replace("-", "_") + "."
        conv = metric_key(row["convention"])
        metrics += [[f"{prefix}{k}.{conv}", float(v), 0, now] for k, v in row.items()
                    if isinstance(v, (int, float)) and v == v and k not in ("best_val_epoch",)]
    tags = {}
    bad = collapsed_rows(report)
    if bad:
        tags["msclr.collapsed"] = ",".join(bad)
        print(f"WARNING: collapsed linear probe (one class predicted for >= 90% of test clips): {', '.join(bad)}",
              flush=True)
    results_table(report).to_csv(d / "results.csv")
    which, logits = primary_logits(report, label)
    cm = E.confusion_matrix(logits.argmax(1), report.test_labels, len(classes))
    plots.confusion(cm, classes, d / "confusion.png", f"{eval_name} ({which})")
    own = {metric_key(k.split("/", 1)[1]): v for k, v in report.test_logits.items() if k.startswith(f"{label}/")}
    own.update({f"test_selected.{metric_key(k.split('/', 1)[1])}": v for k, v in report.selected_logits.items()
                if k.startswith(f"{label}/")})  # best-test-epoch logits, labelled: --fuse fuses both kinds
    np.savez(d / "test_logits.npz", labels=report.test_labels, **own)  # what --fuse reads
    return {"params": {f"protocol.{k}": v for k, v in report.protocol.items()}, "metrics": metrics,
            "tags": tags, "files": ["results.csv", "confusion.png", "test_logits.npz"]}


def _with(record: dict, outputs: dict) -> dict:
    return {**record, **outputs, "tags": {**record["tags"], **outputs["tags"]}}


def run_experiment(cfg: ExperimentConfig, *, parent_run_id: str | None = None, quiet: bool = False,
                   on_change: str = "refuse", hooks: Hooks | None = None) -> dict:
    """Pretrain, then (eval.enabled) evaluate as a child run: `msclr pretrain`, the quickstart's
    runs and every sweep trial (with its hooks) take this one path."""
    with signal_guard():
        try:
            pre = run_pretrain(cfg, parent_run_id=parent_run_id, quiet=quiet, on_change=on_change, hooks=hooks)
        except TrackingUnavailable as err:
            if err.result is None or not cfg.eval.enabled:
                raise
            # Training finished while the server was away: the evaluation is computed all the
            # same and waits beside the encoder for `msclr runs sync`.
            run_evaluation(err.result.cfg, err.result.state, parent_run_id=err.result.run_id, offline=err.fallback,
                           ds=err.result.dataset)
            raise offline_error(err.reason, err.result, err.fallback,
                                "the final encoder, plots, epoch history and evaluation") from None  # fmt: skip
        cfg = pre.cfg or cfg
        out = {"name": cfg.name, "pretrain_run_id": pre.run_id, "checkpoint": pre.checkpoint_dir,
               "final_epoch": pre.history[-1] if pre.history else {}}
        if cfg.eval.enabled:
            eval_id, report = run_evaluation(cfg, pre.state, parent_run_id=pre.run_id, ds=pre.dataset)
            from .evaluate import primary_top1

            out.update(eval_run_id=eval_id, results=report.rows, linear_top1=primary_top1(report))
    return out
