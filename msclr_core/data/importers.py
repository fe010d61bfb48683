"""Importers for the array layouts of the SkeletonCLR family and pyskl, and a pyskl exporter.

SkeletonCLR / AimCLR / CrosSCLR / MS-CLR: per split one N×3×T×V×M float32 .npy per
convention (`train_data.npy` at T=300, or `train_position.npy` after the frame-50
preprocessing) plus one label pickle `(sample_names, labels)`. The MS-CLR feeder takes one
`{skeleton: npy}` dict per split with ONE shared label pickle (same sample order).
AimCLR names the test split "val": "train" -> train, "val"/"test" -> test.

pyskl / mmaction2: one pickle {"split": {name: [frame_dir, ...]}, "annotations": [{frame_dir,
label, total_frames, keypoint M×T×V×C (float16 allowed), keypoint_score?}]}. Split names
"<protocol>_<part>" (e.g. "xsub_train", "xsub_val"); pyskl's "val" is the test set, so it
becomes "test" unless the protocol also has a "test" part. Multi-skeleton extension: an
annotation may carry `keypoints: {convention: M×T×V×C}` beside `keypoint`.

Every pickle goes through safe_pickle.restricted_load: a label file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import atomic_file

from .dataset import open_npy
from .safe_pickle import restricted_load, short_repr

SPLIT_PARTS = {"train": "train", "val": "test", "test": "test"}  # AimCLR file split -> dataset part
CHUNK = 256  # rows converted at a time (NTU train_data.npy is tens of GB: never load it whole)
MAX_CLASSES = 100_000  # without explicit classes, a label this large is a corrupt file, not a class id


def _conv(name, path=None, field="convention"):
    from msclr_core.conventions import get_convention

    try:
        return get_convention(name)
    except (KeyError, TypeError) as err:  # TypeError: an unhashable name from a pickle
        raise DataError(str(err.args[0]) if err.args else f"bad convention {short_repr(name)}",
                        path=path, field=field) from None


def _check_label(label, limit: int, path, sample, field="label") -> int:
    """An int class id in [0, limit) (numpy ints allowed, bools not)."""
    if not isinstance(label, (int, np.integer)) or isinstance(label, (bool, np.bool_)) or not 0 <= label < limit:
        raise DataError(f"label must be an int in [0, {limit}), got {short_repr(label)}", path=path, sample=sample,
                        field=field)
    return int(label)


def _first_nonfinite(block: np.ndarray) -> int | None:
    """Index of the first row of `block` holding NaN/inf, or None."""
    bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1) if block.size else np.zeros(len(block), bool)
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _default_classes(labels, names) -> list[str]:
    """NTU action ids (A001...) when every name is an NTU sample name, else class0, class1..."""
    from .ntu import NAME_RE

    k = int(max(labels, default=-1)) + 1
    if names and all(NAME_RE.fullmatch(str(n)) for n in names):
        return [f"A{a + 1:03d}" for a in range(k)]
    return [f"class{a}" for a in range(k)]


def _ntu_meta(names) -> dict:
    """subject/camera/setup/replication columns when every name is an NTU sample name."""
    from .ntu import NAME_RE, parse_sample_name

    if not names or not all(NAME_RE.fullmatch(str(n)) for n in names):
        return {}
    metas = [parse_sample_name(n) for n in names]
    return {c: [m[c] for m in metas] for c in ("subject", "camera", "setup", "replication")}


# ----------------------------------------------------------------------------- SkeletonCLR

def _read_labels(path: Path, num_classes: int | None = None):
    if path.suffix == ".npy":
        raise DataError("a label .npy was passed where the label pickle (sample_names, labels) belongs; "
                        "pass e.g. train_label.pkl", path=path, field="labels")
    obj = restricted_load(path, field="labels")
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(o, (list, tuple)) for o in obj)):
        raise DataError("expected a pickle of (sample_names, labels)", path=path, field="labels")
    names, labels = list(obj[0]), list(obj[1])
    if len(names) != len(labels):
        raise DataError(f"{len(names)} sample names but {len(labels)} labels", path=path, field="labels")
    out = []
    for i, (n, v) in enumerate(zip(names, labels)):
        short = Path(n).name.split(".")[0] if isinstance(n, str) else ""  # gendata stores "S001...A001.skeleton"
        if not short:
            raise DataError(f"expected a sample name (str), got {short_repr(n)}", path=path, sample=i, field="labels")
        _check_label(v, num_classes or MAX_CLASSES, path, sample=f"{i} ({short})", field="labels")
        out.append(short)
    return out, [int(v) for v in labels]


def _by_convention(data_paths) -> dict[str, dict[str, Path]]:
    """{conv: {split: path}} from either that form or the MS-CLR form {split: {conv: path}}."""
    if all(k in SPLIT_PARTS for k in data_paths):
        out: dict[str, dict[str, Path]] = {}
        for split, convs in data_paths.items():
            for conv, p in convs.items():
                out.setdefault(conv, {})[split] = Path(p)
        return out
    return {conv: {s: Path(p) for s, p in splits.items()} for conv, splits in data_paths.items()}


def import_skeletonclr(data_paths, label_paths, out_dir, *, classes=None, protocol: str = "xsub",
                       units: dict[str, str] | None = None, T: int = 50, preprocess="auto", name: str | None = None,
                       overwrite: bool = False):
    """SkeletonCLR/AimCLR/MS-CLR arrays + label pickles -> one dataset.

    data_paths: {conv: {split: npy}} or {split: {conv: npy}}; label_paths: {split: pkl}.
    units: per convention; default ntu-rgb+d "m", every other convention "mm" (MeTRAbs).
    preprocess: "auto" runs the frame-50 pipeline (preprocess_clip) on arrays whose T != T
    (the raw 300-frame `*_data.npy`) and copies frame-50 `*_position.npy` arrays as they are;
    True always runs it; False always copies.
    """
    from .writer import DatasetWriter
    from .preprocess import preprocess_clip

    by_conv = _by_convention(data_paths)
    found = set(label_paths) | {s for files in by_conv.values() for s in files}
    unknown = sorted(found - set(SPLIT_PARTS))
    if unknown:
        raise DataError(f"unknown split(s) {unknown} (use {list(SPLIT_PARTS)})", field="splits")
    splits = [s for s in SPLIT_PARTS if s in found]
    for s in splits:
        if s not in label_paths:
            raise DataError(f"no label pickle for split {s!r}", field="label_paths")
    units = {c: (units or {}).get(c, "m" if c == "ntu-rgb+d" else "mm") for c in by_conv}

    labels_of = {s: _read_labels(Path(label_paths[s]), len(classes) if classes else None) for s in splits}
    seen: set[str] = set()
    for s in splits:  # a sample name identifies a sample, across splits too
        for n in labels_of[s][0]:
            if n in seen:
                raise DataError("duplicate sample name", path=label_paths[s], sample=n, field="labels")
            seen.add(n)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for conv, files in by_conv.items():
        cv = _conv(conv)
        for s in splits:
            if s not in files:
                raise DataError(f"convention {conv!r} has no array for split {s!r}", field="data_paths")
            path = files[s]
            arr = open_npy(path, field="data")
            n = len(labels_of[s][0])
            if arr.ndim != 5 or arr.shape[1] not in (2, 3) or min(arr.shape[2:]) < 1:
                raise DataError(f"expected N×C×T×V×M (C = 2 or 3, T, V, M >= 1), got shape {arr.shape}",
                                path=path, field="shape")
            if arr.shape[0] != n:
                raise DataError(f"has {arr.shape[0]} samples, the label pickle {label_paths[s]} lists {n}",
                                path=path, field="N")
            if arr.shape[3] != cv.num_joints:
                raise DataError(f"V={arr.shape[3]}, convention {conv!r} has {cv.num_joints} joints", path=path, field="V")
            arrays.setdefault(conv, {})[s] = arr
    shapes = {}
    for conv, per_split in arrays.items():
        c, t, v, m = next(iter(per_split.values())).shape[1:]
        run = preprocess is True or (preprocess == "auto" and any(a.shape[2] != T for a in per_split.values()))
        for s, a in per_split.items():
            if not run and a.shape[1:] != (c, t, v, m):
                raise DataError(f"shape {a.shape[1:]} differs from the other split's {(c, t, v, m)}",
                                path=by_conv[conv][s], field="shape")
        shapes[conv] = ((c, T, v, m) if run else (c, t, v, m), run)

    names = [n for s in splits for n in labels_of[s][0]]
    labels = [v for s in splits for v in labels_of[s][1]]
    parts, start = {}, 0
    for s in splits:
        n = len(labels_of[s][0])
        parts.setdefault(SPLIT_PARTS[s], []).extend(range(start, start + n))
        start += n
    with DatasetWriter(out_dir, capacity=len(names), shapes={c: sh for c, (sh, _) in shapes.items()},
                       units=units, overwrite=overwrite) as w:
        for conv, (_, run) in shapes.items():
            row = 0
            for s in splits:
                src = arrays[conv][s]
                for lo in range(0, len(src), CHUNK):
                    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
                        block = np.asarray(src[lo:lo + CHUNK], dtype=np.float32)
                        bad = _first_nonfinite(block)
                        if run and bad is None:
                            block = np.stack([preprocess_clip(x, conv, T=T) for x in block]) if len(block) else block
                            bad = _first_nonfinite(block)
                    if bad is not None:
                        raise DataError("NaN/inf coordinates (or beyond float32 range)", path=by_conv[conv][s],
                                        sample=labels_of[s][0][lo + bad], field="data")
                    w.arrays[conv][row:row + len(block)] = block
                    row += len(block)
        return w.commit(name=name or Path(out_dir).name, classes=classes or _default_classes(labels, names),
                        sample_names=names, labels=labels, meta=_ntu_meta(names), splits={protocol: parts})


# ----------------------------------------------------------------------------- pyskl

def _split_parts(split: dict, index: dict[str, int], path: Path) -> dict[str, dict[str, list[int]]]:
    out: dict[str, dict[str, list[int]]] = {}
    for key, members in split.items():
        proto, _, part = str(key).rpartition("_")
        proto = proto or "default"
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) for m in members):
            raise DataError("split members must be a list of frame_dir names", path=path, field=f"split.{key}")
        if not members:  # an empty part cannot be trained or evaluated on; `msclr data check` would refuse it
            raise DataError("empty list (a split part needs at least one frame_dir)", path=path, field=f"split.{key}")
        unknown = [m for m in members if m not in index]
        if unknown:
            raise DataError(f"{len(unknown)} name(s) not among the annotations, e.g. {short_repr(unknown[0])}",
                            path=path, field=f"split.{key}")
        out.setdefault(proto, {})[part] = [index[m] for m in members]
    for proto, parts in out.items():
        if "val" in parts and "test" not in parts:  # pyskl's "val" is the test set
            parts["test"] = parts.pop("val")
        for need in ("train", "test"):
            if need not in parts:
                raise DataError(f"protocol {proto!r} has no {need!r} part (has {sorted(parts)})", path=path, field="split")
    return out


def _keypoint(ann, key, conv, persons, T, steps, where, path) -> np.ndarray:
    from .preprocess import preprocess_clip

    kp = ann[key] if key == "keypoint" else ann["keypoints"][conv.name]
    fld = key if key == "keypoint" else f"keypoints.{conv.name}"
    if not isinstance(kp, np.ndarray) or kp.ndim != 4 or kp.shape[3] not in (2, 3) or kp.shape[1] == 0:
        shape = list(kp.shape) if isinstance(kp, np.ndarray) else type(kp).__name__
        raise DataError(f"expected an array M×T×V×C (C = 2 or 3), got {shape}", path=path, sample=where, field=fld)
    if kp.shape[2] != conv.num_joints:
        raise DataError(f"V={kp.shape[2]}, convention {conv.name!r} has {conv.num_joints} joints",
                        path=path, sample=where, field=fld)
    if not np.issubdtype(kp.dtype, np.floating) and not np.issubdtype(kp.dtype, np.integer):
        raise DataError(f"dtype {kp.dtype} is not numeric", path=path, sample=where, field=fld)
    x = np.zeros((kp.shape[3], kp.shape[1], kp.shape[2], persons), np.float32)  # C×T×V×M
    m = min(persons, kp.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is reported below
        x[..., :m] = np.asarray(kp[:m], dtype=np.float32).transpose(3, 1, 2, 0)
        steps = [s for s in steps if s != "rotate" or x.shape[0] == 3]  # no y-rotation for 2D keypoints
        out = preprocess_clip(x, conv, steps=steps, T=T) if np.isfinite(x).all() else x
    if not np.isfinite(out).all():
        raise DataError("NaN/inf coordinates (or beyond float32 range)", path=path, sample=where, field=fld)
    return out


def _extra_keypoints(ann: dict, i: int, path: Path) -> dict:
    """The multi-skeleton `keypoints` dict of an annotation ({} when absent)."""
    extra = ann.get("keypoints")
    if extra is None:
        return {}
    if not isinstance(extra, dict) or not all(isinstance(c, str) for c in extra):
        raise DataError(f"must be a dict convention -> array, got {type(extra).__name__}", path=path,
                        sample=f"annotation {i}", field="keypoints")
    return extra


def import_pyskl(pkl_path, out_dir, conv: str = "ntu-rgb+d", *, T: int = 50, persons: int = 2,
                 steps=("resize",), unit: str | None = None, classes=None, name: str | None = None,
                 overwrite: bool = False):
    """A pyskl annotation pickle -> a dataset with `conv` (from `keypoint`) plus every
    convention found under `keypoints`. Each clip: persons padded/truncated to `persons`,
    then preprocess_clip with `steps` (default only the resize of the valid frames to T;
    add "root_relative"/"rotate" for raw NTU coordinates). Unit: 2D keypoints are "px",
    3D ones "m" (pyskl's NTU 3D and export_pyskl); pass unit="mm" for millimetre data."""
    from .writer import write_dataset

    path = Path(pkl_path)
    data = restricted_load(path, allow_numpy=True, field="annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError("expected a dict with an 'annotations' list", path=path, field="annotations")
    anns = data["annotations"]
    if not anns:
        raise DataError("no annotations", path=path, field="annotations")
    cvs = {conv: _conv(conv)}
    if isinstance(anns[0], dict):  # annotation 0 decides the extra conventions
        cvs.update({c: _conv(c, path, "keypoints") for c in _extra_keypoints(anns[0], 0, path) if c != conv})
    names, labels, arrays = [], [], {c: [] for c in cvs}
    for i, ann in enumerate(anns):
        where = f"annotation {i}"
        if not isinstance(ann, dict):
            raise DataError("annotation must be a dict", path=path, sample=where, field="annotations")
        for key in ("frame_dir", "label", "keypoint"):
            if key not in ann:
                raise DataError("required key missing", path=path, sample=where, field=key)
        if not isinstance(ann["frame_dir"], str):
            raise DataError(f"must be a str, got {short_repr(ann['frame_dir'])}", path=path, sample=where,
                            field="frame_dir")
        where = f"annotation {i} ({short_repr(ann['frame_dir'])[1:-1]})"
        labels.append(_check_label(ann["label"], len(classes) if classes else MAX_CLASSES, path, where))
        extra = _extra_keypoints(ann, i, path)
        for c, cv in cvs.items():
            if c != conv and c not in extra:
                raise DataError(f"convention {c!r} missing (annotation 0 has it)", path=path, sample=where,
                                field="keypoints")
            arrays[c].append(_keypoint(ann, "keypoint" if c == conv else "keypoints", cv, persons, T, steps,
                                       where, path))
        names.append(ann["frame_dir"])
    for c, clips in arrays.items():
        if len({a.shape for a in clips}) > 1:
            raise DataError(f"annotations mix coordinate dims {sorted({a.shape[0] for a in clips})}", path=path,
                            field="keypoint" if c == conv else f"keypoints.{c}")
    index = {n: k for k, n in enumerate(names)}
    if len(index) != len(names):
        raise DataError("duplicate frame_dir names", path=path, field="frame_dir")
    split = {} if data.get("split") is None else data["split"]
    if not isinstance(split, dict):
        raise DataError("must be a dict name -> [frame_dir]", path=path, field="split")
    units = {c: unit or ("px" if arrays[c][0].shape[0] == 2 else "m") for c in cvs}
    return write_dataset(out_dir, name=name or path.stem, classes=classes or _default_classes(labels, names),
                         arrays={c: np.stack(a) for c, a in arrays.items()}, sample_names=names, labels=labels,
                         meta=_ntu_meta(names), splits=_split_parts(split, index, path), units=units,
                         overwrite=overwrite)


def _atomic_pickle(path: Path, obj) -> None:
    # Streamed to a temp file beside the target (a pickle of a big dataset should not have to
    # exist twice in memory), then renamed into place.
    with atomic_file(path) as f:
        pickle.dump(obj, f, protocol=4)


def export_pyskl(dataset_root, out_pkl, conv: str = "ntu-rgb+d", *, extra_conventions=()) -> Path:
    """A dataset -> a pyskl annotation pickle (keypoint M×T×V×C float32, in metres for
    metric units). Splits become "<protocol>_<part>"; the test part is written as pyskl's
    "<protocol>_val" unless the protocol also has a "val" part. `extra_conventions` go
    under each annotation's `keypoints` (the multi-skeleton extension)."""
    from .dataset import load_dataset

    ds = load_dataset(dataset_root)
    arrays = {}
    for c in (conv, *extra_conventions):
        if c not in ds.conventions:
            raise DataError(f"dataset has no convention {c!r} (has {sorted(ds.conventions)})",
                            path=ds.root, field="convention")
        arrays[c] = ds.load(c, unit="m" if ds.conventions[c].unit in ("m", "mm") else None)
    split = {}
    for proto, parts in ds.splits.items():
        for part, idx in parts.items():
            suffix = "val" if part == "test" and "val" not in parts else part
            split[f"{proto}_{suffix}"] = [ds.sample_names[i] for i in idx]
    annotations = []
    for i, name in enumerate(ds.sample_names):
        x = arrays[conv][i]
        ann = {"frame_dir": name, "label": int(ds.labels[i]), "total_frames": int(x.shape[1]),
               "keypoint": np.ascontiguousarray(x.transpose(3, 1, 2, 0))}  # C×T×V×M -> M×T×V×C
        if extra_conventions:
            ann["keypoints"] = {c: np.ascontiguousarray(arrays[c][i].transpose(3, 1, 2, 0)) for c in extra_conventions}
        annotations.append(ann)
    out = Path(out_pkl)
    _atomic_pickle(out, {"split": split, "annotations": annotations})
    return out
