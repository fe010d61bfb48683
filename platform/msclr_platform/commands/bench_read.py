"""`msclr bench read DIR`: time the NTU .skeleton reader on one core against the official one."""

from __future__ import annotations

import argparse

from . import emit_report, peak_rss_mb

OFFICIAL_FILES_PER_S, OFFICIAL_FRAMES_PER_S = 17.6, 2176.0  # AimCLR read_xyz, 2-core dev machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder with .skeleton files")
    parser.add_argument("--limit", type=int, default=0, help="read at most this many files")
    parser.add_argument("--strict", action="store_true",
                        help="also time the line-by-line fallback parser (an in-run baseline for noisy machines)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON to this file")


def _time_reader(read, files):
    """(wall seconds, CPU seconds, frames, bad files): malformed files are timed too (the
    error path) and counted. CPU time leaves out the time other processes held the core."""
    import time

    from msclr_core.errors import DataError

    frames = bad = 0
    start, cpu = time.perf_counter(), time.process_time()
    for f in files:
        try:
            frames += read(f)
        except DataError:
            bad += 1
    return time.perf_counter() - start, time.process_time() - cpu, frames, bad


def main(args) -> int:
    import os
    import resource
    from pathlib import Path

    from msclr_core.data import ntu
    from msclr_core.errors import DataError

    if hasattr(os, "sched_setaffinity"):  # one core, as in the official measurement
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    files = sorted(Path(args.dir).glob("*.skeleton"))[: args.limit or None]
    if not files:
        raise DataError("no .skeleton files", path=args.dir)
    seconds, cpu_seconds, frames, bad = _time_reader(lambda f: ntu.read_skeleton(f).xyz.shape[0], files)
    report = {
        "dir": str(args.dir), "files": len(files), "frames": frames, "bad_files": bad, "seconds": round(seconds, 4),
        "files_per_s": round(len(files) / seconds, 1), "frames_per_s": round(frames / seconds, 1),
        "official_files_per_s": OFFICIAL_FILES_PER_S, "official_frames_per_s": OFFICIAL_FRAMES_PER_S,
        "ratio": round(len(files) / seconds / OFFICIAL_FILES_PER_S, 2),
        "frames_ratio": round(frames / seconds / OFFICIAL_FRAMES_PER_S, 2),
        # on a shared machine: the rate on the CPU time this process got, and how busy the machine was
        "cpu_seconds": round(cpu_seconds, 4), "cpu_files_per_s": round(len(files) / max(cpu_seconds, 1e-9), 1),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cores": 1,
    }
    if args.strict:
        s_sec, _, _, _ = _time_reader(lambda f: ntu._read_strict(str(f), f.read_bytes()).n_frames, files)
        report["strict_files_per_s"] = round(len(files) / s_sec, 1)
        report["ratio_vs_strict_in_run"] = round(s_sec / seconds, 2)
    report["peak_rss_mb"] = peak_rss_mb()
    emit_report(args, report, f"{report['files']} files, {report['frames']} frames in {seconds:.2f} s on one core: "
                f"{report['files_per_s']} files/s, {report['frames_per_s']} frames/s "
                f"({report['ratio']}x the official {OFFICIAL_FILES_PER_S} files/s; {report['cpu_files_per_s']} files/s of CPU time "
                f"at load {report['load_avg_1m']}); peak RSS {report['peak_rss_mb']} MB")
    return 0
