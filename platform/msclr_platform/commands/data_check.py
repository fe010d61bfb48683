"""`msclr data check DIR [--json]`: validate a dataset directory (exit 1 if it has problems)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="dataset directory (with manifest.json)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")


def main(args) -> int:
    from msclr_core.data.dataset import check_dataset

    report = check_dataset(args.dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['root']}: {report['samples']} samples, {report['classes']} classes")
        for conv, info in report["conventions"].items():
            print(f"  {conv}: shape {info['shape']} ({info['unit']})")
        for proto, parts in report["splits"].items():
            print(f"  split {proto}: " + ", ".join(f"{p} {n}" for p, n in parts.items()))
        for w in report["warnings"]:
            print(f"  warning: {w}")
        for p in report["problems"]:
            print(f"  PROBLEM: {p}")
        print("ok" if report["ok"] else f"{len(report['problems'])} problem(s)")
    return 0 if report["ok"] else 1
