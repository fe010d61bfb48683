"""Load untrusted pickles (label files, pyskl annotations) without running their code.

A pickle is a small program: any global it names is imported and may be called while
loading, so `pickle.load` on a downloaded file can run `os.system`. `restricted_load`
runs the pure-Python unpickler with every dangerous opcode under our control:

- globals: only a reviewed allow-list, each a fresh wrapper per load (a BUILD opcode can
  never change a function that outlives the load):
  - always `_codecs.encode`, but only for the latin-1 codec. Protocol-2 pickles (what
    mmcv/pyskl write) store every `bytes` object as `_codecs.encode(str, "latin1")`.
  - always `builtins.bytes()` without arguments (protocol <= 2 writes b"" that way) and
    `builtins.set` / `frozenset` of a list (protocol <= 3 sets).
  - with `allow_numpy=True`: what numpy needs to rebuild numeric arrays, dtypes and
    scalars (`_reconstruct` + `ndarray`, `_frombuffer`, `dtype`, `scalar`, under both the
    numpy 1 `numpy.core` and numpy 2 `numpy._core` names). Only plain numeric dtypes
    (bool, int, uint, float, complex) in their canonical form: a crafted dtype state
    (object flags, structured fields with out-of-range offsets) crashes numpy itself.
    `ndarray` is a token, not the class, so a pickle cannot allocate an array of any
    shape it likes; array data must match the declared shape exactly.
- REDUCE may call only those wrappers; BUILD may only set an array's or dtype's state;
  NEWOBJ/OBJ/INST, extension codes and persistent ids are refused.
- dict keys and set items must be flat scalars (hashing a deeply nested tuple overflows
  the C stack), and the result may nest at most MAX_DEPTH containers, with no cycles
  (later reprs, comparisons and copies recurse).
- the memo is a dict, so a huge memo index cannot allocate a huge table.

Anything else raises DataError naming the file and the refused global or opcode.
The pure-Python unpickler is about 3x slower than pickle's C one (~0.5 s per 1000 pyskl
annotations here); an import reads its pickle once.
"""

from __future__ import annotations

import _compat_pickle
import io
import itertools
import os
import pickle
import reprlib

from msclr_core.errors import DataError
from msclr_core.io_utils import read_regular_bytes

MAX_DEPTH = 64  # containers inside containers; data pickles nest 4-5 deep
_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_CONTAINERS = (list, tuple, dict, set, frozenset)
_NUMERIC_KINDS = "biufc"

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 60, 60, 40


def short_repr(value) -> str:
    """A bounded repr for error messages about untrusted values.

    Plain repr() of hostile input can take exponential time (YAML alias bombs, shared
    pickle memo entries), overflow the recursion limit (deep nesting) or raise (ints
    beyond Python's 4300-digit str limit)."""
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - any failure just means "describe it by type"
        return f"<{type(value).__name__}>"


class _Refused(Exception):
    """Raised inside the unpickler; restricted_load turns it into DataError."""


_NDARRAY = object()  # stands for numpy.ndarray: only _reconstruct may use it


def _builtin_globals() -> dict[tuple[str, str], object]:
    """Fresh stand-ins for the builtins that protocol 0-3 data pickles call."""

    def latin1_encode(text, encoding="utf-8", errors="strict"):
        # _codecs.encode: the only use in data pickles is bytes <- latin-1 str.
        if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
            raise _Refused(f"_codecs.encode with codec {short_repr(encoding)} is not allowed")
        return text.encode("latin1", "strict")

    def empty_bytes(*args):
        if args:  # bytes(10**12) would allocate a terabyte
            raise _Refused("builtins.bytes is only allowed without arguments")
        return b""

    def make_set(kind):
        def build(items=()):
            if not isinstance(items, list):
                raise _Refused(f"builtins.{kind.__name__} only of a list")
            for item in items:
                _check_key(item)
            return kind(items)
        return build

    return {("_codecs", "encode"): latin1_encode, ("builtins", "bytes"): empty_bytes,
            ("builtins", "set"): make_set(set), ("builtins", "frozenset"): make_set(frozenset)}


