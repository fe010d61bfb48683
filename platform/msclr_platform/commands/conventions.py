"""`msclr conventions [--json]`: the skeleton conventions in the registry."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list (names, parents, edges, center, flip, unit, dims)")


def main(args) -> int:
    from msclr_core.conventions import REGISTRY

    if args.json:
        doc = [
            {"name": c.name, "num_joints": c.num_joints, "joint_names": list(c.joint_names),
             "parents": list(c.parents), "edges": [list(e) for e in c.edges],
             "center": c.center, "flip": list(c.flip), "unit": c.unit, "dims": c.dims}
            for c in REGISTRY.values()
        ]
        print(json.dumps(doc, indent=1))
        return 0
    rows = [(c.name, str(c.num_joints), c.unit, f"{c.dims}D", c.joint_names[c.center])
            for c in REGISTRY.values()]
    header = ("name", "joints", "unit", "dims", "center")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0
