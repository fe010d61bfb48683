"""Add a pose-estimator convention (e.g. MeTRAbs smplx_42) to an existing dataset.

Per sample the estimator output is `<pose_dir>/<sample_name>.npy` or `.pt`, shaped
[frames, detections, joints, 3] (MeTRAbs: millimetres, camera frame x right / y down /
z forward, zero rows where fewer people were detected). The official MS-CLR conversion of
these files is unreleased (spec section 4); this is the clean re-implementation:

1. convert from the estimator's frame (`FRAMES`, `frame=`) to the dataset's frame, NTU's
   Kinect camera space (x to the camera's left, y up, z forward: right-handed). MeTRAbs's
   camera frame (x right, y down, z forward) is that frame turned 180 degrees about z, so
   "camera-ydown" (the default) negates x and y; keeping the y-down coordinates would put
   every pose upside down against the NTU skeletons (`msclr data check`: "y axis flipped");
2. track people across frames: greedy matching of detections to tracks by the distance of
   their root joints to each track's last root position (detectors do not keep an order,
   so "detection 0" can be a different person from frame to frame); keep the `persons`
   tracks present in most frames, the most present first (person 0 = main actor);
3. convert to metres;
4. the NTU frame-50 preprocessing (preprocess_clip: trim, root-relative on the
   convention's torso root, resize to T, shoulder y-alignment).

The frame and unit of the pose files are recorded in the manifest entry of the convention
(`source`).

The new dataset version is written atomically: a temp directory beside the dataset gets
hard links (or copies) of the existing files plus the new array and manifest, and replaces
the dataset only when everything succeeded. On any error the original stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import require_regular

from .preprocess import STEPS, joints_for, preprocess_clip
from .safe_pickle import short_repr

MAX_DETECTIONS = 64  # per frame; tracking cost grows with tracks x detections, so a hostile file is refused

# Estimator frame -> (sign of x, y, z in the dataset frame, left/right labels swapped). The
# dataset frame is NTU's Kinect camera space: x to the camera's left, y up, z forward.
FRAMES = {
    "camera-ydown": ((-1, -1, 1), False),  # OpenCV / MeTRAbs: x right, y down, z forward
    # the same camera, but the video was mirrored left-right before pose estimation (Kinect v2's
    # colour stream is mirrored): positions keep x, and the estimator's left is the person's right
    "camera-ydown-mirrored": ((1, -1, 1), True),
    "camera-yup": ((-1, 1, -1), False),  # OpenGL: x right, y up, z backward (towards the viewer)
    "kinect": ((1, 1, 1), False),  # already the dataset frame (NTU Kinect camera space)
}
DEFAULT_FRAME = "camera-ydown"


def frame_rule(frame: str) -> tuple[tuple[int, int, int], bool]:
    if frame not in FRAMES:
        raise DataError(f"unknown frame {frame!r} (known: {', '.join(FRAMES)})", field="frame")
    return FRAMES[frame]


def to_dataset_frame(poses: np.ndarray, frame: str, conv) -> np.ndarray:
    """[..., V, 3] coordinates in estimator frame `frame` -> the dataset frame (FRAMES)."""
    signs, swap = frame_rule(frame)
    out = poses * np.asarray(signs, poses.dtype)
    return out[..., list(conv.flip), :] if swap else out


@dataclass
class PoseImportReport:
    dataset: object  # the new Dataset
    zero_filled: list[str] = field(default_factory=list)  # samples without a pose file (missing="zero")


def read_pose_file(path: Path, num_joints: int, sample=None) -> np.ndarray:
    """[frames, detections, joints, 3] float64 from .npy or .pt; NaN detections become absent (0).

    .pt files are loaded with weights_only=True (tensors and plain containers only: an
    untrusted .pt cannot run code); .npy files never unpickle."""
    from .dataset import open_npy

    if path.suffix == ".pt":
        try:
            import torch

            require_regular(path, sample=sample, field="poses")  # a FIFO would block forever
            arr = torch.load(path, map_location="cpu", weights_only=True)
            arr = arr.numpy() if isinstance(arr, torch.Tensor) else arr
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unreadable"
            raise DataError(f"cannot read pose file: {short_repr(str(err))}", path=path, sample=sample,
                            field="poses") from None
    else:
        arr = open_npy(path, field="poses", mmap=False, sample=sample)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        what = f"{arr.dtype} array" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise DataError(f"expected a numeric tensor/array, got {what}", path=path, sample=sample, field="poses")
    if arr.ndim != 4 or arr.shape[2] != num_joints or arr.shape[3] != 3 or arr.shape[1] > MAX_DETECTIONS:
        raise DataError(f"expected [frames, persons <= {MAX_DETECTIONS}, {num_joints}, 3], got {list(arr.shape)}",
                        path=path, sample=sample, field="shape")
    arr = np.asarray(arr, dtype=np.float64)
    bad = ~np.isfinite(arr).all(axis=(2, 3))
    arr[bad] = 0.0
    return arr


def track_persons(poses: np.ndarray, root, *, persons: int = 2, max_jump: float = 500.0) -> np.ndarray:
    """[F, P, V, 3] detections -> [F, persons, V, 3] tracks with stable identities.

    Each frame, (track, detection) pairs are matched greedily by increasing root distance;
    a pair farther apart than `max_jump` (same unit as the poses) is not a match, and an
    unmatched detection starts a new track. All-zero detections are absent people.
    """
    F, _, V, _ = poses.shape
    roots = (root,) if isinstance(root, (int, np.integer)) else tuple(root)
    tracks: list[np.ndarray] = []  # each [F, V, 3]
    last: list[np.ndarray] = []  # last seen root position per track
    for t in range(F):
        dets = [p for p in range(poses.shape[1]) if poses[t, p].any()]
        det_root = {p: poses[t, p, list(roots)].mean(axis=0) for p in dets}
        pairs = sorted((float(np.linalg.norm(det_root[p] - last[k])), k, p) for k in range(len(tracks)) for p in dets)
        used_t, used_d = set(), set()
        for dist, k, p in pairs:
            if dist <= max_jump and k not in used_t and p not in used_d:
                used_t.add(k), used_d.add(p)
                tracks[k][t], last[k] = poses[t, p], det_root[p]
        for p in dets:
            if p not in used_d:
                tracks.append(np.zeros((F, V, 3)))
                tracks[-1][t] = poses[t, p]
                last.append(det_root[p])
    present = [int(tr.any(axis=(1, 2)).sum()) for tr in tracks]
    keep = sorted(range(len(tracks)), key=lambda k: -present[k])[:persons]  # stable: ties keep first-seen order
    out = np.zeros((F, persons, V, 3))
    for m, k in enumerate(keep):
        out[:, m] = tracks[k]
    return out


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or no hard links: copy instead
        shutil.copy2(src, dst)


def add_pose_convention(dataset_root, pose_dir, conv: str, *, unit: str = "mm", T: int = 50, persons: int = 2,
                        steps=STEPS, max_jump_m: float = 0.5, missing: str = "error",
                        replace: bool = False, frame: str = DEFAULT_FRAME) -> PoseImportReport:
    """Add convention `conv` from per-sample pose files to the dataset at `dataset_root`.

    frame: the estimator's coordinate frame (FRAMES; MeTRAbs: "camera-ydown").
    missing="error": a sample without a pose file raises DataError naming it (nothing is
    written). missing="zero": its clip is all zeros and it is listed in the report.
    replace=True overwrites an existing array of the same convention.
    """
    from numpy.lib.format import open_memmap

    from msclr_core.conventions import get_convention
    from msclr_core.io_utils import atomic_dir, atomic_write_text

    from .dataset import UNITS, load_dataset

    root, pose_dir = Path(dataset_root), Path(pose_dir)
    ds = load_dataset(root)
    for i, name in enumerate(ds.sample_names):  # names come from the manifest: never a path out of pose_dir
        if name in ("", ".", "..") or Path(name).name != name or "\x00" in name:
            raise DataError(f"sample name {short_repr(name)} is not a plain file name, so it cannot name a pose file",
                            path=root / "manifest.json", sample=i, field="samples.name")
    cv = get_convention(conv)
    if missing not in ("error", "zero"):
        raise DataError(f"missing must be 'error' or 'zero', got {missing!r}", field="missing")
    if UNITS.get(unit) is None:
        raise DataError(f"unit must be a metric unit (m or mm), got {unit!r}", field="unit")
    frame_rule(frame)  # an unknown frame fails before any file is read
    if conv in ds.conventions and not replace:
        raise DataError(f"dataset already has convention {conv!r} (use replace)", path=root / "manifest.json",
                        field=f"conventions.{conv}")
    if not pose_dir.is_dir():
        raise DataError("pose directory not found", path=pose_dir)

    def find(name):
        for ext in (".npy", ".pt"):
            if (pose_dir / f"{name}{ext}").exists():  # a FIFO or directory is found, then refused by the reader
                return pose_dir / f"{name}{ext}"
        return None

    files = {name: find(name) for name in ds.sample_names}
    absent = [n for n, p in files.items() if p is None]
    if absent and missing == "error":
        raise DataError(f"no pose file <name>.npy/.pt for {len(absent)} sample(s)", path=pose_dir, sample=absent[0])

    j = joints_for(cv)
    scale = UNITS[unit]
    frames = T if "resize" in set(steps) else 300
    fname = f"{conv}.npy"
    with atomic_dir(root, overwrite=True) as tmp:
        for item in root.iterdir():  # the existing version, by hard link (no copy of big arrays)
            if item.is_dir():  # symlinks stay links: never copy what they point to
                shutil.copytree(item, tmp / item.name, symlinks=True, copy_function=_link_or_copy)
            elif item.name not in ("manifest.json", fname):
                _link_or_copy(item, tmp / item.name)
        out = open_memmap(tmp / fname, mode="w+", dtype=np.float32, shape=(len(ds), 3, frames, cv.num_joints, persons))
        for i, name in enumerate(ds.sample_names):
            if files[name] is None:
                out[i] = 0.0
                continue
            poses = to_dataset_frame(read_pose_file(files[name], cv.num_joints, sample=name), frame, cv)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
                tracked = track_persons(poses * scale, j.root, persons=persons, max_jump=max_jump_m)
                clip = preprocess_clip(tracked.transpose(3, 0, 2, 1).astype(np.float32), cv, steps=steps, T=T,
                                       pad_to=frames)
            if not np.isfinite(clip).all():
                raise DataError("coordinates beyond float32 range", path=files[name], sample=name, field="poses")
            out[i] = clip
        out.flush()
        del out
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        manifest["conventions"][conv] = {"file": fname, "unit": "m",
                                         "shape": [len(ds), 3, frames, cv.num_joints, persons],
                                         "source": {"kind": "poses", "frame": frame, "unit": unit}}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, separators=(",", ":")))
        load_dataset(tmp)  # never publish a version that would not load
    return PoseImportReport(load_dataset(root), absent)
