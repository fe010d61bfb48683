"""`msclr data ntu SKELETON_DIR --out DIR`: build a dataset from raw NTU RGB+D .skeleton files."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("skeleton_dir", help="folder with the .skeleton files (nturgb+d_skeletons)")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--benchmark", choices=["ntu60", "ntu120"], default="ntu60",
                        help="ntu60: S001-S017, protocols xsub/xview; ntu120: all setups, protocols xsub120/xset120")
    parser.add_argument("--bodies", choices=["most-active", "official"], default="most-active",
                        help="which two bodies a clip keeps: most-active (default) = the two bodies that move "
                             "most over the clip, each in a fixed slot (drops ghost detections); official = the "
                             "first two bodies listed in each frame, as the official ntu_gendata (use it to "
                             "reproduce the paper). Recorded in the manifest")
    parser.add_argument("--workers", type=int, default=0, help="parallel processes (default: all CPUs)")
    parser.add_argument("--skip-bad", action="store_true", help="list malformed files and continue without them")
    parser.add_argument("--no-trim", action="store_true", help="use every frame, not the official valid length")
    parser.add_argument("--no-root-relative", action="store_true", help="keep camera coordinates")
    parser.add_argument("--no-resize", action="store_true", help="zero-pad to --pad-to frames instead of resizing")
    parser.add_argument("--no-rotate", action="store_true", help="skip the shoulder y-rotation")
    parser.add_argument("--frames", type=int, default=50, help="frames after resizing (default 50)")
    parser.add_argument("--pad-to", type=int, default=300, help="frames with --no-resize (default 300)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON document")


def _peak_rss_mb() -> dict:
    """Peak resident memory of this process and of the largest worker process (MB, Linux)."""
    import resource

    from . import peak_rss_mb

    children = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return {"peak_rss_mb": peak_rss_mb(), "workers_peak_rss_mb": children}


def _size_lines(sizes: dict, benchmark: str) -> list[str]:
    """Per protocol the split sizes beside the official ones, then what the comparison means."""
    total = f"{sizes['expected_samples']:,}"
    if sizes["full_set"]:
        lines = [f"  {proto}: " + ", ".join(f"{part} {r['got']} (official {r['expected']:,})"
                                            for part, r in parts.items()) for proto, parts in sizes["splits"].items()]
        if sizes["match"]:
            return lines + [f"  full {benchmark} set ({total} samples): every split size matches the official one"]
        return lines + [f"  WARNING: the full {benchmark} set ({total} samples) but split sizes differ from the "
                        "official ones: check the file names and the missing-skeleton list"]
    lines = [f"  {proto}: " + ", ".join(f"{part} {r['got']}" for part, r in parts.items())
             + " (full set: " + " / ".join(f"{r['expected']:,}" for r in parts.values()) + ")"
             for proto, parts in sizes["splits"].items()]
    return lines + [f"  a subset: {sizes['samples']:,} of the {total} samples of the full {benchmark} set, "
                    "so the official split sizes do not apply"]


def main(args) -> int:
    from msclr_core.data.ntu import build_ntu_dataset, cpu_count, split_size_report
    from msclr_core.data.preprocess import STEPS

    off = {"trim": args.no_trim, "root_relative": args.no_root_relative, "resize": args.no_resize,
           "rotate": args.no_rotate}
    steps = [s for s in STEPS if not off[s]]
    start = time.perf_counter()
    rep = build_ntu_dataset(args.skeleton_dir, args.out, benchmark=args.benchmark, steps=steps, T=args.frames,
                            pad_to=args.pad_to, workers=args.workers or cpu_count(), skip_bad=args.skip_bad,
                            overwrite=args.overwrite, bodies=args.bodies)
    seconds = time.perf_counter() - start
    ds = rep.dataset
    splits = {p: {part: len(i) for part, i in parts.items()} for p, parts in ds.splits.items()}
    summary = {
        "out": str(ds.root), "benchmark": args.benchmark, "bodies": args.bodies, "steps": steps, "samples": len(ds),
        "shape": list(ds.conventions["ntu-rgb+d"].shape), "splits": splits,
        "split_sizes": split_size_report(args.benchmark, splits, len(ds)),
        "skipped_missing": rep.skipped_missing, "empty_clips": rep.empty,
        "bad": [{"file": f, "error": e} for f, e in rep.bad],
        "seconds": round(seconds, 3), "files_per_s": round((len(ds) + len(rep.bad)) / max(seconds, 1e-9), 1),
        **_peak_rss_mb(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['samples']} samples {summary['shape']} to {summary['out']} in {seconds:.1f} s "
              f"(peak RSS {summary['peak_rss_mb']} MB, workers {summary['workers_peak_rss_mb']} MB)")
        print(f"  bodies: {args.bodies}" + (" (the official gendata's)" if args.bodies == "official" else ""))
        print("\n".join(_size_lines(summary["split_sizes"], args.benchmark)))
        print(f"  skipped {rep.skipped_missing} on the missing-skeleton list, {rep.empty} clip(s) without any body")
        for b in summary["bad"]:
            print(f"  BAD {b['file']}: {b['error']}")
    return 0
