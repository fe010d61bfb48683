"""`msclr pretrain CONFIG [--set key=value ...]`: Ray Train pretraining + evaluation, tracked in MLflow.

Running the same command again (same `name`) resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.epochs=5 (repeatable)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation run")


def main(args) -> int:
    from msclr_platform.config import load_config
    from msclr_platform.experiment import run_experiment

    cfg = load_config(args.config, args.overrides)
    if args.no_eval:
        cfg.eval.enabled = False
    out = run_experiment(cfg)
    if "results" in out:
        import pandas as pd

        print(pd.DataFrame(out["results"]).set_index("convention").round(4).to_string())
    if args.json:
        print(json.dumps(out, default=float))
    return 0
