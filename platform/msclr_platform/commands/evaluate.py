"""`msclr evaluate CONFIG [--random-init] [--fuse CONFIG ...]`: evaluate a finished pretraining run.

Loads the final checkpoint of the Ray run named by the config and logs a nested
evaluation run (linear probe, kNN, multi-skeleton ensemble) under its MLflow run.
With --fuse, the test logits of CONFIG's evaluation and of the other streams' configs
(each evaluated before) are fused into the 3-stream result (msclr_platform.fusion).
"""

from __future__ import annotations

import argparse

from .pretrain import add_common

JSON_STDOUT = True  # --json: stdout holds only the JSON line (cli, console.session)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--random-init", action="store_true", help="evaluate a randomly initialised encoder instead")
    parser.add_argument("--fuse", nargs="+", metavar="CONFIG",
                        help="configs of the other streams (already evaluated): log the 3-stream fusion too")  # fmt: skip


def main(args) -> int:
    from msclr_platform.config import load_config
    from msclr_platform.evaluate import results_table
    from msclr_platform.experiment import run_evaluation
    from msclr_platform.runs import final_state, pretrain_run_id

    cfg = load_config(args.config, args.overrides)
    if args.random_init:
        run_id, report = run_evaluation(cfg, None, parent_run_id=None, name=f"{cfg.name}/random-init",
                                        label="random-init", references=[])
    else:
        run_id, report = run_evaluation(cfg, final_state(cfg), parent_run_id=pretrain_run_id(cfg))
    print(results_table(report).round(4).to_string())
    out = {"eval_run_id": run_id, "results": report.rows}
    if args.fuse:
        import pandas as pd

        from msclr_platform.fusion import run_fusion

        out["fusion_run_id"], out["fusion"] = run_fusion([cfg, *(load_config(c, args.overrides) for c in args.fuse)])
        print("\nStream fusion (0.6 joint + 0.6 bone + 0.4 motion), top-1 on the test split:")
        print(pd.DataFrame(out["fusion"]).set_index("key").round(4).to_string())
    if args.json:
        from msclr_platform.console import print_json

        print_json(out, default=float)
    return 0
