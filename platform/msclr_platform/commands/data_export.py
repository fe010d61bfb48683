"""`msclr data export pyskl DATASET --out FILE --convention C`: write a pyskl annotation pickle."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["pyskl"], help="output format")
    parser.add_argument("dataset", help="dataset directory (with manifest.json)")
    parser.add_argument("--out", required=True, help="pickle file to write (atomically)")
    parser.add_argument("--convention", default="ntu-rgb+d", help="convention written as `keypoint`")
    parser.add_argument("--extra-convention", action="append", default=[], metavar="CONV",
                        help="also write this convention under `keypoints` (multi-skeleton extension); repeat")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON document")


def main(args) -> int:
    from msclr_core.data.importers import export_pyskl

    out = export_pyskl(args.dataset, args.out, args.convention, extra_conventions=tuple(args.extra_convention))
    summary = {"out": str(out), "format": args.format, "convention": args.convention,
               "extra_conventions": args.extra_convention, "bytes": out.stat().st_size}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['out']} ({summary['bytes']} bytes, keypoint = {args.convention})")
    return 0
