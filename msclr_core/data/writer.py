"""Writing datasets (the format is described in `dataset.py`).

Writes are atomic: everything goes into a temporary directory beside the target, which is
renamed into place only after the manifest validates. An exception leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from msclr_core.errors import DataError
from msclr_core.io_utils import atomic_dir, atomic_write_text

from .dataset import FORMAT, UNITS, VERSION, ConventionInfo, Dataset, load_dataset


def _manifest_dict(*, name, classes, infos: dict[str, ConventionInfo], sample_names, labels, meta, splits,
                   source=None) -> dict:
    n = len(sample_names)
    samples = {"name": [str(s) for s in sample_names], "label": [int(v) for v in np.asarray(labels).reshape(n)]}
    for col, values in (meta or {}).items():
        if col in samples:
            raise DataError(f"metadata column {col!r} clashes with a built-in column", field=f"samples.{col}")
        samples[col] = [v.item() if isinstance(v, np.generic) else v for v in values]
    return {
        "format": FORMAT, "version": VERSION, "name": str(name), "classes": [str(c) for c in classes],
        "conventions": {c: {"file": i.file, "unit": i.unit, "shape": list(i.shape)} for c, i in infos.items()},
        "samples": samples,
        "splits": {p: {part: [int(i) for i in idx] for part, idx in parts.items()} for p, parts in splits.items()},
        **({"source": source} if source else {}),  # how the dataset was built (JSON-ready), e.g. NTU body selection
    }


def _shrink_npy(path: Path, rows: int) -> None:
    """Cut a .npy file to its first `rows` rows in place: rewrite the shape in the header
    (padded to the same length, so the data offset does not move) and truncate the file."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
        new = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
                    "shape": (rows, *shape[1:])}).encode("latin1")
        hlen_bytes = 2 if version == (1, 0) else 4
        header_len = offset - 6 - 2 - hlen_bytes
        f.seek(6 + 2 + hlen_bytes)
        f.write(new + b" " * (header_len - len(new) - 1) + b"\n")
        f.truncate(offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)


class DatasetWriter:
    """Stream rows into a new dataset without holding it in memory.

        with DatasetWriter(out, capacity=N, shapes={"ntu-rgb+d": (3, 50, 25, 2)}, units={"ntu-rgb+d": "m"}) as w:
            w.arrays["ntu-rgb+d"][i] = clip          # or w.write(i, {"ntu-rgb+d": clip})
            w.commit(name=..., classes=..., sample_names=..., labels=..., meta=..., splits=...)

    Arrays live as open_memmap files in a temporary directory beside `root`. commit() may
    list fewer samples than `capacity` (e.g. skipped bad files): the first len(sample_names)
    rows are kept. Leaving the `with` block by an exception, or without commit(), removes the
    temporary directory; `root` is created only by a successful commit().
    """

    def __init__(self, root, *, capacity: int, shapes: dict[str, tuple[int, ...]], units: dict[str, str] | None = None,
                 overwrite: bool = False):
        self.root = Path(root)
        units = units or {}
        for conv, unit in units.items():
            if unit not in UNITS:
                raise DataError(f"unit must be one of {sorted(UNITS)}, got {unit!r}", field=f"conventions.{conv}.unit")
        self.capacity = int(capacity)
        self._cm = atomic_dir(self.root, overwrite=overwrite)
        try:
            self.tmp = self._cm.__enter__()
        except FileExistsError:
            raise DataError("output directory already exists (pass overwrite to replace it)", path=self.root) from None
        self._open = True
        try:
            self.infos = {c: ConventionInfo(c, f"{c}.npy", units.get(c, "m"), (self.capacity, *map(int, s)))
                          for c, s in shapes.items()}
            self.arrays = {c: open_memmap(self.tmp / i.file, mode="w+", dtype=np.float32, shape=i.shape)
                           for c, i in self.infos.items()}
        except BaseException as err:
            self.abort(err)
            raise

    def write(self, index: int, clips: dict[str, np.ndarray]) -> None:
        for conv, clip in clips.items():
            self.arrays[conv][index] = clip

    def commit(self, *, name, classes, sample_names, labels, meta=None, splits, source=None) -> Dataset:
        n = len(sample_names)
        if n > self.capacity:
            raise DataError(f"{n} samples listed but capacity is {self.capacity}", path=self.root, field="samples.name")
        if n == 0:  # a dataset nothing can train or evaluate on: write nothing rather than an empty shell
            raise DataError("no samples to write: refusing to create an empty dataset", path=self.root,
                            field="samples.name")
        for conv, mm in self.arrays.items():
            mm.flush()
        self.arrays.clear()  # drop the memmaps before resizing/renaming their files
        infos = {}
        for conv, info in self.infos.items():
            if n < self.capacity:
                _shrink_npy(self.tmp / info.file, n)
            infos[conv] = ConventionInfo(conv, info.file, info.unit, (n, *info.shape[1:]))
        manifest = _manifest_dict(name=name, classes=classes, infos=infos, sample_names=sample_names,
                                  labels=labels, meta=meta, splits=splits, source=source)
        atomic_write_text(self.tmp / "manifest.json", json.dumps(manifest, separators=(",", ":")))
        load_dataset(self.tmp)  # never publish a dataset that would not load
        self._open = False
        self._cm.__exit__(None, None, None)  # rename temp dir -> root
        return load_dataset(self.root)

    def abort(self, err: BaseException | None = None) -> None:
        """Remove the temporary directory (idempotent)."""
        if self._open:
            self._open = False
            self.arrays.clear()
            err = err or RuntimeError("dataset write aborted")
            self._cm.__exit__(type(err), err, err.__traceback__)  # atomic_dir removes the temp dir

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.abort(exc)
        return False


def write_dataset(root, *, name: str, classes, arrays: dict[str, np.ndarray], sample_names, labels,
                  meta=None, splits, units: dict[str, str] | None = None, overwrite: bool = False) -> Dataset:
    """Write a whole in-memory dataset atomically (see DatasetWriter for the streaming form)."""
    n = len(sample_names)
    for conv, arr in arrays.items():
        if np.ndim(arr) != 5 or len(arr) != n:
            raise DataError(f"array must be N×C×T×V×M with N={n}, got shape {np.shape(arr)}", field=f"conventions.{conv}")
    shapes = {c: np.shape(a)[1:] for c, a in arrays.items()}
    with DatasetWriter(root, capacity=n, shapes=shapes, units=units, overwrite=overwrite) as w:
        for conv, arr in arrays.items():
            w.arrays[conv][:] = arr
        return w.commit(name=name, classes=classes, sample_names=sample_names, labels=labels, meta=meta, splits=splits)
