"""Per-clip preprocessing shared by the importers: the AimCLR/MS-CLR "frame 50" pipeline.

Every function takes one clip `x` laid out C×T×V×M (coords, frames, joints, persons) and
returns a new float32 array. The official steps (AimCLR `feeder/NTUDatasets.py`, used by
MS-CLR for `NTU60_frame50_rotated`), in order:

1. trim:          keep the first L frames, L = number of frames where person 0's validity
                  joint is nonzero (official: NTU joint 0, spine-base; it counts frames,
                  so a gap in the middle shortens L; reproduced, not fixed);
2. root_relative: subtract the root joint (NTU: spine-shoulder, 20) per frame and person;
3. resize:        linear interpolation of those L frames to T=50, per person (cv2.resize
                  INTER_LINEAR along time: half-pixel centres, edge clamping);
4. rotate:        per frame, rotate about the vertical (y) axis so that R-shoulder − L-shoulder
                  with y zeroed points along +x. Quirk kept from the official code: the sign of
                  the angle is chosen ONCE per sequence from Σ_t z, so frames whose shoulder
                  vector has the other z sign are rotated the wrong way (`per_frame_sign=True`
                  fixes it).

The joints used per convention are looked up by name in `JOINTS` (resolved against the
registry, so index changes there cannot silently break this table).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEPS = ("trim", "root_relative", "resize", "rotate")


@dataclass(frozen=True)
class PreprocessJoints:
    root: tuple[int, ...]  # one joint, or several whose mean is the root (no torso joint)
    lsho: int
    rsho: int
    valid: int | None  # joint whose nonzero frames define the valid length; None: any joint


# convention -> (root joint name(s), left shoulder, right shoulder, validity joint or None).
# Upper-torso roots mirror NTU's spine-shoulder; conventions without one use the shoulder midpoint.
JOINTS: dict[str, tuple[tuple[str, ...], str, str, str | None]] = {
    "ntu-rgb+d": (("spine-shoulder",), "L-shoulder", "R-shoulder", "spine-base"),
    "kinectv2_25": (("spineshoulder",), "lsho", "rsho", "spinebase"),
    "smpl_24": (("spi3",), "lsho", "rsho", None),
    "smplx_42": (("thor",), "lsho", "rsho", None),
    "h36m_17": (("neck",), "lsho", "rsho", None),
    "mpi_inf_3dhp_28": (("thor",), "lsho", "rsho", None),
    "berkeley_mhad_43": (("chest",), "lsho1", "rsho1", None),
    "coco_17": (("left_shoulder", "right_shoulder"), "left_shoulder", "right_shoulder", None),
    "mediapipe_33": (("left_shoulder", "right_shoulder"), "left_shoulder", "right_shoulder", None),
    "openpose_25": (("Neck",), "LShoulder", "RShoulder", None),
}


def joints_for(conv) -> PreprocessJoints:
    """Indices of the preprocessing joints of a convention (name or Convention)."""
    from msclr_core.conventions import get_convention

    conv = get_convention(conv) if isinstance(conv, str) else conv
    if conv.name not in JOINTS:
        raise KeyError(f"no preprocessing joints known for convention {conv.name!r}; known: {sorted(JOINTS)}")
    root, lsho, rsho, valid = JOINTS[conv.name]
    idx = {n: i for i, n in enumerate(conv.joint_names)}
    return PreprocessJoints(tuple(idx[r] for r in root), idx[lsho], idx[rsho], None if valid is None else idx[valid])


def valid_length(x: np.ndarray, joint: int | None = None) -> int:
    """Number of frames where person 0's `joint` (any joint when None) is nonzero."""
    p0 = x[:, :, :, 0] if joint is None else x[:, :, joint:joint + 1, 0]
    return int((np.abs(p0).sum(axis=(0, 2)) != 0).sum())


def root_relative(x: np.ndarray, root: int | tuple[int, ...]) -> np.ndarray:
    """Subtract the root joint (or the mean of several) per frame and person."""
    roots = (root,) if isinstance(root, (int, np.integer)) else tuple(root)
    center = x[:, :, list(roots), :].mean(axis=2, keepdims=True)
    return (x - center).astype(np.float32)


def resize_frames(x: np.ndarray, T: int = 50, length: int | None = None) -> np.ndarray:
    """Linearly resample the first `length` frames (all when None) to T frames.

    Same sample positions as cv2.resize(INTER_LINEAR): src = (t + 0.5)·L/T − 0.5, clamped
    to [0, L−1]. Persons are independent (the interpolation never mixes them). A clip with
    no valid frame becomes all zeros.
    """
    C, _, V, M = x.shape
    L = x.shape[1] if length is None else int(length)
    if L <= 0:
        return np.zeros((C, T, V, M), np.float32)
    src = np.clip((np.arange(T) + 0.5) * (L / T) - 0.5, 0, L - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, L - 1)
    w = (src - lo).reshape(1, T, 1, 1)
    x = x[:, :L].astype(np.float64)
    return ((1 - w) * x[:, lo] + w * x[:, hi]).astype(np.float32)


def pad_frames(x: np.ndarray, T: int) -> np.ndarray:
    """Zero-pad (or cut) along time to exactly T frames."""
    out = np.zeros((x.shape[0], T, *x.shape[2:]), np.float32)
    n = min(T, x.shape[1])
    out[:, :n] = x[:, :n]
    return out


def align_y_rotation(x: np.ndarray, left_shoulder: int, right_shoulder: int, *, per_frame_sign: bool = False) -> np.ndarray:
    """Rotate every frame about y so that right − left shoulder (y zeroed) points along +x.

    Official quirk (default): angle θ_t = arccos(v_x / (|v| + 1e-4)), negated for the whole
    sequence when Σ_t v_z ≥ 0, i.e. the sign is decided once per person per clip.
    `per_frame_sign=True` decides it per frame (the geometrically correct rotation).
    Absent persons (all zeros) stay zero.
    """
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    for m in range(x.shape[3]):
        v = x[:, :, right_shoulder, m] - x[:, :, left_shoulder, m]  # C×T
        vx, vz = v[0], v[2]
        theta = np.arccos(vx / (np.sqrt(vx ** 2 + vz ** 2) + 1e-4))
        if per_frame_sign:
            theta = np.where(vz >= 0, -theta, theta)
        elif vz.sum() >= 0:
            theta = -theta
        c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]  # T×1, broadcast over joints
        px, pz = x[0, :, :, m], x[2, :, :, m]
        out[0, :, :, m] = c * px - s * pz
        out[2, :, :, m] = s * px + c * pz
    return out.astype(np.float32)


def preprocess_clip(x: np.ndarray, conv, steps=STEPS, *, T: int = 50, pad_to: int = 300,
                    per_frame_sign: bool = False) -> np.ndarray:
    """Apply the switchable steps (subset of STEPS, always in the official order).

    Output has T frames when "resize" is on, else `pad_to` frames (zero-padded, like the
    official 300-frame arrays).
    """
    steps = set(steps)
    unknown = steps - set(STEPS)
    if unknown:
        raise ValueError(f"unknown preprocessing step(s) {sorted(unknown)}; known: {STEPS}")
    j = joints_for(conv)
    x = np.asarray(x, dtype=np.float32)
    if "trim" in steps:
        x = x[:, :valid_length(x, j.valid)]
    if "root_relative" in steps:
        x = root_relative(x, j.root)
    x = resize_frames(x, T) if "resize" in steps else pad_frames(x, pad_to)
    if "rotate" in steps:
        x = align_y_rotation(x, j.lsho, j.rsho, per_frame_sign=per_frame_sign)
    return x
