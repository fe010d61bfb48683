"""NaN/inf checks of dataset arrays, vectorised and chunked so that a memory-mapped array
of any size is scanned with bounded memory (one chunk of CHECK_CHUNK_BYTES at a time).

`nonfinite_rows` is the scan (shared by `check_dataset`, which lists every problem, and
`require_finite`, which training calls when it opens a dataset). `require_finite` raises a
NonFiniteDataError naming the file, the convention and the first bad sample (index and
name), and remembers a file it has passed (by inode, size and mtime) so that opening the
same dataset again in the same process costs one stat per array.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from msclr_core.errors import DataError

if TYPE_CHECKING:
    from .dataset import Dataset

CHECK_CHUNK_BYTES = 64 << 20  # arrays are scanned in chunks of at most this size
_PASSED: set[tuple] = set()  # (path, device, inode, size, mtime_ns, ctime_ns) of arrays found all finite


class NonFiniteDataError(DataError):
    """A dataset array holds NaN or inf coordinates (names file, sample and convention)."""


def nonfinite_rows(arr: np.ndarray, chunk_bytes: int = CHECK_CHUNK_BYTES) -> np.ndarray:
    """Indices (int64) of the rows of `arr` (first axis = samples) holding any NaN or inf."""
    n = arr.shape[0]
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.itemsize)
    step = max(1, chunk_bytes // row_bytes)
    found = []
    for start in range(0, n, step):
        block = np.asarray(arr[start:start + step]).reshape(min(step, n - start), -1)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            found.append(bad + start)
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, np.int64)


def _first_bad_value(row: np.ndarray) -> str:
    c, t, v, m = (int(i) for i in np.argwhere(~np.isfinite(row))[0])
    return f"{row[c, t, v, m]} at channel {c}, frame {t}, joint {v}, person {m}"


def require_finite(ds: Dataset, conventions=None) -> None:
    """Raise NonFiniteDataError if an array of `conventions` (default: all) of `ds` holds
    NaN or inf anywhere. Cost: one read of each array (page cache or disk) and np.isfinite
    over it, once per array file version per process."""
    for conv in conventions or list(ds.conventions):
        info = ds._info(conv)
        path = ds.root / info.file
        st = os.stat(path)
        key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _PASSED:
            continue
        arr = ds.array(conv)
        rows = nonfinite_rows(arr)
        if len(rows):
            i = int(rows[0])
            more = f" ({len(rows)} samples in all; `msclr data check` lists the problems)" if len(rows) > 1 else ""
            raise NonFiniteDataError(
                f"convention {conv!r} has a non-finite coordinate, {_first_bad_value(np.asarray(arr[i]))}{more}: "
                "fix or drop the sample before training", path=path, sample=f"{i} ({ds.sample_names[i]})",
                field=f"conventions.{conv}")
        _PASSED.add(key)