def _numpy_globals() -> dict[tuple[str, str], object]:
    """Fresh wrappers around the numpy functions that rebuild arrays (one set per load)."""
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    def reconstruct(subtype, shape, code):
        # numpy writes exactly _reconstruct(ndarray, (0,), b'b'), then BUILD sets the real state
        if subtype is not _NDARRAY or shape != (0,) or code not in (b"b", "b"):
            raise _Refused("numpy _reconstruct only as numpy writes it: (ndarray, (0,), b'b')")
        return np.ndarray((0,), np.int8)

    def frombuffer(buf, dtype, shape, order):
        _check_dtype(dtype)
        size_ok = isinstance(buf, (bytes, bytearray)) and len(buf) == _numpy_nbytes(shape, dtype)
        if not size_ok or order not in ("C", "F"):
            raise _Refused("numpy _frombuffer: data does not match dtype and shape")
        return np.frombuffer(buf, dtype).reshape(shape, order=order)

    def new_dtype(obj, align=False, copy=False):
        if not isinstance(obj, str):
            raise _Refused(f"numpy dtype from {type(obj).__name__} is not allowed")
        dt = np.dtype(obj, bool(align), True)  # always a copy: BUILD must never touch numpy's own dtypes
        _check_dtype(dt)
        return dt

    def scalar(dtype, data):
        _check_dtype(dtype)
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise _Refused("numpy scalar: data does not match its dtype")
        return multiarray.scalar(dtype, data)

    table = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): new_dtype}
    for mod in ("numpy.core", "numpy._core"):  # pickles written by numpy 1 or numpy 2
        table[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        table[(f"{mod}.multiarray", "scalar")] = scalar
        table[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return table


def _check_dtype(dt) -> None:
    """Refuse anything but a canonical plain numeric dtype (see the module docstring)."""
    import numpy as np

    if not isinstance(dt, np.dtype) or dt.kind not in _NUMERIC_KINDS or dt.names is not None or dt.subdtype:
        raise _Refused(f"numpy dtype {short_repr(dt)} is not allowed (only plain numeric dtypes)")
    ref = np.dtype(dt.str)
    if (dt.flags, dt.itemsize, dt.alignment, dt.hasobject) != (ref.flags, ref.itemsize, ref.alignment, False):
        raise _Refused(f"numpy dtype {dt.str} has a tampered state")


def _check_key(key) -> None:
    """Dict keys / set items: scalars or small tuples of scalars (hash() recurses in C)."""
    import numpy as np

    todo = [(key, 0)]
    while todo:
        k, depth = todo.pop()
        if isinstance(k, tuple) and depth < 4:
            todo += [(item, depth + 1) for item in k]
        elif not isinstance(k, (*_SCALARS, np.generic)):
            raise _Refused(f"dict key / set item of type {type(k).__name__} is not allowed")


def _children(container):
    return itertools.chain.from_iterable(container.items()) if isinstance(container, dict) else iter(container)


def _check_nesting(obj) -> None:
    """At most MAX_DEPTH nested containers and no reference cycles (an iterative walk:
    recursion here would hit the very limit this guards)."""
    if not isinstance(obj, _CONTAINERS):
        return
    on_path, done = {id(obj)}, set()  # ids stay unique: the whole structure is alive meanwhile
    stack = [(obj, _children(obj))]
    while stack:
        node, children = stack[-1]
        child = next((c for c in children if isinstance(c, _CONTAINERS) and id(c) not in done), None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            done.add(id(node))
        elif id(child) in on_path:
            raise _Refused("the data refers to itself (a reference cycle)")
        elif len(stack) >= MAX_DEPTH:
            raise _Refused(f"containers nested deeper than {MAX_DEPTH} levels")
        else:
            on_path.add(id(child))
            stack.append((child, _children(child)))


class _RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: every opcode is overridable
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, allow_numpy: bool):
        super().__init__(file)
        self._allowed = _builtin_globals()
        if allow_numpy:
            self._allowed.update(_numpy_globals())
        self._callables = {id(f) for f in self._allowed.values() if f is not _NDARRAY}

    def find_class(self, module, name):
        # Protocol 0-2 pickles name Python 2 modules (__builtin__...): report the Python 3 names.
        # None of the allowed globals is in these tables, so this only affects messages.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed[(module, name)]
        except KeyError:
            hint = "" if module.split(".")[0] != "numpy" else " (numpy arrays need allow_numpy=True)"
            raise _Refused(f"refused global {module}.{name}{hint}") from None

    def persistent_load(self, pid):
        raise _Refused("refused persistent id (not a plain data pickle)")

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self._callables or not isinstance(args, tuple):
            raise _Refused(f"refused call of {type(func).__name__} (REDUCE): only the allowed globals are callable")
        self.stack[-1] = func(*args)

    def _load_build(self):
        import numpy as np

        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3 and state[1] in ("<", ">", "|", "=")
                    and state[2:5] == (None, None, None) and state[5:8] == (-1, -1, 0)):
                raise _Refused("numpy dtype state is not that of a plain numeric dtype")
            inst.__setstate__(state)
            _check_dtype(inst)
        elif isinstance(inst, np.ndarray):
            if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1
                    and isinstance(state[3], bool) and isinstance(state[4], (bytes, bytearray))):
                raise _Refused("numpy array state is not (1, shape, dtype, fortran, bytes)")
            _, shape, dtype, _, raw = state
            _check_dtype(dtype)
            if len(raw) != _numpy_nbytes(shape, dtype):
                raise _Refused(f"numpy array data has {len(raw)} bytes, shape {short_repr(shape)} needs another size")
            inst.__setstate__(state)
        else:
            raise _Refused(f"refused BUILD on {type(inst).__name__} (only numpy arrays and dtypes have state)")

    def _refuse_opcode(self):
        raise _Refused("refused object construction opcode (NEWOBJ/OBJ/INST/EXT): not a plain data pickle")

    def _load_append(self):
        value = self.stack.pop()
        self._target(list).append(value)

    def _load_appends(self):
        items = self.pop_mark()
        self._target(list).extend(items)

    def _load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        _check_key(key)
        self._target(dict)[key] = value

    def _load_setitems(self):
        items = self.pop_mark()
        target = self._target(dict)
        for i in range(0, len(items) - 1, 2):
            _check_key(items[i])
            target[items[i]] = items[i + 1]

    def _load_dict(self):
        items = self.pop_mark()
        for k in items[::2]:
            _check_key(k)
        self.append({items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)})

    def _load_additems(self):
        items = self.pop_mark()
        for k in items:
            _check_key(k)
        self._target(set).update(items)

    def _load_frozenset(self):
        items = self.pop_mark()
        for k in items:
            _check_key(k)
        self.append(frozenset(items))

    def _target(self, kind):
        target = self.stack[-1] if self.stack else None
        if type(target) is not kind:
            raise _Refused(f"opcode for a {kind.__name__} applied to {type(target).__name__}")
        return target


