"""The quickstart: the whole platform on built-in data, on one laptop, in a few minutes.

1. write the synthetic multi-skeleton benchmark (once, under msclr_home()/data);
2. start local Ray and the MLflow server (127.0.0.1);
3. pretrain MS-CLR (two conventions) and a single-skeleton baseline with Ray Train;
4. evaluate both with the core protocol (linear probe, kNN, ensemble) beside its references
   (raw input, random-init encoder, supervised ceiling), all as children of one MLflow
   parent run, and print the results table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from msclr_core.errors import ConfigError

from .config import load_config
from .lifecycle import Interrupted, signal_guard
from .tracking import ensure_tracking_uri, get_or_create_run, msclr_home

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "experiments" / "quickstart.yaml"


def ensure_synth_dataset(path: Path, clips: int, seed: int = 0, conventions=None, protocol: str | None = None) -> Path:
    """The cached synthetic benchmark at `path`, written if missing, or rewritten when it is
    this benchmark (same name) but lacks `protocol` (a cache from a version without the
    `*_val` protocols). Any other dataset at `path` is left alone."""
    import json

    from msclr_core.data.synth import write_synth_dataset

    manifest = path / "manifest.json"
    stale = False
    if manifest.exists() and protocol:
        found = json.loads(manifest.read_text())
        stale = found.get("name") == f"synth-{clips}-seed{seed}" and protocol not in found.get("splits", {})
    if not manifest.exists() or stale:
        t0 = time.perf_counter()
        write_synth_dataset(path, clips=clips, seed=seed, conventions=conventions, overwrite=bool(stale))
        print(f"synthetic benchmark: {clips} clips -> {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return path


def quickstart(config: str | None = None, overrides=None, clips: int = 1200, tag: str | None = None) -> dict:
    from mlflow.tracking import MlflowClient

    from .experiment import run_experiment

    path = Path(config) if config else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"{path}: quickstart config not found (pass --config experiments/quickstart.yaml)")
    data_dir = msclr_home() / "data" / f"quickstart-{clips}"
    cfg = load_config(path, [f"data.path={data_dir}", *(overrides or [])])
    ensure_synth_dataset(Path(cfg.data.path), clips, conventions=["ntu-rgb+d", "smplx_42", "smpl_24", "h36m_17"])

    uri = ensure_tracking_uri(cfg.tracking.tracking_uri)
    cfg.tracking.tracking_uri = uri
    tag = tag or time.strftime("%Y%m%d-%H%M%S")
    client = MlflowClient(uri)
    names = run_names(cfg.name, tag)
    parent_id, _ = get_or_create_run(client, cfg.tracking.experiment, names["parent"], tags={"msclr.kind": "quickstart"})

    msclr = dataclasses.replace(cfg, name=names["msclr"])
    # The references (raw input, random init, supervised ceiling) are evaluated once, in MS-CLR's
    # evaluation run; the baseline's run probes only its own encoder.
    baseline = dataclasses.replace(cfg, name=names["baseline"], conventions=cfg.conventions[:1],
                                   eval=dataclasses.replace(cfg.eval, references=[]))
    t0 = time.perf_counter()
    with signal_guard():  # SIGTERM too ends every run KILLED (lifecycle.py)
        try:
            results = {"msclr": run_experiment(msclr, parent_run_id=parent_id),
                       "baseline": run_experiment(baseline, parent_run_id=parent_id)}
            rows = summary_rows(results)
            log_summary(client, parent_id, rows)  # the parent row of the runs table shows the comparison
        except BaseException as err:  # the parent run ends in a true state too
            client.set_terminated(parent_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            if isinstance(err, Interrupted):
                err.resumable = False  # the runs are named by the start time: the same command starts new ones
            raise
        client.set_terminated(parent_id, "FINISHED")

    first = cfg.conventions[0]
    top1 = {
        "msclr": _top1(rows, "msclr", first),
        "msclr_ensemble": _top1(rows, "msclr", "ensemble") if len(cfg.conventions) > 1 else None,
        "baseline": _top1(rows, "baseline", first),
        "random_init": _top1(rows, "random-init", first),
        "raw": _top1(rows, "raw", first),
        "supervised": _top1(rows, "supervised", first),
    }
    runs = {
        "parent": parent_id, "msclr": results["msclr"]["pretrain_run_id"], "msclr_eval": results["msclr"]["eval_run_id"],
        "baseline": results["baseline"]["pretrain_run_id"], "baseline_eval": results["baseline"]["eval_run_id"],
    }  # fmt: skip
    return {"mlflow_uri": uri, "experiment": cfg.tracking.experiment, "runs": runs, "top1": top1,
            "rows": rows, "wall_s": time.perf_counter() - t0}  # fmt: skip


def run_names(name: str, tag: str) -> dict[str, str]:
    """The quickstart's run names: the parent quickstart-<tag>, and under it runs named with what
    tells them apart first (the MLflow runs table cuts long names): msclr-<name>-<tag> and
    baseline-<name>-<tag>, <name> the config's name less a trailing "-msclr" (the default
    config: msclr-quickstart-<tag>, baseline-quickstart-<tag>)."""
    base = name.removesuffix("-msclr") or name
    return {"parent": f"quickstart-{tag}", "msclr": f"msclr-{base}-{tag}", "baseline": f"baseline-{base}-{tag}"}


SUMMARY_TABLE = "quickstart_summary.json"  # the parent run's table artifact (mlflow.load_table)
SUMMARY_COLUMNS = ("model", "convention", "linear_top1", "linear_top5", "knn_top1", "probe", "collapsed")


def summary_rows(results: dict) -> list[dict]:
    """Every evaluation row of the quickstart's runs, its own encoder named by the run (msclr, baseline)."""
    rows = []
    for label, res in results.items():
        rows += [{**r, "model": label if r["model"] == "pretrained" else r["model"]} for r in res["results"]]
    return rows


def summary_metrics(rows: list[dict]) -> dict[str, float]:
    """The parent run's headline metrics: `linear_top1.<model>.<convention>` and
    `knn_top1.<model>.<convention>`, model msclr, baseline, raw, random_init, supervised (linear_top1.msclr.ensemble,
    linear_top1.baseline.ntu-rgb_d, linear_top1.random_init.ntu-rgb_d); NaN (no kNN on an ensemble) left out."""
    from .tracking import metric_key

    out = {}
    for r in rows:
        name = f"{metric_key(r['model']).replace('-', '_')}.{metric_key(r['convention'])}"
        for key in ("linear_top1", "knn_top1"):
            value = r.get(key)
            if isinstance(value, (int, float)) and value == value:
                out[f"{key}.{name}"] = float(value)
    return out


def log_summary(client, run_id: str, rows: list[dict]) -> None:
    """The quickstart's results table (what it prints) and headline metrics on its parent run."""
    import pandas as pd
    from mlflow.entities import Metric

    from .tracking import log_table

    table = pd.DataFrame(rows)
    log_table(client, run_id, table[[c for c in SUMMARY_COLUMNS if c in table.columns]], SUMMARY_TABLE)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in summary_metrics(rows).items()])


def _top1(rows, model, conv):
    """The row's linear top-1, or None when that reference was not asked for (eval.references)."""
    row = next((r for r in rows if r["model"] == model and r["convention"] == conv), None)
    return None if row is None else row["linear_top1"]
