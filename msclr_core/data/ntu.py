"""Raw NTU RGB+D `.skeleton` files -> the msclr dataset format.

File format (one value list per line, single spaces):
    numFrame
    per frame:  numBody
      per body: bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence
                handRightState isResticted leanX leanY trackingState        (10 values)
                numJoint                                                     (25)
                25 × "x y z depthX depthY colorX colorY oriW oriX oriY oriZ trackingState"

Reading: `read_skeleton` first tries a vectorised fast path over the raw bytes: the line
structure comes from newline/space positions (a line's number of values tells its kind), the
counts and body IDs are decoded as exact int64 (IDs have 17 digits: float64 would merge them),
and only the xyz substrings are gathered and parsed by np.fromstring (correctly rounded, the
same float as float(text)). Anything unusual (NaN, tabs, bad counts, truncation, stray characters) falls back to
a strict line-by-line parser, which either reads the file or raises SkeletonFormatError naming
the file, the 1-based LINE and the field. Fields other than xyz and the counts are checked for
count and character set only.

Bodies: each distinct bodyID (in order of first appearance) gets a slot; joints with a
non-finite coordinate are zeroed (treated as untracked, counted in `nan_joints`). `to_clip`
keeps the `max_bodies` most active bodies (activity = sum over joints and axes of the temporal
variance of the position over the frames where the body is present: a person moves, a
misdetected object or a flickering ghost barely does), in order of first appearance. This
differs from the official gendata, which keeps the first two bodies of each frame's list.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError

from .preprocess import STEPS, preprocess_clip

CONVENTION, NUM_JOINTS, INFO_FIELDS, JOINT_FIELDS = "ntu-rgb+d", 25, 10, 12
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


class SkeletonFormatError(DataError):
    """A .skeleton file is malformed; `line` is 1-based."""

    def __init__(self, message, *, path=None, sample=None, line=None, field=None):
        super().__init__(message, path=path, sample=sample, line=line, field=field)
        self.detail = message

    def __reduce__(self):  # keep path/line/field when sent back from a worker process
        return (_rebuild_error, (self.detail, self.path, self.sample, self.line, self.field))


def _rebuild_error(detail, path, sample, line, field):
    return SkeletonFormatError(detail, path=path, sample=sample, line=line, field=field)


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

    @property
    def activity(self) -> np.ndarray:
        """Per body: Σ over joints and axes of the position variance over its present frames."""
        act = np.zeros(len(self.body_ids))
        for b in range(len(self.body_ids)):
            pts = self.xyz[self.present[:, b], b].astype(np.float64)
            act[b] = pts.var(axis=0).sum() if len(pts) > 1 else 0.0
        return act

    def to_clip(self, max_bodies: int = 2) -> np.ndarray:
        """C×T×V×M float32 clip of the `max_bodies` most active bodies (first-appearance order)."""
        order = np.argsort(-self.activity, kind="stable")[:max_bodies]
        keep = np.sort(order)  # slots are numbered by first appearance
        out = np.zeros((3, self.xyz.shape[0], NUM_JOINTS, max_bodies), np.float32)
        out[..., :len(keep)] = self.xyz[:, keep].transpose(3, 0, 2, 1)
        return out


# ----------------------------------------------------------------------------- reading

class _NotFast(Exception):
    """The fast path cannot vouch for this file; the strict parser decides."""


_ALLOWED = b"0123456789.-+eE \n\r"  # anything else sends the file to the strict parser
_IPOW10 = 10 ** np.arange(19, dtype=np.int64)
_BODY_LINES = 2 + NUM_JOINTS  # info line, numJoint line, joint lines


def read_skeleton(path) -> SkeletonFile:
    data = Path(path).read_bytes()
    try:
        frame_of, ids, xyz, n_frames = _read_fast(data)
    except _NotFast:
        frame_of, ids, xyz, n_frames = _read_strict(str(path), data)
    return _assemble(str(path), frame_of, ids, xyz, n_frames)


def _gather(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Concatenate the byte ranges [s, e) of `a`."""
    n = e - s
    off = np.cumsum(n) - n
    return a[np.repeat(s - off, n) + np.arange(int(n.sum()))]


