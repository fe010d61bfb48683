"""Load untrusted pickles (label files, pyskl annotations) without running their code.

A pickle is a small program: any global it names is imported and may be called while
loading, so `pickle.load` on a downloaded file can run `os.system`. `restricted_load`
uses an Unpickler whose `find_class` refuses every global except a reviewed allow-list:

- always: `_codecs.encode`, but only for the latin-1 codec. Protocol-2 pickles (what
  mmcv/pyskl write) store every `bytes` object as `_codecs.encode(str, "latin1")`.
- with `allow_numpy=True`: exactly the numpy functions/types that rebuild arrays,
  dtypes and scalars: `_reconstruct` + `ndarray` (protocol <= 4), `_frombuffer`
  (protocol 5), `dtype`, and `scalar`, under both the numpy 1 (`numpy.core`) and
  numpy 2 (`numpy._core`) module names. Object arrays are refused (their items would
  be arbitrary pickled objects).

Lists, tuples, dicts, sets, str, bytes, numbers, bool and None need no global at all.
Anything else raises DataError naming the file and the refused global.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle

from msclr_core.errors import DataError


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Stand-in for _codecs.encode: the only use in data pickles is bytes <- latin-1 str.
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return text.encode("latin1", errors)


def _numpy_globals() -> dict[tuple[str, str], object]:
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric

    def frombuffer(buf, dtype, shape, order):
        if dtype.hasobject:
            raise pickle.UnpicklingError("object arrays are not allowed")
        return numeric._frombuffer(buf, dtype, shape, order)

    def checked_dtype(*args, **kwargs):
        dt = np.dtype(*args, **kwargs)
        if dt.hasobject:
            raise pickle.UnpicklingError("object dtypes are not allowed")
        return dt

    table = {}
    for mod in ("numpy.core", "numpy._core"):  # pickles written by numpy 1 or numpy 2
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = checked_dtype
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, *, allow_numpy: bool, source: str):
        super().__init__(file)
        self._source = source
        self._allowed = {("_codecs", "encode"): _latin1_encode}
        if allow_numpy:
            self._allowed.update(_numpy_globals())

    def find_class(self, module, name):
        # Protocol 0-2 pickles name Python 2 modules (__builtin__...): report the Python 3 names.
        # None of the allowed globals is in these tables, so this only affects messages.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed[(module, name)]
        except KeyError:
            hint = "" if module.split(".")[0] != "numpy" else " (numpy arrays need allow_numpy=True)"
            raise DataError(f"refused global {module}.{name}{hint}; this loader only accepts plain data",
                            path=self._source) from None

    def persistent_load(self, pid):
        raise DataError("refused persistent id (not a plain data pickle)", path=self._source)


def restricted_load(path_or_fileobj, *, allow_numpy: bool = False):
    """Unpickle plain data (and numpy arrays if allowed) from a path or binary file object."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        source = str(path_or_fileobj)
        try:
            with open(path_or_fileobj, "rb") as f:
                data = f.read()
        except OSError as err:
            raise DataError(f"cannot read pickle: {err.strerror or err}", path=source) from None
    else:
        source = str(getattr(path_or_fileobj, "name", "<pickle stream>"))
        data = path_or_fileobj.read()
    if data[:6] == b"\x93NUMPY":  # a known mistake: a label .npy passed where a pickle belongs
        raise DataError("this is a numpy .npy file, not a pickle (pass the label .pkl here)", path=source)
    fileobj = io.BytesIO(data)
    try:
        return _RestrictedUnpickler(fileobj, allow_numpy=allow_numpy, source=source).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"not a valid data pickle: {err}", path=source) from None
