"""`msclr demo`: core-only MS-CLR on generated data (no Ray, no MLflow); prints the probe gain."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--clips", type=int, default=1200)
    parser.add_argument("--json", action="store_true")


def main(args) -> int:
    from msclr_core.demo import DemoSettings, run_demo

    s = DemoSettings(clips=args.clips)
    s.pretrain.optim.epochs = args.epochs
    out = run_demo(s)
    print(f"linear probe top-1: random init {out['random_init_top1']:.3f} -> pretrained {out['pretrained_top1']:.3f} "
          f"(gain {out['gain'] * 100:+.1f} points, {out['train_seconds']:.0f} s pretraining)")  # fmt: skip
    if args.json:
        print(json.dumps(out))
    return 0
