"""3-stream fusion: `msclr evaluate CONFIG --fuse OTHER_CONFIG ...`.

The paper's 3-stream numbers come from offline score fusion (as AimCLR and Shift-GCN's
ensemble.py): one model pretrained and linearly evaluated per stream (joint, motion,
bone), then the test logits are summed with weights 0.6 joint + 0.6 bone + 0.4 motion.
Both the last-epoch logits (the honest result) and, under keys `test_selected.<key>`, the
logits of each probe's best test epoch (test-set selection, what the paper fuses) are fused.
Every evaluation run stores its test logits (`test_logits.npz`, per convention and for
the ensemble, plus the labels), so fusion needs no recomputation: it reads those
artifacts, checks they describe the same test clips, and logs a `fusion` run nested
under the first config's pretraining run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from msclr_core import evaluation as E
from msclr_core.errors import ConfigError, DataError

from .config import ExperimentConfig
from .tracking import ensure_tracking_uri, eval_run_name, find_runs_by_name, get_or_create_run, log_params

LOGITS_FILE = "test_logits.npz"


def eval_logits(client, cfg: ExperimentConfig) -> tuple[str, dict[str, np.ndarray]]:
    """(eval run id, {key: logits, 'labels': labels}) of CONFIG's finished evaluation."""
    name = eval_run_name(cfg.name)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = find_runs_by_name(client, [exp.experiment_id], name, max_results=1) if exp else []
    if not runs:
        raise ConfigError(f"no evaluation run {name!r} in experiment {cfg.tracking.experiment!r}: "
                          f"run `msclr evaluate` on the {cfg.stream} config first")  # fmt: skip
    run_id = runs[0].info.run_id
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, LOGITS_FILE, d)
        except Exception as err:  # MLflow raises several types for a missing artifact
            raise DataError(f"evaluation run {run_id} has no {LOGITS_FILE}: {err}", field=LOGITS_FILE) from None
        with np.load(path, allow_pickle=False) as z:
            return run_id, {k: z[k] for k in z.files}


def fuse(per_stream: dict[str, dict[str, np.ndarray]], weights: dict | None = None) -> list[dict]:
    """Rows {key, fused_top1, fused_top5, <stream>_top1...}: one per convention and the ensemble."""
    labels = {s: z["labels"] for s, z in per_stream.items()}
    first = next(iter(labels.values()))
    for s, y in labels.items():
        if y.shape != first.shape or not np.array_equal(y, first):
            raise DataError(f"stream {s!r} was evaluated on different test clips (labels differ)", field="labels")
    keys = set.intersection(*({k for k in z if k != "labels"} for z in per_stream.values()))
    if not keys:
        raise DataError("the evaluations share no convention to fuse", field="conventions")
    rows = []
    # last-epoch keys first, then their test-selected twins (labelled "test_selected.<key>")
    for key in sorted(keys, key=lambda k: (k.startswith("test_selected."), k.endswith("ensemble"), k)):
        fused = E.fuse_streams({s: z[key] for s, z in per_stream.items()}, weights)
        row = {"key": key, "fused_top1": E.topk_accuracy(fused, first, 1), "fused_top5": E.topk_accuracy(fused, first, 5)}
        row.update({f"{s}_top1": E.topk_accuracy(z[key], first, 1) for s, z in per_stream.items()})
        rows.append(row)
    return rows


def run_fusion(cfgs: list[ExperimentConfig], weights: dict | None = None) -> tuple[str, list[dict]]:
    """Fuse the evaluations of configs that differ in their stream; log a nested MLflow run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from .tracking import metric_key
    from .runs import pretrain_run_id

    streams = [c.stream for c in cfgs]
    if len(set(streams)) != len(streams):
        raise ConfigError(f"--fuse needs one config per stream, got streams {streams}")
    uri = ensure_tracking_uri(cfgs[0].tracking.tracking_uri, quiet=True)
    client = MlflowClient(uri)
    sources = {c.stream: eval_logits(client, c) for c in cfgs}
    rows = fuse({s: z for s, (_, z) in sources.items()}, weights)
    name = "fusion:" + "+".join(c.name for c in cfgs)
    run_id, _ = get_or_create_run(client, cfgs[0].tracking.experiment, name, parent_run_id=pretrain_run_id(cfgs[0]),
                                  tags={"msclr.kind": "fusion", "streams": ",".join(streams)})  # fmt: skip
    used = weights or {s: E.DEFAULT_STREAM_WEIGHTS[s] for s in streams}
    log_params(client, run_id, {**{f"weight.{s}": w for s, w in used.items()},
                                **{f"eval_run.{s}": rid for s, (rid, _) in sources.items()}})  # fmt: skip
    metrics = [Metric(f"{k}.{metric_key(r['key'])}", float(v), 0, 0) for r in rows for k, v in r.items() if k != "key"]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as d:
        import pandas as pd

        pd.DataFrame(rows).to_csv(Path(d) / "fusion.csv", index=False)
        client.log_artifact(run_id, str(Path(d) / "fusion.csv"))
    client.set_terminated(run_id, "FINISHED")
    return run_id, rows
