"""`msclr quickstart [--json]`: the platform end to end on the built-in synthetic benchmark."""

from __future__ import annotations

import argparse

JSON_STDOUT = True  # --json: stdout holds only the JSON line (cli, console.session)


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
    table["note"] = ["COLLAPSED (one class)" if c else "" for c in table["collapsed"]]
    print("\nLinear probe on frozen features (last epoch; standardised, lr chosen on validation) and kNN, "
          "top-1 on the xsub test split.\nReferences: raw = linear classifier on the input clip, random-init = "
          "untrained encoder, supervised = same encoder trained with labels for the same steps:")
    print(table[["linear_top1", "linear_top5", "knn_top1", "probe", "note"]].round(3).to_string())
    print(f"\nMLflow UI: {out['mlflow_uri']}  (experiment {out['experiment']!r}); wall time {out['wall_s']:.0f} s")
    if args.json:
        from msclr_platform.console import print_json

        print_json(json_summary(out))
    return 0


def json_summary(out: dict) -> dict:
    """The --json document: the quickstart's result without its tables (print_json makes NaN null)."""
    return {**{k: out[k] for k in ("mlflow_uri", "experiment", "runs", "top1", "wall_s")}, "rows": out["rows"]}
