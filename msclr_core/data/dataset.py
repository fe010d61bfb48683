"""The on-disk dataset format: a directory with manifest.json and one .npy per convention.

    DIR/manifest.json
    DIR/<convention>.npy    float32 N×C×T×V×M, one per convention, same sample order

The manifest holds ONE sample list (names, labels, metadata columns) shared by every
convention array, plus the splits (protocol -> part -> sample indices). Arrays are plain
.npy files so they can be memory-mapped: training reads rows without loading the file.

Reading and checking live here; writing (atomic, streaming) in `writer.py`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import open_regular, read_regular_bytes

from .finite import CHECK_CHUNK_BYTES, nonfinite_rows
from .safe_pickle import short_repr

FORMAT, VERSION = "msclr-dataset", 1
UNITS = {"m": 1.0, "mm": 1e-3, "px": None}  # factor to metres (px: no metric conversion)


@dataclass(frozen=True)
class ConventionInfo:
    name: str
    file: str
    unit: str
    shape: tuple[int, ...]  # N, C, T, V, M


@dataclass
class Dataset:
    root: Path
    name: str
    classes: list[str]
    conventions: dict[str, ConventionInfo]
    sample_names: list[str]
    labels: np.ndarray  # int64, one per sample
    meta: dict[str, list] = field(default_factory=dict)  # extra per-sample columns
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _info(self, conv: str) -> ConventionInfo:
        if conv not in self.conventions:
            raise DataError(f"no convention {conv!r} (has {sorted(self.conventions)})",
                            path=self.root / "manifest.json", field="conventions")
        return self.conventions[conv]

    def array(self, conv: str, mmap: bool = True) -> np.ndarray:
        """The whole N×C×T×V×M array in its native unit (memory-mapped read-only by default)."""
        return open_npy(self.root / self._info(conv).file, field=f"conventions.{conv}.file", mmap=mmap)

    def split_indices(self, protocol: str, part: str) -> np.ndarray:
        if protocol not in self.splits:
            raise DataError(f"no split protocol {protocol!r} (has {sorted(self.splits)})",
                            path=self.root / "manifest.json", field="splits")
        if part not in self.splits[protocol]:
            raise DataError(f"split {protocol!r} has no part {part!r} (has {sorted(self.splits[protocol])})",
                            path=self.root / "manifest.json", field=f"splits.{protocol}")
        return self.splits[protocol][part]

    def load(self, conv: str, indices=None, unit: str | None = "m") -> np.ndarray:
        """Rows `indices` (all when None) as an in-memory float32 array, converted to `unit`."""
        info = self._info(conv)
        mm = self.array(conv)
        out = np.array(mm if indices is None else mm[np.asarray(indices, dtype=np.int64)], dtype=np.float32)
        if unit is None or unit == info.unit:
            return out
        src, dst = UNITS.get(info.unit), UNITS.get(unit)
        if src is None or dst is None:
            raise DataError(f"cannot convert unit {info.unit!r} to {unit!r}",
                            path=self.root / "manifest.json", field=f"conventions.{conv}.unit")
        out *= np.float32(src / dst)
        return out


# ----------------------------------------------------------------------------- arrays

def open_npy(path: Path, *, field: str, mmap: bool = True, sample=None) -> np.ndarray:
    """A plain numeric .npy as a read-only memmap (or in memory with mmap=False).

    Everything else is a DataError naming `path` and `field`: no file, not a regular file
    (a FIFO would block forever), a pickle or .npz under a .npy name, a header numpy cannot
    parse, object/string/structured dtypes, and data shorter or longer than the header
    says (a truncated copy)."""
    fmt = np.lib.format
    try:
        with open_regular(path, sample=sample, field=field) as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f".npy format version {version} (expected 1.0 or 2.0)")
            shape, fortran, dtype = read(f)
            expected = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise DataError(f"cannot read array file: {err.strerror or err}", path=path, sample=sample,
                        field=field) from None
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy's header parser raises ValueError, SyntaxError, TokenError...
        raise DataError(f"not a readable .npy file: {short_repr(str(err))}", path=path, sample=sample,
                        field=field) from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DataError(f"dtype {dtype} is not a plain numeric array", path=path, sample=sample, field=field)
    if size != expected:
        raise DataError(f"file has {size} bytes, its header ({dtype} {list(shape)}) needs {expected}: "
                        "truncated or not written completely", path=path, sample=sample, field=field)
    try:
        return fmt.open_memmap(path, mode="r") if mmap else np.load(path, allow_pickle=False)
    except (OSError, ValueError, MemoryError) as err:
        raise DataError(f"cannot map array file: {short_repr(str(err))}", path=path, sample=sample,
                        field=field) from None


def _array_path(root: Path, fname, mpath: Path, fld: str, allow_absolute: bool) -> Path:
    """Where a manifest's array file is. Rule: a relative path must resolve (symlinks
    included) inside the dataset directory; an absolute path is used as is, but only when
    the manifest says "allow_absolute_paths": true. A downloaded manifest cannot make us
    read (or, via add_pose_convention, copy) files elsewhere by accident."""
    if not (isinstance(fname, str) and fname.endswith(".npy") and len(fname) > 4 and "\x00" not in fname):
        raise DataError(f"must be the path of a .npy file, got {short_repr(fname)}", path=mpath, field=fld)
    path = Path(fname)
    if path.is_absolute():
        if not allow_absolute:
            raise DataError(f"absolute path {fname!r} refused: relative paths must stay inside the dataset "
                            'directory; set "allow_absolute_paths": true in the manifest to use files elsewhere',
                            path=mpath, field=fld)
        return path
    try:
        target = (root / path).resolve()
        inside = target.is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        target, inside = root / path, False
    if not inside:
        raise DataError(f"{fname!r} resolves to {target}, outside the dataset directory {root} "
                        '(relative paths and their symlinks must stay inside; absolute paths need '
                        '"allow_absolute_paths": true)', path=mpath, field=fld)
    return root / path


# ----------------------------------------------------------------------------- validation

def _read_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not path.exists():
        raise DataError("not a dataset directory (manifest.json missing)", path=path)
    try:
        raw = read_regular_bytes(path)
    except OSError as err:
        raise DataError(f"cannot read manifest: {err.strerror or err}", path=path) from None
    try:
        text = raw.decode("utf-8")
        manifest = json.loads(text)
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text: {err.reason}", path=path, line=raw.count(b"\n", 0, err.start) + 1) from None
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", path=path, line=err.lineno) from None
    except RecursionError:
        raise DataError("invalid JSON: nested deeper than the parser allows", path=path, field="top level") from None
    except ValueError as err:  # an integer beyond Python's 4300-digit limit: the scanner gives no position
        m = re.search(r"\d{4000,}", text)
        line = text.count("\n", 0, m.start()) + 1 if m else None
        raise DataError(f"invalid JSON: {short_repr(str(err))}", path=path, line=line,
                        field=None if m else "top level") from None
    if not isinstance(manifest, dict):
        raise DataError(f"must be a JSON object, got {type(manifest).__name__}", path=path, field="top level")
    return manifest


def _require(cond: bool, msg: str, mpath: Path, fld: str) -> None:
    if not cond:
        raise DataError(msg, path=mpath, field=fld)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse(root: Path, manifest: dict) -> tuple[Dataset, list[DataError]]:
    """Manifest -> Dataset. Structural errors raise; content problems are returned as a list
    (load_dataset raises the first, check_dataset reports them all)."""
    from msclr_core.conventions import get_convention

    mpath = root / "manifest.json"
    problems: list[DataError] = []
    fmt, version = manifest.get("format"), manifest.get("version")
    _require(fmt == FORMAT, f"expected {FORMAT!r}, got {short_repr(fmt)}", mpath, "format")
    _require(_is_int(version) and version == VERSION, f"unsupported version {short_repr(version)} (reader: {VERSION})",
             mpath, "version")
    for key in ("name", "classes", "conventions", "samples", "splits"):
        _require(key in manifest, "required key missing", mpath, key)
    name, classes = manifest["name"], manifest["classes"]
    _require(isinstance(name, str), "must be a string", mpath, "name")
    _require(isinstance(classes, list) and all(isinstance(c, str) for c in classes), "must be a list of strings", mpath, "classes")
    allow_absolute = manifest.get("allow_absolute_paths", False)
    _require(isinstance(allow_absolute, bool), "must be true or false", mpath, "allow_absolute_paths")

    samples = manifest["samples"]
    _require(isinstance(samples, dict), "must be an object of per-sample columns", mpath, "samples")
    for key in ("name", "label"):
        _require(isinstance(samples.get(key), list), "required list missing", mpath, f"samples.{key}")
    n = len(samples["name"])
    for col, values in samples.items():
        _require(isinstance(values, list), "column must be a list", mpath, f"samples.{col}")
        _require(len(values) == n, f"has {len(values)} entries, samples.name has {n}", mpath, f"samples.{col}")
    bad = next((i for i, s in enumerate(samples["name"]) if not isinstance(s, str)), None)
    if bad is not None:
        raise DataError(f"sample names must be strings, got {short_repr(samples['name'][bad])}", path=mpath,
                        sample=bad, field="samples.name")
    bad = next((i for i, v in enumerate(samples["label"]) if not _is_int(v)), None)
    if bad is not None:
        raise DataError(f"labels must be integers, got {short_repr(samples['label'][bad])}", path=mpath,
                        sample=samples["name"][bad], field="samples.label")
    out = [i for i, v in enumerate(samples["label"]) if not 0 <= v < len(classes)]  # Python ints: no overflow
    if out:
        problems.append(DataError(f"{len(out)} label(s) outside [0, {len(classes)}), e.g. "
                                  f"{short_repr(samples['label'][out[0]])}",
                                  path=mpath, sample=samples["name"][out[0]], field="samples.label"))
    labels = np.array([v if 0 <= v < len(classes) else -1 for v in samples["label"]], dtype=np.int64).reshape(n)

    convs = manifest["conventions"]
    _require(isinstance(convs, dict) and convs, "must be a non-empty object", mpath, "conventions")
    infos: dict[str, ConventionInfo] = {}
    for cname, entry in convs.items():
        fld = f"conventions.{cname}"
        try:
            conv = get_convention(cname)
        except KeyError as err:
            raise DataError(str(err.args[0]), path=mpath, field=fld) from None
        _require(isinstance(entry, dict), "must be an object", mpath, fld)
        fname, unit, shape = entry.get("file"), entry.get("unit"), entry.get("shape")
        apath = _array_path(root, fname, mpath, f"{fld}.file", allow_absolute)
        _require(isinstance(unit, str) and unit in UNITS, f"must be one of {sorted(UNITS)}, got {short_repr(unit)}",
                 mpath, f"{fld}.unit")
        _require(isinstance(shape, list) and len(shape) == 5 and all(_is_int(s) for s in shape)
                 and shape[0] >= 0 and min(shape[1:]) >= 1,
                 f"must be [N, C, T, V, M] (N >= 0, the others >= 1), got {short_repr(shape)}", mpath, f"{fld}.shape")
        if shape[0] != n:
            problems.append(DataError(f"has {shape[0]} rows, the manifest lists {n} samples", path=mpath, field=f"{fld}.shape"))
        if shape[3] != conv.num_joints:
            problems.append(DataError(f"V={shape[3]} but convention {cname!r} has {conv.num_joints} joints",
                                      path=mpath, field=f"{fld}.shape"))
        if not apath.exists():
            problems.append(DataError("array file missing", path=apath, field=f"{fld}.file"))
        else:
            try:
                arr = open_npy(apath, field=f"{fld}.file")
            except DataError as err:
                problems.append(err)
            else:
                if arr.dtype != np.float32 or list(arr.shape) != shape:
                    problems.append(DataError(f"array is {arr.dtype} {list(arr.shape)}, manifest says float32 {shape}",
                                              path=apath, field=f"{fld}.shape"))
        infos[cname] = ConventionInfo(cname, fname, unit, tuple(shape))

    splits_in = manifest["splits"]
    _require(isinstance(splits_in, dict), "must be an object protocol -> part -> indices", mpath, "splits")
    splits: dict[str, dict[str, np.ndarray]] = {}
    for proto, parts in splits_in.items():
        _require(isinstance(parts, dict), "must be an object part -> indices", mpath, f"splits.{proto}")
        for part in ("train", "test"):
            _require(part in parts, "required part missing", mpath, f"splits.{proto}.{part}")
        splits[proto] = {}
        for part, idx in parts.items():
            fld = f"splits.{proto}.{part}"
            _require(isinstance(idx, list) and all(_is_int(i) for i in idx), "must be a list of sample indices", mpath, fld)
            bad = [i for i in idx if not 0 <= i < n]
            if bad:
                problems.append(DataError(f"{len(bad)} index(es) outside [0, {n}), e.g. {short_repr(bad[0])}",
                                          path=mpath, field=fld))
            splits[proto][part] = np.array([i if 0 <= i < n else -1 for i in idx], dtype=np.int64).reshape(len(idx))

    meta = {k: v for k, v in samples.items() if k not in ("name", "label")}
    ds = Dataset(root=root, name=name, classes=list(classes), conventions=infos, sample_names=list(samples["name"]),
                 labels=labels, meta=meta, splits=splits)
    return ds, problems


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Open a dataset directory; raises DataError (naming the file and field) if it is invalid."""
    root = Path(root)
    ds, problems = _parse(root, _read_manifest(root))
    if problems:
        raise problems[0]
    return ds


