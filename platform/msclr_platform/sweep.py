"""Ray Tune sweeps from YAML: `msclr sweep FILE [--resume]`.

A sweep file names a base experiment config, fixed overrides and a search space over
any config key (dotted). Every trial is a small driver function that fits its own Ray
Train run (Train V2: no Tuner(TorchTrainer)), forwarding per-epoch metrics to Tune with
TuneReportCallback so ASHA can stop bad trials on the cheap kNN probe. MLflow: one parent
run per sweep, one child per trial (found again by name on resume: no duplicates).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from msclr_core.errors import ConfigError

from . import console, validate
from .config import ExperimentConfig, deep_merge, flatten, from_dict, read_yaml, resolve_paths
from .search_space import (SEARCH_ALGS, SchedulerSpec, candidates, check_distribution, expected_trials, param_space,
                           scheduler, searcher)


@dataclass
class SweepSpec:
    name: str = "sweep"
    base: str = ""  # experiment YAML, relative to the sweep file
    overrides: dict = field(default_factory=dict)  # fixed dotted-key overrides for every trial
    search: dict = field(default_factory=dict)  # dotted key -> {kind: args}, search_space.DISTRIBUTIONS
    metric: str = "probe_knn_top1"
    mode: str = "max"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    search_alg: str = "random"  # random | grid | optuna | hyperopt (if installed)
    num_samples: int = 1
    max_concurrent_trials: int = 2
    trial_cpus: float = 0.01  # the trial driver itself (Tune needs >0); Train workers have their own
    time_budget_s: float | None = None
    final_eval: bool = True


validate.register(SweepSpec,
                  name=validate.text(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "must be letters, digits, '_', '.', '-' "
                                     "(it names directories)", max_len=validate.MAX_NAME),
                  base=validate.text(why="is required (an experiment YAML)"), overrides=validate.ANY,
                  search=validate.ANY, metric=validate.text(), mode=validate.one_of("max", "min"),
                  scheduler=validate.ANY, search_alg=validate.one_of(*SEARCH_ALGS),
                  num_samples=validate.count(1, 1_000_000), max_concurrent_trials=validate.count(1, 100_000),
                  trial_cpus=validate.number(0, 1024, lo_open=True),
                  time_budget_s=validate.optional(validate.number(0, lo_open=True)), final_eval=validate.ANY)


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    base: dict  # the base experiment config as a dict (paths resolved)


def _nest(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def trial_config(sweep: Sweep, params: dict) -> ExperimentConfig:
    """The experiment config of one trial: base + fixed overrides + sampled params."""
    raw = deep_merge(copy.deepcopy(sweep.base), _nest(params))
    return from_dict(ExperimentConfig, raw, source=str(sweep.path))


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Parse and validate a sweep file before anything starts.

    The base config, the sweep's fixed `overrides` (relative paths resolved against the
    sweep file) and command-line `--set` overrides are folded into one base dict.
    """
    from .config import load_config, parse_overrides
    from .data import dataset_for
    from .train import preflight

    path = Path(path).resolve()
    source = str(path)
    spec = from_dict(SweepSpec, read_yaml(path), source=source)
    for section in ("search", "overrides"):
        bad = [k for k in getattr(spec, section) if not isinstance(k, str) or not all(k.split("."))]  # 'a..b' too
        if bad:
            raise ConfigError(f"{source}: key '{section}': keys must be dotted config names, got {bad[0]!r}")
    if ".." in spec.name:
        raise ConfigError(f"{source}: key 'name': {spec.name!r} must not hold '..' (it names directories)")
    if not spec.base:
        raise ConfigError(f"{source}: key 'base' is required (an experiment YAML)")
    base_cfg = load_config(path.parent / spec.base)
    override = parse_overrides(overrides)
    raw = deep_merge(deep_merge(base_cfg.to_dict(), _nest(spec.overrides)), override)
    base_cfg = from_dict(ExperimentConfig, raw, source=source, set_keys=frozenset(flatten(override)))
    base_cfg = resolve_paths(base_cfg, path.parent, source)
    if spec.metric.startswith("probe_"):
        base_cfg.eval.probe_every = max(1, base_cfg.eval.probe_every)
    for key, dist in spec.search.items():
        check_distribution(key, dist, source)
    sweep = Sweep(spec, path, base_cfg.to_dict())
    # Every combination of the finite candidates (and both ends of ranges) must give a
    # valid experiment: unknown keys, wrong types, queue sizes vs the global batch and
    # conventions missing from the dataset fail here, naming the sweep file and key.
    values = {k: candidates(k, d, source) for k, d in spec.search.items()}
    dataset_for(base_cfg)  # the dataset must exist before trials start
    for combo in itertools.islice(itertools.product(*values.values()), 256):
        params = dict(zip(values, combo))
        try:
            preflight(trial_config(sweep, params))
        except ConfigError as err:
            key = next((k for k in params if k.split(".")[-1] in str(err) or str(params[k]) in str(err)), None)
            where = f"key 'search.{key}' value {params[key]!r}" if key else f"key 'search' values {params!r}"
            raise ConfigError(f"{source}: {where}: {err}") from None
    return sweep