def _numpy_nbytes(shape, dtype) -> int:
    if not (isinstance(shape, tuple) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise _Refused(f"array shape must be a tuple of sizes, got {short_repr(shape)}")
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


_D = _RestrictedUnpickler.dispatch
_D[pickle.REDUCE[0]] = _RestrictedUnpickler._load_reduce
_D[pickle.BUILD[0]] = _RestrictedUnpickler._load_build
_D[pickle.APPEND[0]] = _RestrictedUnpickler._load_append
_D[pickle.APPENDS[0]] = _RestrictedUnpickler._load_appends
_D[pickle.SETITEM[0]] = _RestrictedUnpickler._load_setitem
_D[pickle.SETITEMS[0]] = _RestrictedUnpickler._load_setitems
_D[pickle.DICT[0]] = _RestrictedUnpickler._load_dict
_D[pickle.ADDITEMS[0]] = _RestrictedUnpickler._load_additems
_D[pickle.FROZENSET[0]] = _RestrictedUnpickler._load_frozenset
for _op in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST, pickle.EXT1, pickle.EXT2, pickle.EXT4):
    _D[_op[0]] = _RestrictedUnpickler._refuse_opcode
del _D, _op


def restricted_load(path_or_fileobj, *, allow_numpy: bool = False, field: str | None = None):
    """Unpickle plain data (and numpy arrays if allowed) from a path or binary file object.

    `field` names what the file holds (e.g. "labels") in every DataError; the message
    also gives the byte offset where reading stopped."""
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        source = str(path_or_fileobj)
        try:
            data = read_regular_bytes(path_or_fileobj, field=field)  # a FIFO would block forever
        except DataError:
            raise
        except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
            raise DataError(f"cannot read pickle: {getattr(err, 'strerror', None) or err}", path=source,
                            field=field) from None
    else:
        source = str(getattr(path_or_fileobj, "name", "<pickle stream>"))
        data = path_or_fileobj.read()
    if data[:6] == b"\x93NUMPY":  # a known mistake: a label .npy passed where a pickle belongs
        raise DataError("this is a numpy .npy file, not a pickle (pass the label .pkl here)", path=source, field=field)
    fileobj = io.BytesIO(data)
    try:
        obj = _RestrictedUnpickler(fileobj, allow_numpy=allow_numpy).load()
        _check_nesting(obj)
        return obj
    except _Refused as err:
        why = f"{err}; this loader only accepts plain data"
    except MemoryError:
        why = "not a valid data pickle: it asks for more memory than there is"
    except Exception as err:  # noqa: BLE001 - malformed opcodes fail in many ways; all mean "not a data pickle"
        why = f"not a valid data pickle: {type(err).__name__}: {short_repr(str(err))}"
    raise DataError(f"{why} (stopped near byte {fileobj.tell()} of {len(data)})", path=source, field=field)
