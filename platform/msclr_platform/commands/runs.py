"""`msclr runs compare [EXPERIMENT] [--json]`: a table of runs and their key metrics, as in the MLflow UI
(without EXPERIMENT: the experiment of `--config`, else the list of experiments; an unknown one exits 2).
`msclr runs sync NAME`: upload what a run kept locally during an MLflow outage, and close it."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["compare", "sync"], help="what to do with the runs")
    parser.add_argument("experiment", nargs="?", default=None, metavar="EXPERIMENT|NAME",
                        help="compare: MLflow experiment (default: --config's, else list them); sync: the run name")
    parser.add_argument("--config", help="compare: without EXPERIMENT, compare this experiment YAML's experiment")
    parser.add_argument("--json", action="store_true", help="compare: print one JSON document on stdout")
    parser.add_argument("--csv", help="compare: also write the table to this CSV file")
    parser.add_argument("--dir", help="sync: the fallback directory (default: MSCLR_HOME/ray/NAME/mlflow-offline)")
    parser.add_argument("--tracking-uri",
                        help="the MLflow server (default: MLFLOW_TRACKING_URI, the run's/config's, or the local one)")


def main(args) -> int:
    if args.action == "sync":
        return _sync(args)
    return _compare(args)


def _compare(args) -> int:
    from msclr_platform.runs import compare_runs, list_experiments

    experiment, uri = args.experiment, args.tracking_uri
    if experiment is None and args.config:
        from msclr_platform.config import load_config

        cfg = load_config(args.config)
        experiment, uri = cfg.tracking.experiment, uri or cfg.tracking.tracking_uri
    if experiment is None:
        found = list_experiments(uri)
        if args.json:
            print(json.dumps({"experiments": found}))
        else:
            print("\n".join(e["name"] for e in found) or "no experiments")
            print("compare one with: msclr runs compare EXPERIMENT", file=sys.stderr)
        return 0
    table = compare_runs(experiment, uri)
    if args.json:
        runs = json.loads(table.reset_index().to_json(orient="records")) if not table.empty else []
        print(json.dumps({"experiment": experiment, "runs": runs}))
    elif table.empty:
        print(f"no runs in experiment {experiment!r}", file=sys.stderr)
    else:
        print(table.set_axis(table.index.str[:8]).to_string())
    if args.csv and not table.empty:
        from msclr_core.io_utils import atomic_write_text

        atomic_write_text(args.csv, table.to_csv())
    return 0


def _sync(args) -> int:
    from msclr_core.errors import ConfigError
    from msclr_platform.offline import sync

    if not args.experiment:
        raise ConfigError("msclr runs sync: name the run (msclr runs sync NAME)")
    out = sync(args.experiment, args.dir, args.tracking_uri)
    for line in out["uploaded"]:
        print(f"uploaded {line}")
    print(f"run {out['run_name']!r} synced to {out['tracking_uri']}")
    return 0
