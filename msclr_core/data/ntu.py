"""Raw NTU RGB+D `.skeleton` files -> the msclr dataset format.

The file format is described in `ntu_reader.py`.

Reading: `ntu_reader.parse_skeleton` (an optional C scanner, then a vectorised numpy fast path
over the raw bytes, then a strict line parser; bit-identical results; malformed files raise
SkeletonFormatError naming the file, the 1-based LINE and the field).

Bodies: each distinct bodyID (in order of first appearance) gets a slot; joints with a
non-finite coordinate are zeroed (treated as untracked, counted in `nan_joints`). `to_clip`
selects the bodies of the clip (`BODY_SELECTIONS`, `msclr data ntu --bodies`):
- "most-active" (default): the `max_bodies` most active bodies (activity = sum over joints and
  axes of the temporal variance of the position over the frames where the body is present: a
  person moves, a misdetected object or a flickering ghost barely does), in order of first
  appearance, each in one slot for the whole clip;
- "official": what the official gendata (ST-GCN / AimCLR `ntu_gendata.py`) does: in each
  frame the first `max_bodies` bodies of that frame's list, in file order (slot = position in
  the frame's list, so a body changes slot when a body listed before it disappears).
The choice is recorded in the dataset manifest (`source.bodies`).

`split_size_report` compares the split sizes of a build with the official ones (meaningful
on the full set only; a subset is reported as a subset).
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import read_regular_bytes

from .ntu_reader import NUM_JOINTS, RawSkeleton, SkeletonFormatError, parse_skeleton  # noqa: F401 - public names
from .preprocess import STEPS, preprocess_clip

CONVENTION = "ntu-rgb+d"
NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
RESOURCES = Path(__file__).with_name("resources")

# Training subjects / cameras / setups of the standard protocols (all other samples are test).
NTU60_XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN | {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82,
                                        83, 84, 85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103}
XVIEW_TRAIN_CAMERAS = {2, 3}
# benchmark -> (max setup id, number of classes, {protocol: meta -> is_train}, missing list)
BENCHMARKS = {
    "ntu60": (17, 60, {"xsub": lambda m: m["subject"] in NTU60_XSUB_TRAIN,
                       "xview": lambda m: m["camera"] in XVIEW_TRAIN_CAMERAS}, "ntu60_missing.txt"),
    "ntu120": (32, 120, {"xsub120": lambda m: m["subject"] in NTU120_XSUB_TRAIN,
                         "xset120": lambda m: m["setup"] % 2 == 0}, "ntu120_missing.txt"),
}
# Official sizes of the full sets after the missing-skeleton list: benchmark -> protocol -> (train, test)
EXPECTED_SPLITS = {
    "ntu60": {"xsub": (40091, 16487), "xview": (37646, 18932)},
    "ntu120": {"xsub120": (63026, 50919), "xset120": (54468, 59477)},
}
BODY_SELECTIONS = ("most-active", "official")


def parse_sample_name(name: str) -> dict:
    """'S001C002P003R002A013' (or a path to it) -> {setup, camera, subject, replication, action}."""
    stem = Path(str(name)).name.split(".")[0]
    m = NAME_RE.fullmatch(stem)
    if not m:
        raise DataError("not an NTU sample name SsssCcccPpppRrrrAaaa", path=name, field="name")
    return dict(zip(("setup", "camera", "subject", "replication", "action"), map(int, m.groups())))


def missing_samples(benchmark: str) -> set[str]:
    """The dataset authors' list of samples with missing skeletons (302 for ntu60, 535 for ntu120)."""
    text = (RESOURCES / BENCHMARKS[benchmark][3]).read_text()
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}


@dataclass
class SkeletonFile:
    path: str
    xyz: np.ndarray  # (frames, bodies, 25, 3) float32, zeros where a body is absent
    present: np.ndarray  # (frames, bodies) bool
    body_ids: list[int]
    nan_joints: int = 0
    rank: np.ndarray | None = None  # (frames, bodies) int32: position in the frame's body list, -1 absent

    @property
    def activity(self) -> np.ndarray:
        """Per body: Σ over joints and axes of the position variance over its present frames."""
        act = np.zeros(len(self.body_ids))
        for b in range(len(self.body_ids)):
            pts = self.xyz[self.present[:, b], b].astype(np.float64)
            act[b] = pts.var(axis=0).sum() if len(pts) > 1 else 0.0
        return act

    def to_clip(self, max_bodies: int = 2, bodies: str = "most-active") -> np.ndarray:
        """C×T×V×M float32 clip: the `max_bodies` most active bodies (first-appearance order),
        or with bodies="official" the first `max_bodies` bodies of each frame's list."""
        check_bodies(bodies)
        out = np.zeros((3, self.xyz.shape[0], NUM_JOINTS, max_bodies), np.float32)
        if bodies == "official":
            f, s = np.nonzero(self.present & (self.rank < max_bodies))
            out[:, f, :, self.rank[f, s]] = self.xyz[f, s].transpose(0, 2, 1)  # (records, C, V)
            return out
        order = np.argsort(-self.activity, kind="stable")[:max_bodies]
        keep = np.sort(order)  # slots are numbered by first appearance
        out[..., :len(keep)] = self.xyz[:, keep].transpose(3, 0, 2, 1)
        return out


