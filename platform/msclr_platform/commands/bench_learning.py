"""`msclr bench learning`: MS-CLR vs one skeleton vs the references, against the budget.

Runs msclr_platform.learning.run_study on the quickstart config (or --config) over the
built-in synthetic benchmark, logs one MLflow parent run with a child per (model, seed)
(metrics per epoch), and writes the JSON report (--out), the plot (--plot) and a table.
"""

from __future__ import annotations

import argparse

from . import emit_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (default: experiments/quickstart.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--clips", type=int, default=1200, help="size of the synthetic benchmark")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="pretraining epochs to evaluate (0: the initial encoder)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per point (pretraining and probe seed)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are FIRST..FIRST+SEEDS-1 (to add seeds to an earlier study)")
    parser.add_argument("--models", nargs="+", choices=["msclr", "single"], default=["msclr", "single"],
                        help="which models to pretrain (an A/B of one setting needs only msclr)")
    parser.add_argument("--no-references", action="store_true",
                        help="skip the raw, random-init and supervised references (A/Bs)")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="val: pretrain on the config protocol's train subjects minus a held-out fifth "
                             "and evaluate on those (PROTOCOL_val's val part); the test part is never read. "
                             "Choose settings with val, report them with test")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--plot", help="write the learning-curve PNG here")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON report to this file (atomically)")


def _log_mlflow(cfg, result: dict, plot_path) -> str:
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import metric_key
    from msclr_platform.tracking import ensure_tracking_uri, get_or_create_run, log_params

    uri = ensure_tracking_uri(cfg.tracking.tracking_uri, quiet=True)
    client = MlflowClient(uri)
    tag = time.strftime("%Y%m%d-%H%M%S")
    parent, _ = get_or_create_run(client, cfg.tracking.experiment, f"learning-{tag}", tags={"msclr.kind": "learning"})
    try:
        log_params(client, parent, {"budgets": result["budgets"], "seeds": result["seeds"],
                                    "conventions": result["conventions"], "split": result["split"]})
        for (model, seed) in sorted({(p["model"], p["seed"]) for p in result["points"]}):
            child, _ = get_or_create_run(client, cfg.tracking.experiment, f"learning-{tag}-{model}-seed{seed}",
                                         parent_run_id=parent, tags={"msclr.kind": "learning-point", "model": model})
            now = int(time.time() * 1000)
            metrics = [Metric(metric_key(k), float(v), now, p["epochs"]) for p in result["points"]
                       if p["model"] == model and p["seed"] == seed for k, v in p.items()
                       if k not in ("model", "seed") and isinstance(v, (int, float))]
            try:
                client.log_batch(child, metrics=metrics)
            except BaseException:
                client.set_terminated(child, "FAILED")
                raise
            client.set_terminated(child, "FINISHED")
        if plot_path:
            client.log_artifact(parent, str(plot_path))
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return parent


def main(args) -> int:
    import json
    import tempfile
    from pathlib import Path

    from msclr_platform.config import load_config
    from msclr_platform.evaluate import load_eval_data
    from msclr_platform.learning import run_study, select_on_val
    from msclr_platform.plots import learning_curves
    from msclr_platform.quickstart import DEFAULT_CONFIG, ensure_synth_dataset
    from msclr_platform.tracking import msclr_home

    data_dir = msclr_home() / "data" / f"quickstart-{args.clips}"
    cfg = load_config(args.config or DEFAULT_CONFIG, [f"data.path={data_dir}", *args.overrides])
    if args.split == "val":
        cfg = select_on_val(cfg)
    ensure_synth_dataset(Path(cfg.data.path), args.clips, conventions=["ntu-rgb+d", "smplx_42", "smpl_24", "h36m_17"],
                         protocol=cfg.data.protocol)
    data, labels, k = load_eval_data(cfg)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result = run_study(cfg, data, labels, k, budgets=args.budgets, seeds=seeds, models=tuple(args.models),
                       references=not args.no_references)
    result["split"] = f"{cfg.data.protocol}.{cfg.data.test_part}"
    if args.out:  # the measurements first: nothing after this may lose them
        from msclr_core.io_utils import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as d:
        plot = Path(args.plot or Path(d) / "learning_curves.png")
        learning_curves(result["summary"], cfg.conventions[0], plot)
        if not args.no_mlflow:
            result["mlflow_parent_run"] = _log_mlflow(cfg, result, plot)
    names = {"msclr": "MS-CLR", "msclr_ensemble": "ensemble", "single": "single"}
    lines = [f"{r['epochs']:>4} ep: " + "  ".join(f"{n} {r[k]['mean']:.3f}±{r[k]['std']:.3f}"
                                                   for k, n in names.items() if k in r)
             + (f"  ({r['verdict']})" if "verdict" in r else "") for r in result["summary"]]
    lines.insert(0, f"evaluated on {result['split']} (protocol.part)")
    ref = result["summary"][0]
    refs = [f"{n} {ref[n]['mean']:.3f}±{ref[n]['std']:.3f}" for n in ("raw", "random-init", "supervised") if ref.get(n)]
    if refs:
        lines.append("references: " + ", ".join(refs))
    emit_report(args, result, "\n".join(lines))
    return 0
