"""`msclr runs compare [EXPERIMENT]`: a table of runs and their key metrics, as in the MLflow UI."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["compare"], help="what to do with the runs")
    parser.add_argument("experiment", nargs="?", default="msclr", help="MLflow experiment name (default: msclr)")
    parser.add_argument("--csv", help="also write the table to this CSV file")


def main(args) -> int:
    from msclr_platform.runs import compare_runs

    table = compare_runs(args.experiment)
    if table.empty:
        print(f"no runs in experiment {args.experiment!r}")
        return 0
    print(table.to_string())
    if args.csv:
        from msclr_core.io_utils import atomic_write_text

        atomic_write_text(args.csv, table.to_csv())
    return 0
