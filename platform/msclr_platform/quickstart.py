"""The quickstart: the whole platform on built-in data, on one laptop, in a few minutes.

1. write the synthetic multi-skeleton benchmark (once, under msclr_home()/data);
2. start local Ray and the MLflow server (127.0.0.1);
3. pretrain MS-CLR (two conventions) and a single-skeleton baseline with Ray Train;
4. evaluate both and a random-init encoder (linear probe, kNN, ensemble), all as
   children of one MLflow parent run, and print the results table.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from msclr_core.errors import ConfigError

from .config import load_config
from .tracking import ensure_tracking_uri, get_or_create_run, msclr_home

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "experiments" / "quickstart.yaml"


def ensure_synth_dataset(path: Path, clips: int, seed: int = 0, conventions=None) -> Path:
    from msclr_core.data.synth import write_synth_dataset

    if not (path / "manifest.json").exists():
        t0 = time.perf_counter()
        write_synth_dataset(path, clips=clips, seed=seed, conventions=conventions)
        print(f"synthetic benchmark: {clips} clips -> {path} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return path


def quickstart(config: str | None = None, overrides=None, clips: int = 1200, tag: str | None = None) -> dict:
    from mlflow.tracking import MlflowClient

    from .experiment import run_evaluation, run_experiment

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
    parent_id, _ = get_or_create_run(client, cfg.tracking.experiment, f"quickstart-{tag}", tags={"msclr.kind": "quickstart"})

    msclr = dataclasses.replace(cfg, name=f"{cfg.name}-{tag}")
    baseline = dataclasses.replace(cfg, name=f"quickstart-baseline-{tag}", conventions=cfg.conventions[:1])
    t0 = time.perf_counter()
    results = {"msclr": run_experiment(msclr, parent_run_id=parent_id), "baseline": run_experiment(baseline, parent_run_id=parent_id)}
    rand_id, rand = run_evaluation(msclr, None, parent_run_id=parent_id, name=f"quickstart-random-init-{tag}")
    client.set_terminated(parent_id, "FINISHED")

    rows = []
    for label, res in results.items():
        rows += [{"model": label, **r} for r in res["results"]]
    rows += [{"model": "random-init", **r} for r in rand.rows]
    top1 = {
        "msclr": _row(rows, "msclr", cfg.conventions[0])["linear_top1"],
        "msclr_ensemble": _row(rows, "msclr", "ensemble")["linear_top1"] if len(cfg.conventions) > 1 else None,
        "baseline": _row(rows, "baseline", cfg.conventions[0])["linear_top1"],
        "random_init": _row(rows, "random-init", cfg.conventions[0])["linear_top1"],
    }
    runs = {
        "parent": parent_id, "msclr": results["msclr"]["pretrain_run_id"], "msclr_eval": results["msclr"]["eval_run_id"],
        "baseline": results["baseline"]["pretrain_run_id"], "baseline_eval": results["baseline"]["eval_run_id"],
        "random_init_eval": rand_id,
    }  # fmt: skip
    return {"mlflow_uri": uri, "experiment": cfg.tracking.experiment, "runs": runs, "top1": top1,
            "rows": rows, "wall_s": time.perf_counter() - t0}  # fmt: skip


def _row(rows, model, conv):
    return next(r for r in rows if r["model"] == model and r["convention"] == conv)
