"""Motion capture: file readers (BVH, ASF/AMC) with forward kinematics, joint maps to the
registry conventions, and the importer of the prepared real-mocap files.

The readers return a `MocapClip` of world joint positions in metres (the file's own axes: CMU
and most BVH files are Y up); see bvh.py and asf_amc.py for their rotation conventions and
kinematics.py for what they share. joint_maps.py turns one clip into several conventions of
the same motion. This module keeps the public names in one place and holds
`import_real_mocap_npz`, which turns a prepared real-mocap .npz (world joint positions of
CMU / Bandai clips with labels and subject or style ids; keys in _NPZ_KEYS) into a
multi-convention dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import require_regular

from .asf_amc import read_asf_amc
from .bvh import read_bvh
from .joint_maps import JOINT_MAPS, map_to_convention, map_weights, skeleton_kind
from .kinematics import UNITS_M, MocapClip

__all__ = ["JOINT_MAPS", "UNITS_M", "MocapClip", "import_real_mocap_npz", "map_to_convention", "map_weights",
           "normalize_clip", "read_asf_amc", "read_bvh", "skeleton_kind"]

# ----------------------------------------------------------------------------- real-mocap npz
_NPZ_KEYS = ("pos", "start", "length", "label", "label_names", "clip_names", "joint_names", "parents", "fps")


def _file_ntu_map(d, joint_names, path) -> list[tuple[str, ...]]:
    # The file's own NTU-25 map: NTU joint i = mean of native joints index[cum[i]:cum[i+1]].
    if "ntu25_group_len" not in d.files:
        raise DataError("ntu25_index needs ntu25_group_len", path=path, field="ntu25_group_len")
    index, group_len = d["ntu25_index"].astype(np.int64), d["ntu25_group_len"].astype(np.int64)
    if group_len.shape != (25,) or (group_len < 1).any() or group_len.sum() != len(index):
        raise DataError(f"expected 25 group lengths >= 1 summing to len(ntu25_index) = {len(index)}",
                        path=path, field="ntu25_group_len")
    if index.ndim != 1 or ((index < 0) | (index >= len(joint_names))).any():
        raise DataError(f"joint indices must lie in [0, {len(joint_names)})", path=path, field="ntu25_index")
    cum = np.concatenate([[0], np.cumsum(group_len)])
    return [tuple(joint_names[j] for j in index[cum[i]:cum[i + 1]]) for i in range(len(cum) - 1)]


def normalize_clip(x: np.ndarray, conv, T: int = 50) -> np.ndarray:
    """Clip-level normalisation of a C×T×V×M clip: subtract the first frame's root joint and
    turn the whole clip about y (one angle) so that the first frame's shoulders (R − L) face
    +x, then resize to T. Unlike the per-frame NTU pipeline it keeps the trajectory."""
    from msclr_core.data.preprocess import joints_for, resize_frames

    j = joints_for(conv)
    present = np.asarray(x).any(axis=(0, 1, 2))  # absent persons (all zero) stay zero
    x = x - x[:, :1, list(j.root), :1].mean(axis=2, keepdims=True)
    v = x[:, 0, j.rsho, 0] - x[:, 0, j.lsho, 0]
    c, s = np.cos(np.arctan2(v[2], v[0])), np.sin(np.arctan2(v[2], v[0]))
    out = x.copy()
    out[0], out[2] = c * x[0] + s * x[2], c * x[2] - s * x[0]
    out[..., ~present] = 0
    return resize_frames(out, T)


def import_real_mocap_npz(npz_path, out_dir, conventions=("ntu-rgb+d", "h36m_17"), *, T: int = 50,
                          normalize: str = "ntu", persons: int = 2, test_styles_from: int = 10, offset_scale: float = 0.0,
                          noise: float = 0.0, seed: int = 0, name: str | None = None, overwrite: bool = False):
    """One prepared real-mocap .npz (the keys in _NPZ_KEYS) -> a dataset with
    one array per convention, all derived from the same motion. Positions stay in metres.

    normalize="ntu" (default): the official per-frame frame-50 pipeline (preprocess_clip:
    root-relative per frame, resize to T, per-frame shoulder y-alignment), as for NTU and
    estimator poses, so all datasets of the project share one input distribution.
    normalize="clip": `normalize_clip`, which keeps the root trajectory and the heading
    changes (on the Bandai style split a ridge probe on 16 frames of NTU-25 gets ~0.67 with
    "ntu" and ~0.76 with "clip": walk / walk-back / walk-left differ mostly by trajectory).

    Splits: Bandai files ("style") get protocol "style": styles < test_styles_from train, the
    rest test, and "style_val": the same with every fifth training style (the 3rd, 8th, ...)
    held out as a `val` part for choosing settings. CMU files ("subject") get protocol
    "subject": the highest subject id is the test set. ntu-rgb+d uses the file's own ntu25 map; other conventions use JOINT_MAPS.
    """
    from msclr_core.conventions import get_convention
    from msclr_core.data.writer import write_dataset
    from msclr_core.data.preprocess import preprocess_clip

    npz_path = Path(npz_path)
    if normalize not in ("clip", "ntu"):
        raise DataError(f"normalize must be 'clip' or 'ntu', got {normalize!r}", field="normalize")
    try:
        require_regular(npz_path)  # a FIFO would block forever
        d = np.load(npz_path, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable .npz: {err}", path=npz_path) from None
    for key in _NPZ_KEYS:
        if key not in d.files:
            raise DataError("required key missing", path=npz_path, field=key)
    pos, start, length = d["pos"], d["start"].astype(np.int64), d["length"].astype(np.int64)
    joint_names = [str(n) for n in d["joint_names"]]
    clip_names = [str(n) for n in d["clip_names"]]
    n = len(start)
    if pos.ndim != 3 or pos.shape[1:] != (len(joint_names), 3):
        raise DataError(f"expected (frames, {len(joint_names)}, 3), got {pos.shape}", path=npz_path, field="pos")
    for key in ("length", "label", "clip_names"):
        if len(d[key]) != n:
            raise DataError(f"has {len(d[key])} entries, start has {n}", path=npz_path, field=key)
    bad = np.flatnonzero((start < 0) | (length < 1) | (start + length > len(pos)))
    if len(bad):
        raise DataError(f"clip range outside pos (start {start[bad[0]]}, length {length[bad[0]]})",
                        path=npz_path, sample=clip_names[bad[0]], field="start/length")

    clip_ok = np.array([np.isfinite(pos[s:s + n]).all() for s, n in zip(start, length)], bool)
    if not clip_ok.all():
        bad = int(np.flatnonzero(~clip_ok)[0])
        raise DataError("joint positions must be finite", path=npz_path, sample=clip_names[bad], field="pos")
    skeleton_kind(joint_names)  # fail early when no joint map fits this skeleton
    arrays = {}
    for conv in conventions:
        name_map = _file_ntu_map(d, joint_names, npz_path) if conv == "ntu-rgb+d" and "ntu25_index" in d.files else None
        out = np.zeros((n, 3, T, get_convention(conv).num_joints, persons), np.float32)
        for k in range(n):
            clip = MocapClip(joint_names, d["parents"], pos[start[k]:start[k] + length[k]], float(d["fps"]))
            xyz = map_to_convention(clip, conv, name_map=name_map, offset_scale=offset_scale, noise=noise,
                                    seed=seed + k)
            x = np.zeros((3, len(xyz), xyz.shape[1], persons), np.float32)
            x[..., 0] = xyz.transpose(2, 0, 1)
            with np.errstate(over="ignore", invalid="ignore"):  # huge positions: the check below says so
                out[k] = normalize_clip(x, conv, T) if normalize == "clip" else preprocess_clip(x, conv, T=T)
            if not np.isfinite(out[k]).all():
                raise DataError(f"{conv} positions overflow after normalisation (values too large?)",
                                path=npz_path, sample=clip_names[k], field="pos")
        arrays[conv] = out

    splits, meta = {}, {"frames": [int(v) for v in length]}
    if "style" in d.files:
        style = d["style"].astype(np.int64)
        meta["style"] = [str(d["style_names"][s]) if "style_names" in d.files else int(s) for s in style]
        train, test = style < test_styles_from, style >= test_styles_from
        splits["style"] = {"train": np.flatnonzero(train), "test": np.flatnonzero(test)}
        val = np.isin(style, np.unique(style[train])[2::5])  # as the synthetic benchmark's *_val protocols
        if (train & val).any() and (train & ~val).any() and test.any():
            splits["style_val"] = {"train": np.flatnonzero(train & ~val), "val": np.flatnonzero(train & val),
                                   "test": np.flatnonzero(test)}
    if "subject" in d.files:
        subject = d["subject"].astype(np.int64)
        meta["subject"] = [int(s) for s in subject]
        splits["subject"] = {"train": np.flatnonzero(subject != subject.max()), "test": np.flatnonzero(subject == subject.max())}
    return write_dataset(out_dir, name=name or npz_path.stem, classes=[str(c) for c in d["label_names"]],
                         arrays=arrays, sample_names=clip_names, labels=d["label"].astype(np.int64), meta=meta,
                         splits=splits, units={c: "m" for c in conventions}, overwrite=overwrite)