def check_dataset(root: str | os.PathLike) -> dict:
    """Everything load_dataset checks, plus a scan of the values and the splits.

    Returns {samples, conventions, classes, splits: {proto: {part: n}}, problems, warnings, ok}.
    Memory stays bounded: arrays are scanned as memmaps in chunks of CHECK_CHUNK_BYTES.
    """
    root = Path(root)
    report = {"root": str(root), "samples": 0, "conventions": {}, "classes": 0, "splits": {},
              "problems": [], "warnings": []}
    try:
        ds, problems = _parse(root, _read_manifest(root))
    except DataError as err:
        report["problems"].append(str(err))
        report["ok"] = False
        return report
    report["problems"] += [str(p) for p in problems]
    report.update(samples=len(ds), classes=ds.num_classes)
    report["conventions"] = {c: {"shape": list(i.shape), "unit": i.unit} for c, i in ds.conventions.items()}

    names = ds.sample_names
    if not len(ds):
        report["problems"].append(f"{root / 'manifest.json'}: the dataset has no samples (samples.name is empty)")
    if not ds.splits:
        report["problems"].append(f"{root / 'manifest.json'}: no split protocol (splits is empty)")
    if len(set(names)) != len(names):
        report["problems"].append(f"{len(names) - len(set(names))} duplicate sample name(s) in samples.name")

    for proto, parts in ds.splits.items():
        report["splits"][proto] = {part: int(len(idx)) for part, idx in parts.items()}
        report["problems"] += [f"splits.{proto}.{part}: empty (no samples)" for part, idx in parts.items() if not len(idx)]
        valid = {p: idx[(idx >= 0) & (idx < len(ds))] for p, idx in parts.items()}
        for part, idx in valid.items():
            if len(np.unique(idx)) != len(idx):
                report["problems"].append(f"splits.{proto}.{part}: repeated sample indices")
        pnames = sorted(valid)
        for i, a in enumerate(pnames):
            for b in pnames[i + 1:]:
                both = np.intersect1d(valid[a], valid[b])
                if len(both):
                    report["problems"].append(f"splits.{proto}: {len(both)} sample(s) in both {a!r} and {b!r}, "
                                              f"e.g. {names[both[0]]}")
        covered = np.unique(np.concatenate(list(valid.values()))) if valid else np.array([])
        if len(covered) < len(ds):
            report["warnings"].append(f"splits.{proto}: {len(ds) - len(covered)} sample(s) in no part")

    for conv, info in ds.conventions.items():
        try:
            arr = ds.array(conv)
        except DataError:
            continue  # already reported by _parse
        if arr.dtype != np.float32 or arr.shape != info.shape or arr.shape[0] != len(ds):
            continue  # already reported by _parse
        bad = nonfinite_rows(arr, CHECK_CHUNK_BYTES)
        if len(bad):
            report["problems"].append(f"{info.file}: {len(bad)} sample(s) with NaN/inf values, "
                                      f"e.g. sample {bad[0]} ({names[bad[0]]})")
    report["ok"] = not report["problems"]
    return report
