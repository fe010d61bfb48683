"""What the mocap file readers (bvh.py, asf_amc.py) share: the clip they return, rotation
matrices, and the checks that keep hostile numbers out of forward kinematics.

Rotations are column-vector, right-handed, angles in degrees (as in the files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from msclr_core.errors import DataError

UNITS_M = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254}


@dataclass
class MocapClip:
    joint_names: list[str]
    parents: np.ndarray  # int, parents[j] = parent joint, -1 for the root
    positions: np.ndarray  # float32 (T, J, 3), metres, world frame
    fps: float


def _rot(axis: str, deg: np.ndarray) -> np.ndarray:
    """Elementary rotation matrices (..., 3, 3) about x, y or z by `deg` degrees."""
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    rows = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
            "y": [[c, z, s], [z, o, z], [-s, z, c]],
            "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis.lower()]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _compose(axes: str, angles) -> np.ndarray:
    """R = R_axes[0](angles[0]) · R_axes[1](angles[1]) · ... (the BVH channel order)."""
    out = None
    for axis, deg in zip(axes, angles):
        r = _rot(axis, deg)
        out = r if out is None else out @ r
    return out


def finite_float(tok: str, *, path, line, what) -> float:
    """float(tok), or a DataError naming the line: NaN and infinities would only turn into
    NaN joint positions far from the line that caused them."""
    try:
        value = float(tok)
    except ValueError:
        raise DataError(f"expected a number for {what}, got {tok!r}", path=path, line=line, field=what) from None
    if not math.isfinite(value):
        raise DataError(f"{what} must be finite, got {tok!r}", path=path, line=line, field=what)
    return value


def whole_count(tok: str, *, path, line, what, least: int = 0) -> int:
    """A count written as a whole number >= least (e.g. '3', also '3.0')."""
    value = finite_float(tok, path=path, line=line, what=what)
    if value != int(value) or value < least:
        raise DataError(f"{what} must be a whole number >= {least}, got {tok!r}", path=path, line=line, field=what)
    return int(value)


def positions_f32(positions: np.ndarray, path, names) -> np.ndarray:
    """float32 positions, or a DataError when finite but huge inputs overflowed (e.g. an
    OFFSET of 1e300): the error names the first joint and frame affected."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = positions.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        t, j, _ = np.argwhere(bad)[0]
        raise DataError(f"joint {names[j]!r} has no finite position in frame {t} (values too large)",
                        path=path, field="positions")
    return out
