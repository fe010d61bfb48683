"""BVH reader with forward kinematics -> `MocapClip` (world joint positions in metres).

A joint's local rotation is the product of its rotation channels in the order they are
listed, e.g. `Zrotation Xrotation Yrotation` -> R = Rz·Rx·Ry. Position channels add to the
OFFSET. World: R_j = R_parent·R_local, p_j = p_parent + R_parent·(offset + translation).
BVH has no unit field: pass `unit` (default "cm", as in the Bandai and most BVH exports).

Every error is a DataError naming the file and line; numbers must be finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import read_regular_bytes

from .kinematics import UNITS_M, MocapClip, _compose, finite_float, positions_f32, whole_count

MAX_DEPTH = 256  # nesting of JOINT blocks; deeper is a broken file, not a skeleton
CHANNELS = {f"{a}{k}" for a in "xyz" for k in ("position", "rotation")}


def _bvh_tokens(path: Path):
    try:
        text = read_regular_bytes(path).decode("utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"cannot read BVH file: {err.strerror or err}", path=path) from None
    lines = text.splitlines()
    return lines, [(tok, n + 1) for n, line in enumerate(lines) for tok in line.split()]


def read_bvh(path, *, unit: str = "cm", end_sites: bool = True) -> MocapClip:
    """Read a BVH file and run forward kinematics. End Sites become joints named
    `<parent>_end` (head top, toe and finger tips) unless end_sites=False."""
    path = Path(path)
    if unit not in UNITS_M:
        raise DataError(f"unit must be one of {sorted(UNITS_M)}, got {unit!r}", path=path, field="unit")
    lines, toks = _bvh_tokens(path)
    pos = 0

    def take(expect=None):
        nonlocal pos
        if pos >= len(toks):
            raise DataError(f"unexpected end of file{f' (expected {expect!r})' if expect else ''}",
                            path=path, line=len(lines))
        tok, line = toks[pos]
        pos += 1
        if expect is not None and tok.upper() != expect.upper():
            raise DataError(f"expected {expect!r}, got {tok!r}", path=path, line=line)
        return tok, line

    def number(what):
        tok, line = take()
        return finite_float(tok, path=path, line=line, what=what)

    def count(what):
        tok, line = take()
        return whole_count(tok, path=path, line=line, what=what)

    names, parents, offsets, channels, is_end = [], [], [], [], []

    def joint(parent: int, end: bool, depth: int):
        name = f"{names[parent]}_end" if end else take()[0]
        _, line = take("{")
        if depth > MAX_DEPTH:
            raise DataError(f"joints nested more than {MAX_DEPTH} deep", path=path, line=line, field=name)
        j = len(names)
        names.append(name), parents.append(parent), is_end.append(end), channels.append([])
        take("OFFSET")
        offsets.append([number(f"OFFSET of {name}") for _ in range(3)])
        while True:
            tok, line = take()
            key = tok.upper()
            if key == "}":
                return
            if end:
                raise DataError(f"End Site may only hold an OFFSET, got {tok!r}", path=path, line=line)
            if key == "CHANNELS":
                for _ in range(count(f"CHANNELS count of {name}")):
                    ch, cline = take()
                    if ch.lower() not in CHANNELS:
                        raise DataError(f"unknown channel {ch!r}", path=path, line=cline, field=name)
                    channels[j].append(ch.lower())
            elif key == "JOINT":
                joint(j, False, depth + 1)
            elif key == "END":
                take("Site")
                joint(j, True, depth + 1)
            else:
                raise DataError(f"unexpected {tok!r} in joint {name!r}", path=path, line=line)

    take("HIERARCHY")
    take("ROOT")
    joint(-1, False, 0)
    take("MOTION")
    take("Frames:")
    frames = count("Frames")
    take("Frame")
    take("Time:")
    frame_time = number("Frame Time")
    motion = _read_motion(path, lines, first=toks[pos - 1][1], frames=frames, width=sum(map(len, channels)))

    scale = UNITS_M[unit]
    T, J = frames, len(names)
    glob_r = np.empty((J, T, 3, 3))
    glob_p = np.empty((J, T, 3))
    col = 0
    with np.errstate(over="ignore", invalid="ignore"):  # huge values: caught by positions_f32
        for j in range(J):
            trans = np.zeros((T, 3))
            rot_axes, rot_cols = "", []
            for ch in channels[j]:
                if ch.endswith("position"):
                    trans[:, "xyz".index(ch[0])] = motion[:, col]
                else:
                    rot_axes += ch[0]
                    rot_cols.append(motion[:, col])
                col += 1
            local_r = _compose(rot_axes, rot_cols) if rot_axes else np.broadcast_to(np.eye(3), (T, 3, 3))
            local_p = np.asarray(offsets[j]) + trans
            if parents[j] < 0:
                glob_r[j], glob_p[j] = local_r, local_p
            else:
                pr = glob_r[parents[j]]
                glob_r[j] = pr @ local_r
                glob_p[j] = glob_p[parents[j]] + np.einsum("tij,tj->ti", pr, local_p)
        keep = [j for j in range(J) if end_sites or not is_end[j]]
        world = glob_p[keep].transpose(1, 0, 2) * scale
    remap = {j: k for k, j in enumerate(keep)}
    kept_names = [names[j] for j in keep]
    return MocapClip(joint_names=kept_names,
                     parents=np.array([remap.get(parents[j], -1) for j in keep], dtype=np.int64),
                     positions=positions_f32(world, path, kept_names),
                     fps=1.0 / frame_time if frame_time > 0 and 1.0 / frame_time < float("inf") else 0.0)


def _read_motion(path, lines, *, first: int, frames: int, width: int) -> np.ndarray:
    """The (frames, width) channel values: one line per frame after the "Frame Time" line
    (1-based line `first`); blank lines are skipped, lines after the last frame ignored."""
    rows = [ln for ln in range(first, len(lines)) if lines[ln].strip()]
    if len(rows) < frames:
        raise DataError(f"file ends after {len(rows)} of {frames} frames (truncated?)", path=path, line=len(lines))
    motion = np.empty((frames, width))
    for i, ln in enumerate(rows[:frames]):
        vals = lines[ln].split()
        if len(vals) != width:
            raise DataError(f"frame {i} has {len(vals)} values, the hierarchy has {width} channels",
                            path=path, line=ln + 1)
        try:
            motion[i] = [float(v) for v in vals]
        except ValueError as err:
            raise DataError(f"frame {i}: {err}", path=path, line=ln + 1) from None
    bad = np.flatnonzero(~np.isfinite(motion).all(axis=1))
    if len(bad):
        raise DataError(f"frame {bad[0]} has a value that is not a finite number", path=path, line=rows[bad[0]] + 1)
    return motion
