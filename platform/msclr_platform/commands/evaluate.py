"""`msclr evaluate CONFIG [--random-init]`: evaluate the finished pretraining run of CONFIG.

Loads the final checkpoint of the Ray run named by the config and logs a nested
evaluation run (linear probe, kNN, multi-skeleton ensemble) under its MLflow run.
"""

from __future__ import annotations

import argparse
import json

from .pretrain import add_common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised encoder instead")


def main(args) -> int:
    from msclr_platform.config import load_config
    from msclr_platform.experiment import run_evaluation
    from msclr_platform.runs import final_state, pretrain_run_id

    cfg = load_config(args.config, args.overrides)
    if args.random_init:
        run_id, report = run_evaluation(cfg, None, parent_run_id=None, name=f"{cfg.name}/random-init")
    else:
        run_id, report = run_evaluation(cfg, final_state(cfg), parent_run_id=pretrain_run_id(cfg))
    print(report.table().round(4).to_string())
    if args.json:
        print(json.dumps({"eval_run_id": run_id, "results": report.rows}, default=float))
    return 0