def check_bodies(bodies: str) -> str:
    if bodies not in BODY_SELECTIONS:
        raise DataError(f"unknown body selection {bodies!r} (known: {', '.join(BODY_SELECTIONS)})", field="bodies")
    return bodies


# ----------------------------------------------------------------------------- reading

def read_skeleton(path) -> SkeletonFile:
    data = read_regular_bytes(path, error=SkeletonFormatError)  # a FIFO would block forever
    return _assemble(str(path), parse_skeleton(str(path), data))


def _slots(frame_of: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Slot of every body record and each slot's bodyID: one slot per (bodyID, repeat within
    its frame), numbered by first appearance."""
    uniq, first, slot = np.unique(ids, return_index=True, return_inverse=True)
    slot = slot.reshape(-1)
    if not len(ids) or np.bincount(frame_of * len(uniq) + slot).max() == 1:  # no bodyID twice in a frame: one slot per ID
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        return rank[slot], uniq[order].tolist()
    slots: dict[tuple[int, int], int] = {}
    slot_of, seen, last_frame = [], {}, -1
    for f, body in zip(frame_of.tolist(), ids.tolist()):
        if f != last_frame:
            seen, last_frame = {}, f
        k = seen[body] = seen.get(body, -1) + 1
        slot_of.append(slots.setdefault((body, k), len(slots)))
    return np.asarray(slot_of, np.int64), [b for b, _ in slots]


def _assemble(path, raw: RawSkeleton) -> SkeletonFile:
    """Put every body record in its slot; zero non-finite joints."""
    slot_of, body_ids = _slots(raw.frame_of, raw.ids)
    out = np.zeros((raw.n_frames, len(body_ids), NUM_JOINTS, 3), np.float32)
    present = np.zeros((raw.n_frames, len(body_ids)), bool)
    with np.errstate(over="ignore"):  # beyond float32: inf, zeroed below like NaN
        xyz = raw.xyz.astype(np.float32)
    bad = np.zeros(xyz.shape[:2], bool)
    if not np.isfinite(xyz).all():  # (one reduction over everything first: the common case)
        bad = ~np.isfinite(xyz).all(axis=-1)
        xyz[bad] = 0.0
    out[raw.frame_of, slot_of] = xyz
    present[raw.frame_of, slot_of] = True
    rank = np.full(present.shape, -1, np.int32)  # records are in file order, so frame_of is sorted
    rank[raw.frame_of, slot_of] = np.arange(len(raw.frame_of)) - np.searchsorted(raw.frame_of, raw.frame_of)
    return SkeletonFile(path, out, present, body_ids, int(bad.sum()), rank)


# ----------------------------------------------------------------------------- dataset build

@dataclass
class BuildReport:
    dataset: object  # msclr_core.data.dataset.Dataset
    bad: list[tuple[str, str]]  # (file, error) skipped with skip_bad
    skipped_missing: int  # files on the missing-skeleton list
    empty: int  # clips with no body at all (kept, all zeros)


def _load_clip(job):
    path, steps, T, pad_to, bodies = job
    try:
        skel = read_skeleton(path)
    except SkeletonFormatError as err:
        return None, err, False
    clip = preprocess_clip(skel.to_clip(2, bodies), CONVENTION, steps, T=T, pad_to=pad_to)
    return clip, None, not skel.present.any()


def build_ntu_dataset(skeleton_dir, out_dir, *, benchmark: str = "ntu60", steps=STEPS, T: int = 50,
                      pad_to: int = 300, workers: int = 1, skip_bad: bool = False, overwrite: bool = False,
                      chunksize: int = 8, bodies: str = "most-active") -> BuildReport:
    """Stream every .skeleton of `skeleton_dir` into a dataset at `out_dir` (atomic).

    Samples are sorted by name; files on the benchmark's missing-skeleton list and (for
    ntu60) setups above 17 are left out. Protocols: ntu60 -> xsub, xview; ntu120 -> xsub120,
    xset120. Without skip_bad the first bad file raises its SkeletonFormatError and nothing
    is written; with it bad files are listed in the report and left out. `bodies`: the body
    selection (module docstring), recorded in the manifest with the preprocessing steps.
    """
    from .writer import DatasetWriter

    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r} (known: {sorted(BENCHMARKS)})", field="benchmark")
    check_bodies(bodies)
    max_setup, n_classes, protocols, _ = BENCHMARKS[benchmark]
    missing = missing_samples(benchmark)
    files, metas, bad, n_missing = [], [], [], 0
    for path in sorted(Path(skeleton_dir).glob("*.skeleton"), key=lambda p: p.name):
        try:
            meta = parse_sample_name(path.name)
        except DataError as err:
            if not skip_bad:
                raise
            bad.append((str(path), str(err)))
            continue
        if path.stem in missing:
            n_missing += 1
        elif meta["setup"] <= max_setup and meta["action"] <= n_classes:
            files.append(path)
            metas.append(meta)
    if not files:
        raise DataError(f"no {benchmark} .skeleton files found", path=skeleton_dir)

    frames = T if "resize" in set(steps) else pad_to
    names, kept_meta, empty = [], [], 0
    jobs = [(str(p), tuple(steps), T, pad_to, bodies) for p in files]
    ctx = get_context("spawn") if workers > 1 else None
    pool = ctx.Pool(workers) if ctx else None
    try:
        with DatasetWriter(out_dir, capacity=len(files), shapes={CONVENTION: (3, frames, NUM_JOINTS, 2)},
                           units={CONVENTION: "m"}, overwrite=overwrite) as writer:
            window = max(1, workers * chunksize * 4)  # bounds the results in flight
            for lo in range(0, len(jobs), window):
                part = jobs[lo:lo + window]
                results = pool.imap(_load_clip, part, chunksize) if pool else map(_load_clip, part)
                for k, (clip, err, is_empty) in enumerate(results, start=lo):
                    if err is not None:
                        if not skip_bad:
                            raise err
                        bad.append((str(files[k]), str(err)))
                        continue
                    writer.write(len(names), {CONVENTION: clip})
                    names.append(files[k].stem)
                    kept_meta.append(metas[k])
                    empty += is_empty
                _release_written(writer)
            if not names:  # skip_bad skipped everything: an error, and nothing is written
                raise DataError(f"all {len(bad)} {benchmark} .skeleton file(s) are bad, nothing to write; "
                                f"first: {bad[0][1]}", path=skeleton_dir)
            splits = {}
            for proto, is_train in protocols.items():
                train = [i for i, m in enumerate(kept_meta) if is_train(m)]
                test = [i for i, m in enumerate(kept_meta) if not is_train(m)]
                splits[proto] = {"train": train, "test": test}
            meta_cols = {c: [m[c] for m in kept_meta] for c in ("subject", "camera", "setup", "replication")}
            ds = writer.commit(name=f"{benchmark}-{'frame%d' % T if 'resize' in set(steps) else 'raw'}",
                               classes=[f"A{a:03d}" for a in range(1, n_classes + 1)], sample_names=names,
                               labels=[m["action"] - 1 for m in kept_meta], meta=meta_cols, splits=splits,
                               source={"kind": "ntu-skeleton", "benchmark": benchmark, "bodies": bodies,
                                       "steps": list(steps), "frames": frames})
    finally:
        if pool:
            pool.terminate()
    return BuildReport(ds, bad, n_missing, empty)


def split_size_report(benchmark: str, splits: dict[str, dict[str, int]], samples: int) -> dict:
    """The split sizes of a build ({protocol: {part: n}}) beside the official ones.

    The official sizes describe the full set (every sample but the missing-skeleton list):
    `full_set` says whether this build has that many samples, `match` whether every size
    agrees (None for a subset, where they cannot)."""
    expected = EXPECTED_SPLITS[benchmark]
    total = sum(next(iter(expected.values())))
    rows = {proto: {part: {"got": splits.get(proto, {}).get(part), "expected": want}
                    for part, want in zip(("train", "test"), sizes)} for proto, sizes in expected.items()}
    full = samples == total
    match = all(r["got"] == r["expected"] for parts in rows.values() for r in parts.values()) if full else None
    return {"samples": samples, "expected_samples": total, "full_set": full, "match": match, "splits": rows}


def _release_written(writer) -> None:
    """Flush the rows written so far and drop their pages from this process: dirty pages of
    the output memmap count as resident memory, so without this the peak RSS of a build
    grows by one row (30 KB for frame-50 NTU) per sample. The data stays in the file."""
    for array in writer.arrays.values():
        array.flush()
        if hasattr(array.base, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            array.base.madvise(mmap.MADV_DONTNEED)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