# ---------------------------------------------------------------- running


HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray's resource of the head node (ray._common.constants)


def trial_run_config(sweep: Sweep, params: dict, trial_id: str, uri: str) -> ExperimentConfig:
    """What one trial runs: the trial's config, named after the sweep and trial, evaluated
    (spec.final_eval) without the references, which do not depend on the searched keys and
    would be evaluated again for every trial."""
    cfg = trial_config(sweep, params)
    cfg = dataclasses.replace(cfg, name=f"{sweep.spec.name}-{trial_id}",
                              eval=dataclasses.replace(cfg.eval, enabled=sweep.spec.final_eval, references=[]))
    cfg.tracking.tracking_uri = uri
    return cfg


def _trial(params: dict, sweep: Sweep, parent_id: str, uri: str) -> None:
    """One Tune trial: the same pretraining and evaluation path as `msclr pretrain`
    (experiment.run_experiment), with Tune's report callback (per-epoch metrics, for the
    scheduler) and the trial's tags. Its run gets the final `linear_top1.<convention>` and
    `knn_top1.<convention>` from its evaluation; Tune gets them as `final_*`."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .experiment import Hooks, run_experiment

    # The trial runs in a Ray worker process, on a cluster perhaps started without the sweep's
    # environment: its warning filters, logger levels and the one-link rule are set here.
    console.configure()
    if not console.verbose():
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_run_config(sweep, params["params"], trial_id, uri)
    hooks = Hooks(tags={"msclr.kind": "trial", "trial_id": trial_id}, callbacks=[TuneReportCallback()])
    out = run_experiment(cfg, parent_run_id=parent_id, quiet=True, hooks=hooks)
    final = {"epoch": cfg.optim.epochs, sweep.spec.metric: out["final_epoch"].get(sweep.spec.metric, float("nan"))}
    if "results" in out:
        final.update({f"final_{r['convention']}_linear_top1".replace("+", "_"): r["linear_top1"]
                      for r in out["results"]})
        final["final_linear_top1"] = out["linear_top1"]
    tune.report(final)


def run_sweep(path: str | Path, resume: bool = False, overrides: list[str] | None = None, quiet: bool = False) -> dict:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from .resources import check_resources
    from .tracking import check_reachable, ensure_tracking_uri, get_or_create_run
    from .train import init_ray, storage_path

    sweep = load_sweep(path, overrides)
    spec = sweep.spec
    base = from_dict(ExperimentConfig, sweep.base, source=str(sweep.path))
    if not console.verbose():  # one link, the parent's, printed at the end: not a "View run" pair per trial
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = ensure_tracking_uri(base.tracking.tracking_uri, quiet=quiet)
    check_reachable(uri)
    client = MlflowClient(uri)
    parent_id, resumed = get_or_create_run(client, base.tracking.experiment, f"sweep-{spec.name}", tags={"msclr.kind": "sweep"})
    if not resumed:
        client.log_artifact(parent_id, str(sweep.path))
    # A local runtime gets one logical CPU more than the machine has: it holds the trial
    # drivers (trial_cpus each), which only wait on their Train run. Without it a trial
    # whose workers ask for every core could never start (0.01 + 2 > 2).
    init_ray(base, num_cpus=(os.cpu_count() or 1) + 1)
    check_resources(base, extra_cpus=spec.trial_cpus, who="a sweep trial")  # else Tune would wait forever
    exp_path = str(Path(storage_path(base)) / f"sweep-{spec.name}")
    # Trial drivers only wait on their Train run: keep them on the head node, so that a driver's
    # sliver of CPU never makes a GPU node too small for the Train worker it was sized for.
    driver = tune.PlacementGroupFactory([{"CPU": spec.trial_cpus, HEAD_NODE_RESOURCE: 0.001}])
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=sweep, parent_id=parent_id, uri=uri), driver)
    if resume:
        if not tune.Tuner.can_restore(exp_path):
            raise ConfigError(f"{sweep.path}: nothing to resume at {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if tune.Tuner.can_restore(exp_path):
            raise ConfigError(f"{sweep.path}: sweep {spec.name!r} already exists at {exp_path}: use --resume or rename it")
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, search_alg=searcher(spec), scheduler=scheduler(spec, base.optim.epochs),
                num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent_trials, time_budget_s=spec.time_budget_s,
            ),
            run_config=tune.RunConfig(name=f"sweep-{spec.name}", storage_path=storage_path(base)),
        )  # fmt: skip
    results = tuner.fit()
    table = results_table(results, spec, base.optim.epochs)
    unfinished = unfinished_trials(exp_path, trainable, expected_trials(spec))
    if unfinished:  # Ctrl-C (Tune saved its state and returned) or the time budget ran out
        print(f"sweep {spec.name!r}: {unfinished} trial(s) did not finish; continue with "
              f"`msclr sweep {sweep.path} --resume`", flush=True)  # fmt: skip
        best = None  # the parent stays RUNNING: the resumed sweep logs into it
    else:
        best = _log_sweep_results(client, parent_id, spec, table, base)
        client.set_terminated(parent_id, "FINISHED")
    return {"parent_run_id": parent_id, "mlflow_uri": uri, "table": table, "best_trial": best, "unfinished": unfinished}


def unfinished_trials(exp_path: str, trainable, expected: int) -> int:
    """Trials that still have work to do, read from Tune's saved experiment state.

    After Ctrl-C, fit() returns with the running trials marked TERMINATED in memory, but
    the state it saved just before (what --resume restores) has them RUNNING, and trials
    the searcher had not created yet are in no list at all: count both.
    """
    from ray import tune

    saved = tune.Tuner.restore(exp_path, trainable=trainable).get_results()
    return max(expected, len(saved)) - saved.num_terminated - saved.num_errors


def results_table(results, spec: SweepSpec, epochs: int):
    import pandas as pd

    rows = []
    for r in results:
        m = r.metrics or {}
        row = {"trial_id": m.get("trial_id", r.path.rsplit("_", 2)[-2] if r.path else "?")}
        row.update({k: (str(v) if isinstance(v, list) else v) for k, v in (r.config or {}).get("params", {}).items()})
        row.update(epochs_done=m.get("epoch", 0), status="ERROR" if r.error else "TERMINATED")
        row["stopped_early"] = (not r.error) and m.get("epoch", 0) < epochs
        row[spec.metric] = m.get(spec.metric)
        row["final_linear_top1"] = m.get("final_linear_top1")
        rows.append(row)
    return pd.DataFrame(rows)


def finished(table):
    """The rows of trials that ran to the end: not stopped early, no error."""
    return table[~table["stopped_early"].astype(bool) & (table["status"] == "TERMINATED")]


def best_trial(table, metric: str, mode: str):
    """The trial_id of the finished trial with the best `metric` in `mode` (max: highest,
    min: lowest), what Tune's scheduler and searcher optimised; None when no finished
    trial reported a finite value."""
    import pandas as pd

    done = finished(table)
    values = pd.to_numeric(done[metric], errors="coerce").astype(float) if metric in done else pd.Series(dtype=float)
    values = values[values.abs() < float("inf")]  # NaN and inf out
    if values.empty:
        return None
    return done.loc[values.idxmax() if mode == "max" else values.idxmin(), "trial_id"]


SWEEP_TABLE = "sweep_results.json"  # the sweep parent's results table (mlflow.load_table); sweep_results.csv too


def _sync_from_checkpoint(client, run_id: str, cfg: ExperimentConfig) -> None:
    from msclr_core.errors import MsclrError

    from .runs import latest_checkpoint
    from .tracking import sync_history
    from .train import load_state

    try:
        history = load_state(latest_checkpoint(cfg))["history"]
    except MsclrError:  # stopped before its first checkpoint: nothing more to show
        return
    sync_history(client, run_id, history)


def _log_sweep_results(client, parent_id: str, spec: SweepSpec, table, base: ExperimentConfig) -> str | None:
    import tempfile

    from . import plots
    from .tracking import RUN_NAME_TAG, find_runs_by_name, log_table

    exp_id = client.get_run(parent_id).info.experiment_id

    def child_runs(trial_id):
        return find_runs_by_name(client, [exp_id], f"{spec.name}-{trial_id}")

    # ASHA kills a stopped trial's driver, so its child run never ends by itself: close it
    # here as KILLED, tagged, so the UI tells "stopped early" from "still running"; the epochs
    # its workers had no time to send are in its last checkpoint.
    for row in table[table["stopped_early"]].itertuples():
        for run in child_runs(row.trial_id):
            _sync_from_checkpoint(client, run.info.run_id, dataclasses.replace(base, name=run.data.tags[RUN_NAME_TAG]))
            client.set_tag(run.info.run_id, "msclr.stopped_early", f"epoch {row.epochs_done}")
            client.set_terminated(run.info.run_id, "KILLED")
    done = finished(table)
    col = "final_linear_top1" if done["final_linear_top1"].notna().any() else spec.metric  # what the plots show
    best = best_trial(table, spec.metric, spec.mode)
    if best is not None:
        for run in child_runs(best):
            client.set_tag(run.info.run_id, "msclr.best_trial", "true")
        client.set_tag(parent_id, "best_trial", best)
    with tempfile.TemporaryDirectory() as d:
        table.to_csv(Path(d) / "sweep_results.csv", index=False)
        client.log_artifact(parent_id, str(Path(d) / "sweep_results.csv"))
        log_table(client, parent_id, table, SWEEP_TABLE)  # the same rows, as a table the MLflow UI renders
        for key in spec.search:
            f = plots.metric_vs_param(table, key, col, Path(d) / f"{col}_vs_{key}.png")
            client.log_artifact(parent_id, str(f))
    return best
