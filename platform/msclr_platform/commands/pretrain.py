"""`msclr pretrain CONFIG [--set key=value ...]`: Ray Train pretraining + evaluation, tracked in MLflow.

Running the same command again (same `name`) resumes from the last checkpoint. A run that
exists with another config is refused (exit 2, naming the keys) unless `--new-run` or
`--resume-changed` says what to do (msclr_platform.resume). Ctrl-C / SIGTERM stop the
workers at a step boundary and exit 130 / 143 with the run KILLED and the command that resumes it.
"""

from __future__ import annotations

import argparse

JSON_STDOUT = True  # --json: stdout holds only the JSON line (cli, console.session)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation run")
    parser.add_argument("--wait-for-resources", type=float, metavar="SECONDS",
                        help="on an autoscaling cluster: ask the autoscaler for missing nodes and wait this long "
                             "(ray.wait_for_resources_s; default: fail at once, naming what is missing)")
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--new-run", action="store_const", dest="on_change", const="new-run",
                        help="the run exists with another config: train a fresh run NAME-2 (-3, ...) instead")
    change.add_argument("--resume-changed", action="store_const", dest="on_change", const="resume-changed",
                        help="the run exists with another config: continue it, recorded as a new config version")
    parser.set_defaults(on_change="refuse")


def main(args) -> int:
    from msclr_platform.config import load_config
    from msclr_platform.experiment import run_experiment

    waiting = [] if args.wait_for_resources is None else [f"ray.wait_for_resources_s={args.wait_for_resources}"]
    cfg = load_config(args.config, [*args.overrides, *waiting])
    if args.no_eval:
        cfg.eval.enabled = False
    out = run_experiment(cfg, on_change=args.on_change)
    if "results" in out:
        import pandas as pd

        print(pd.DataFrame(out["results"]).set_index("convention").round(4).to_string())
    if args.json:
        from msclr_platform.console import print_json

        print_json(out, default=float)
    return 0
