"""`msclr bench read DIR`: time the NTU .skeleton reader on one core against the official one."""

from __future__ import annotations

import argparse

from . import emit_report, peak_rss_mb

OFFICIAL_FILES_PER_S, OFFICIAL_FRAMES_PER_S = 17.6, 2176.0  # AimCLR read_xyz, 2-core dev machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder with .skeleton files")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many files")
    parser.add_argument("--repeat", type=int, default=3,
                        help="read the folder this many times and report the fastest pass (a shared VM's "
                             "speed drifts by +-20%% over seconds; every pass is listed in `passes_files_per_s`)")
    parser.add_argument("--strict", action="store_true",
                        help="also time the line-by-line fallback parser (an in-run baseline for noisy machines)")
    parser.add_argument("--baseline", type=int, default=0, metavar="N",
                        help="also time the official reader's algorithm on the first N files, between our passes "
                             "(an in-run reference: `ratio_in_run` does not depend on how fast the machine is today)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON to this file")


def _time_reader(read, files, errors=None):
    """(wall seconds, CPU seconds, frames, bad files): malformed files are timed too (the
    error path) and counted; `errors` are the exceptions that mark one (default DataError).
    CPU time leaves out the time other processes held the core."""
    import time

    from msclr_core.errors import DataError

    errors = errors or DataError
    frames = bad = 0
    start, cpu = time.perf_counter(), time.process_time()
    for f in files:
        try:
            frames += read(f)
        except errors:
            bad += 1
    return time.perf_counter() - start, time.process_time() - cpu, frames, bad


def official_algorithm(path, max_body: int = 2, num_joint: int = 25) -> int:
    """The official reader's algorithm (ST-GCN/AimCLR `read_xyz`), rewritten for timing only:
    one readline per line, a dict of floats per body and per joint (key lists built in the
    loops, as there), then x, y, z copied joint by joint into a 3 x T x 25 x 2 array.
    Returns the number of frames."""
    import numpy as np

    with open(path) as f:
        frames = []
        for _ in range(int(f.readline())):
            bodies = []
            for _ in range(int(f.readline())):
                body_keys = ["bodyID", "clipedEdges", "handLeftConfidence", "handLeftState", "handRightConfidence",
                             "handRightState", "isResticted", "leanX", "leanY", "trackingState"]
                body = {k: float(v) for k, v in zip(body_keys, f.readline().split())}
                body["joints"] = []
                for _ in range(int(f.readline())):
                    joint_keys = ["x", "y", "z", "depthX", "depthY", "colorX", "colorY", "orientationW",
                                  "orientationX", "orientationY", "orientationZ", "trackingState"]
                    body["joints"].append({k: float(v) for k, v in zip(joint_keys, f.readline().split())})
                bodies.append(body)
            frames.append(bodies)
    out = np.zeros((3, len(frames), num_joint, max_body))
    for t, bodies in enumerate(frames):
        for m, body in enumerate(bodies):
            for j, joint in enumerate(body["joints"]):
                if m < max_body and j < num_joint:
                    out[:, t, j, m] = [joint["x"], joint["y"], joint["z"]]
    return len(frames)


def main(args) -> int:
    import os
    from pathlib import Path

    from msclr_core.data import ntu, ntu_reader
    from msclr_core.errors import DataError

    if hasattr(os, "sched_setaffinity"):  # one core, as in the official measurement
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    files = sorted(Path(args.dir).glob("*.skeleton"))[: args.limit or None]
    if not files:
        raise DataError("no .skeleton files", path=args.dir)
    passes, baseline = [], []
    for _ in range(max(1, args.repeat)):
        passes.append(_time_reader(lambda f: ntu.read_skeleton(f).xyz.shape[0], files))
        if args.baseline:
            # (the official algorithm fails on a malformed file with whatever int()/float()/indexing raise)
            baseline.append(_time_reader(official_algorithm, files[:args.baseline], (ValueError, IndexError)))
    seconds, cpu_seconds, frames, bad = min(passes)
    report = {
        "dir": str(args.dir), "files": len(files), "frames": frames, "bad_files": bad, "seconds": round(seconds, 4),
        "files_per_s": round(len(files) / seconds, 1), "frames_per_s": round(frames / seconds, 1),
        "official_files_per_s": OFFICIAL_FILES_PER_S, "official_frames_per_s": OFFICIAL_FRAMES_PER_S,
        "ratio": round(len(files) / seconds / OFFICIAL_FILES_PER_S, 2),
        "frames_ratio": round(frames / seconds / OFFICIAL_FRAMES_PER_S, 2),
        # on a shared machine: the rate on the CPU time this process got, and how busy the machine was
        "cpu_seconds": round(cpu_seconds, 4), "cpu_files_per_s": round(len(files) / max(cpu_seconds, 1e-9), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cores": 1, "passes": len(passes),
        "passes_files_per_s": [round(len(files) / p[0], 1) for p in passes],
    }
    if baseline:
        b_sec = min(baseline)[0]
        report["baseline_files"] = min(args.baseline, len(files))
        report["baseline_files_per_s"] = round(report["baseline_files"] / b_sec, 1)
        report["baseline_passes_files_per_s"] = [round(report["baseline_files"] / p[0], 1) for p in baseline]
        report["ratio_in_run"] = round(report["files_per_s"] / report["baseline_files_per_s"], 2)
    if args.strict:
        s_sec, _, _, _ = _time_reader(lambda f: ntu_reader._read_strict(str(f), f.read_bytes()).n_frames, files)
        report["strict_files_per_s"] = round(len(files) / s_sec, 1)
        report["ratio_vs_strict_in_run"] = round(s_sec / seconds, 2)
    report["peak_rss_mb"] = peak_rss_mb()
    emit_report(args, report, f"{report['files']} files, {report['frames']} frames in {seconds:.2f} s on one core: "
                f"{report['files_per_s']} files/s, {report['frames_per_s']} frames/s "
                f"({report['ratio']}x the official {OFFICIAL_FILES_PER_S} files/s; {report['cpu_files_per_s']} files/s of CPU time "
                f"at load {report['load_avg_1m']}); peak RSS {report['peak_rss_mb']} MB")
    return 0
