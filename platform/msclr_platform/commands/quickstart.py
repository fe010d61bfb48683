"""`msclr quickstart [--json]`: the platform end to end on the built-in synthetic benchmark."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="quickstart YAML (default: experiments/quickstart.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--clips", type=int, default=1200, help="size of the synthetic benchmark")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of results")


def main(args) -> int:
    import pandas as pd

    from msclr_platform.quickstart import quickstart

    out = quickstart(args.config, args.overrides, clips=args.clips)
    table = pd.DataFrame(out["rows"]).set_index(["model", "convention"])
    print("\nLinear evaluation (frozen encoder, last epoch) and kNN, top-1 on the xsub test split:")
    print(table[["linear_top1", "linear_top5", "knn_top1"]].round(3).to_string())
    print(f"\nMLflow UI: {out['mlflow_uri']}  (experiment {out['experiment']!r}); wall time {out['wall_s']:.0f} s")
    if args.json:
        print(json.dumps({k: out[k] for k in ("mlflow_uri", "runs", "top1", "wall_s")}))
    return 0
