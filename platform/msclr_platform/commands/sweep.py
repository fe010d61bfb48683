"""`msclr sweep FILE [--resume]`: a Ray Tune search over experiment config keys, tracked in MLflow."""

from __future__ import annotations

import argparse

JSON_STDOUT = True  # --json: stdout holds only the JSON line (cli, console.session)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML (see experiments/sweeps/)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base experiment for every trial")  # fmt: skip
    parser.add_argument("--check", action="store_true", help="only validate the sweep file")
    parser.add_argument("--wait-for-resources", type=float, metavar="SECONDS",
                        help="on an autoscaling cluster: ask the autoscaler for missing nodes and wait this long "
                             "(ray.wait_for_resources_s; default: fail at once, naming what is missing)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")


def main(args) -> int:
    from msclr_platform.sweep import load_sweep, run_sweep

    if args.wait_for_resources is not None:
        args.overrides = [*args.overrides, f"ray.wait_for_resources_s={args.wait_for_resources}"]

    if args.check:
        sweep = load_sweep(args.sweep, args.overrides)
        print(f"{args.sweep}: ok ({len(sweep.spec.search)} searched keys, metric {sweep.spec.metric})")
        return 0
    out = run_sweep(args.sweep, resume=args.resume, overrides=args.overrides)
    if out["unfinished"]:
        return 130  # interrupted: the message above says how to resume
    print(out["table"].to_string(index=False))
    print(f"\nbest trial: {out['best_trial']}; MLflow parent run {out['parent_run_id']} at {out['mlflow_uri']}")
    if args.json:
        from msclr_platform.console import print_json

        print_json({"parent_run_id": out["parent_run_id"], "mlflow_uri": out["mlflow_uri"],
                          "best_trial": out["best_trial"], "trials": out["table"].to_dict("records")}, default=str)  # fmt: skip
    return 0
