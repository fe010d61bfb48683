"""`msclr data check DIR [--json]`: validate a dataset directory (exit 1 if it has problems).

With two or more conventions it also compares every pair on a seeded sample of clips
(msclr_core.consistency: axis signs, scale, left/right, time lag, rotation): a pair that
disagrees is a problem naming both conventions and what is wrong."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="dataset directory (with manifest.json)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document "
                        "(the consistency report under 'consistency', null when not run)")
    parser.add_argument("--consistency-sample", type=int, default=256, metavar="N",
                        help="clips compared per convention pair (default 256)")
    parser.add_argument("--no-consistency", action="store_true", help="skip the cross-convention consistency check")


def _sources(root) -> dict:
    """How the dataset and each convention were made, as the manifest records it (`source`)."""
    from pathlib import Path

    try:
        manifest = json.loads((Path(root) / "manifest.json").read_bytes())
        convs = manifest.get("conventions", {})
        out = {c: e["source"] for c, e in convs.items() if isinstance(e, dict) and isinstance(e.get("source"), dict)}
        if isinstance(manifest.get("source"), dict):
            out["dataset"] = manifest["source"]
        return out
    except (OSError, ValueError, AttributeError):  # check_dataset reports an unreadable manifest
        return {}


def check(root, *, consistency: bool = True, sample: int = 256, seed: int = 0) -> dict:
    """check_dataset's report, the manifest's `sources`, and for two or more conventions the
    consistency report (ConsistencyReport.to_dict()) under "consistency"; each inconsistent
    pair is a problem."""
    from msclr_core.consistency import check_dataset_consistency
    from msclr_core.data.dataset import check_dataset
    from msclr_core.errors import ConfigError, DataError

    if sample < 1:
        raise ConfigError(f"--consistency-sample must be >= 1, got {sample}")
    report = check_dataset(root)
    report["sources"], report["consistency"] = _sources(root), None
    if not consistency or len(report["conventions"]) < 2:
        return report
    try:
        rep = check_dataset_consistency(root, sample=sample, seed=seed)
    except (DataError, ConfigError) as err:
        report["problems"].append(f"consistency check not possible: {err}")
    else:
        report["consistency"] = rep.to_dict()
        report["problems"] += rep.messages()
        bad = {c for p in rep.pairs if p.status == "fault" for c in (p.a, p.b)}
        report["warnings"] += [f"{c} was imported from pose files with --frame {src.get('frame')}: if it is the one "
                               "at fault, re-import it with the estimator's frame (msclr data import poses --help)"
                               for c, src in report["sources"].items() if c in bad and src.get("kind") == "poses"]
    report["ok"] = not report["problems"]
    return report


def _pair_line(p: dict) -> str:
    if p["status"] != "ok":
        return f"    {p['message']}"
    corr = " ".join(f"{a} {v:+.2f}" for a, v in p["corr"].items())
    return f"    {p['message']} (corr {corr}, scale {p['scale']:.2f}, lag {p['lag']}, {p['clips']} clips)"


def main(args) -> int:
    report = check(args.dir, consistency=not args.no_consistency, sample=args.consistency_sample)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['root']}: {report['samples']} samples, {report['classes']} classes")
        for conv, info in report["conventions"].items():
            print(f"  {conv}: shape {info['shape']} ({info['unit']})")
        for proto, parts in report["splits"].items():
            print(f"  split {proto}: " + ", ".join(f"{p} {n}" for p, n in parts.items()))
        for what, src in report["sources"].items():
            print(f"  source of {what}: " + ", ".join(f"{k} {v}" for k, v in src.items()))
        cons = report["consistency"]
        if cons is not None:
            print(f"  consistency ({cons['sample']} clips per pair, seed {cons['seed']}, {cons['seconds']:.2f} s):")
            for p in cons["pairs"]:
                print(_pair_line(p))
                for w in p["warnings"]:
                    print(f"      warning: {w}")
        for w in report["warnings"]:
            print(f"  warning: {w}")
        for p in report["problems"]:
            print(f"  PROBLEM: {p}")
        print("ok" if report["ok"] else f"{len(report['problems'])} problem(s)")
    return 0 if report["ok"] else 1