def _ints(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Exact int64 values of the all-digit byte ranges [s, e) (a trailing CR is ignored)."""
    e = e - (a[np.maximum(e - 1, 0)] == 13)
    n = e - s
    if not len(n):
        return np.zeros(0, np.int64)
    if n.min() < 1 or n.max() > 18:
        raise _NotFast
    d = _gather(a, s, e).astype(np.int64) - 48
    if d.min() < 0 or d.max() > 9:
        raise _NotFast
    off = np.cumsum(n) - n
    place = np.repeat(off + n - 1, n) - np.arange(len(d))  # n-1 … 0 within each range
    return np.add.reduceat(d * _IPOW10[place], off)


def _read_fast(data: bytes):
    """Vectorised reader for well-formed files; raises _NotFast on anything else."""
    if not data or data.translate(None, _ALLOWED):
        raise _NotFast  # stray characters (letters, NaN, tabs, non-ASCII)
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(a)]))
    if starts[-1] >= len(a):  # final newline: no last line
        starts, ends = starts[:-1], ends[:-1]
    n_lines = len(starts)
    cr = np.flatnonzero(a == 13)
    if len(cr) and not (np.append(a, 0)[cr + 1] == 10).all():
        raise _NotFast  # a CR that does not end a line
    spaces = np.flatnonzero(a == 32)
    lo = np.searchsorted(spaces, starts)
    per_line = np.searchsorted(spaces, ends) - lo  # values per line − 1 (single spaces)
    # Line kinds follow from the number of values: 10 = body info, then numJoint, 25 joint lines.
    info = np.flatnonzero(per_line == INFO_FIELDS - 1)
    joints = (info[:, None] + 2 + np.arange(NUM_JOINTS)).ravel()
    if len(info) and joints[-1] >= n_lines:
        raise _NotFast  # truncated
    expected = np.zeros(n_lines, np.int64)
    expected[joints] = JOINT_FIELDS - 1
    expected[info] = INFO_FIELDS - 1
    body = np.zeros(n_lines, bool)
    body[info], body[info + 1], body[joints] = True, True, True
    if not np.array_equal(per_line, expected) or body.sum() != len(info) * _BODY_LINES:
        raise _NotFast
    if not (_ints(a, starts[info + 1], ends[info + 1]) == NUM_JOINTS).all():
        raise _NotFast
    # The other lines are numFrame and one numBody per frame, at the positions their counts imply.
    frame_lines = np.flatnonzero(~body)
    counts = _ints(a, starts[frame_lines], ends[frame_lines])
    if not len(counts) or counts[0] != len(counts) - 1:
        raise _NotFast
    n_bodies = counts[1:]
    at = 1 + np.arange(len(n_bodies)) + _BODY_LINES * (np.cumsum(n_bodies) - n_bodies)
    if not np.array_equal(frame_lines[1:], at):
        raise _NotFast
    frame_of = np.repeat(np.arange(len(n_bodies)), n_bodies)
    ids = _ints(a, starts[info], spaces[lo[info]]).tolist()
    # xyz = the first three values of each joint line, each ending at a space
    xyz_text = _gather(a, starts[joints], spaces[lo[joints] + 2] + 1).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partial parse is caught by the length check below
        val = np.fromstring(xyz_text, sep=" ") if xyz_text else np.zeros(0)
    if len(val) != len(joints) * 3:
        raise _NotFast
    return frame_of.tolist(), ids, val.reshape(len(info), NUM_JOINTS, 3), int(counts[0])


def _read_strict(path: str, data: bytes):
    """Line-by-line parser: slow, general whitespace, exact diagnostics."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise SkeletonFormatError("non-ASCII byte", path=path, line=data[:err.start].count(b"\n") + 1) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    li = 0

    def take(field, n):
        nonlocal li
        if li >= len(lines):
            raise SkeletonFormatError(f"file ends early, expected {field}", path=path, line=li + 1, field=field)
        toks = lines[li].split()
        li += 1
        if len(toks) != n:
            raise SkeletonFormatError(f"expected {n} value(s), got {len(toks)}", path=path, line=li, field=field)
        for t in toks:
            try:
                float(t)
            except ValueError:
                raise SkeletonFormatError(f"non-numeric token {t!r}", path=path, line=li, field=field) from None
        return toks

    def count(field):
        tok = take(field, 1)[0]
        if not tok.isdigit():
            raise SkeletonFormatError(f"expected a count >= 0, got {tok!r}", path=path, line=li, field=field)
        return int(tok)

    n_frames, frame_of, ids, xyz = count("numFrame"), [], [], []
    for f in range(n_frames):
        for _ in range(count("numBody")):
            body_id = take("bodyInfo", INFO_FIELDS)[0]
            if not body_id.isdigit():
                raise SkeletonFormatError(f"bodyID must be an integer, got {body_id!r}", path=path, line=li, field="bodyID")
            nj = count("numJoint")
            if nj != NUM_JOINTS:
                raise SkeletonFormatError(f"expected {NUM_JOINTS} joints, got {nj}", path=path, line=li, field="numJoint")
            xyz.append([[float(v) for v in take("joint", JOINT_FIELDS)[:3]] for _ in range(NUM_JOINTS)])
            frame_of.append(f)
            ids.append(int(body_id))
    if li < len(lines):
        raise SkeletonFormatError("unexpected data after the last frame", path=path, line=li + 1)
    return frame_of, ids, np.asarray(xyz, np.float64).reshape(-1, NUM_JOINTS, 3), n_frames


def _assemble(path, frame_of, ids, xyz, n_frames) -> SkeletonFile:
    """Give every (bodyID, repeat-within-frame) a slot; zero non-finite joints."""
    slots: dict[tuple[int, int], int] = {}
    slot_of, seen, last_frame = [], {}, -1
    for f, body in zip(frame_of, ids):
        if f != last_frame:
            seen, last_frame = {}, f
        k = seen[body] = seen.get(body, -1) + 1
        slot_of.append(slots.setdefault((body, k), len(slots)))
    out = np.zeros((n_frames, len(slots), NUM_JOINTS, 3), np.float32)
    present = np.zeros((n_frames, len(slots)), bool)
    xyz = np.asarray(xyz, np.float32).reshape(-1, NUM_JOINTS, 3)
    bad = ~np.isfinite(xyz).all(axis=-1)
    xyz[bad] = 0.0
    rows, cols = np.asarray(frame_of, np.int64), np.asarray(slot_of, np.int64)
    out[rows, cols] = xyz
    present[rows, cols] = True
    return SkeletonFile(path, out, present, [b for b, _ in slots], int(bad.sum()))


# ----------------------------------------------------------------------------- dataset build

@dataclass
class BuildReport:
    dataset: object  # msclr_core.data.dataset.Dataset
    bad: list[tuple[str, str]]  # (file, error) skipped with skip_bad
    skipped_missing: int  # files on the missing-skeleton list
    empty: int  # clips with no body at all (kept, all zeros)


def _load_clip(job):
    path, steps, T, pad_to = job
    try:
        skel = read_skeleton(path)
    except SkeletonFormatError as err:
        return None, err, False
    clip = preprocess_clip(skel.to_clip(2), CONVENTION, steps, T=T, pad_to=pad_to)
    return clip, None, not skel.present.any()


def build_ntu_dataset(skeleton_dir, out_dir, *, benchmark: str = "ntu60", steps=STEPS, T: int = 50,
                      pad_to: int = 300, workers: int = 1, skip_bad: bool = False, overwrite: bool = False,
                      chunksize: int = 8) -> BuildReport:
    """Stream every .skeleton of `skeleton_dir` into a dataset at `out_dir` (atomic).

    Samples are sorted by name; files on the benchmark's missing-skeleton list and (for
    ntu60) setups above 17 are left out. Protocols: ntu60 -> xsub, xview; ntu120 -> xsub120,
    xset120. Without skip_bad the first bad file raises its SkeletonFormatError and nothing
    is written; with it bad files are listed in the report and left out.
    """
    from .dataset import DatasetWriter

    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r} (known: {sorted(BENCHMARKS)})", field="benchmark")
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
    jobs = [(str(p), tuple(steps), T, pad_to) for p in files]
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
            splits = {}
            for proto, is_train in protocols.items():
                train = [i for i, m in enumerate(kept_meta) if is_train(m)]
                test = [i for i, m in enumerate(kept_meta) if not is_train(m)]
                splits[proto] = {"train": train, "test": test}
            meta_cols = {c: [m[c] for m in kept_meta] for c in ("subject", "camera", "setup", "replication")}
            ds = writer.commit(name=f"{benchmark}-{'frame%d' % T if 'resize' in set(steps) else 'raw'}",
                               classes=[f"A{a:03d}" for a in range(1, n_classes + 1)], sample_names=names,
                               labels=[m["action"] - 1 for m in kept_meta], meta=meta_cols, splits=splits)
    finally:
        if pool:
            pool.terminate()
    return BuildReport(ds, bad, n_missing, empty)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
