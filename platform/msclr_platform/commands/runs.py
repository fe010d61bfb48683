"""`msclr runs compare [EXPERIMENT]`: a table of runs and their key metrics, as in the MLflow UI.
`msclr runs sync NAME`: upload what a run kept locally during an MLflow outage, and close it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["compare", "sync"], help="what to do with the runs")
    parser.add_argument("experiment", nargs="?", default=None, metavar="EXPERIMENT|NAME",
                        help="compare: MLflow experiment name (default: msclr); sync: the run name")
    parser.add_argument("--csv", help="compare: also write the table to this CSV file")
    parser.add_argument("--dir", help="sync: the fallback directory (default: MSCLR_HOME/ray/NAME/mlflow-offline)")
    parser.add_argument("--tracking-uri", help="sync: the MLflow server (default: MLFLOW_TRACKING_URI, the run's, or the local one)")


def main(args) -> int:
    if args.action == "sync":
        return _sync(args)
    from msclr_platform.runs import compare_runs

    experiment = args.experiment or "msclr"
    table = compare_runs(experiment)
    if table.empty:
        print(f"no runs in experiment {experiment!r}")
        return 0
    print(table.to_string())
    if args.csv:
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
