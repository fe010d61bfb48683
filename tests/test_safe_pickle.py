import builtins
import os
import pickle
import subprocess

import numpy as np
import pytest

from msclr_core.data.safe_pickle import restricted_load
from msclr_core.errors import DataError


class _Shell:  # would create a file through a shell command if it were ever called
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Eval:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.target)!r}, 'w').close()",))


class _Subprocess:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.target)],))


@pytest.mark.parametrize("payload, refused", [(_Shell, "system"), (_Eval, "builtins.eval"),
                                              (_Subprocess, "subprocess.call")])
@pytest.mark.parametrize("allow_numpy", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload, refused, allow_numpy):
    target = tmp_path / "pwned"
    path = tmp_path / "labels.pkl"
    # hidden inside ordinary data, the way a tampered label file would look
    path.write_bytes(pickle.dumps((["S001C001P001R001A001"], [0], payload(target)), protocol=2))
    with pytest.raises(DataError) as err:
        restricted_load(path, allow_numpy=allow_numpy)
    assert not target.exists()
    assert str(path) in str(err.value) and "refused global" in str(err.value) and refused in str(err.value)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_loads(tmp_path, protocol):
    obj = (["a", "b"], [1, 2], {"k": (1.5, None, True, b"\x00\xffraw")}, 2**70, -3)
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    assert restricted_load(path) == obj
    with open(path, "rb") as f:  # file objects work too
        assert restricted_load(f) == obj


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_only_with_allow_numpy(tmp_path, protocol):
    arrays = {"kp": np.arange(24, dtype=np.float16).reshape(1, 2, 4, 3), "score": np.float32(0.5),
              "f": np.asfortranarray(np.ones((3, 2), np.int64))}
    path = tmp_path / "ann.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    with pytest.raises(DataError, match="refused global numpy"):
        restricted_load(path)
    out = restricted_load(path, allow_numpy=True)
    assert out["kp"].dtype == np.float16 and np.array_equal(out["kp"], arrays["kp"])
    assert out["score"] == np.float32(0.5) and np.array_equal(out["f"], arrays["f"])


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.pkl"
    path.write_bytes(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2))
    with pytest.raises(DataError, match="object"):
        restricted_load(path, allow_numpy=True)


def test_other_codecs_are_refused(tmp_path):
    # _codecs.encode is allowed only as the latin-1 bytes constructor of protocol 2
    payload = b"c_codecs\nencode\n(Vabc\nVrot13\ntR."
    path = tmp_path / "codec.pkl"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="rot13"):
        restricted_load(path)


def test_npy_passed_as_pickle_is_explained(tmp_path):
    path = tmp_path / "train_label.npy"
    np.save(path, np.zeros(3, np.int64))
    with pytest.raises(DataError, match="numpy .npy file, not a pickle"):
        restricted_load(path)


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(list(range(100)), protocol=2)[:20])
    with pytest.raises(DataError, match="not a valid data pickle"):
        restricted_load(path)
    with pytest.raises(DataError, match="cannot read"):
        restricted_load(tmp_path / "absent.pkl")


# ---------------------------------------------------------------- crafted pickles (issue 7)
# Byte strings written by hand: each once crashed, hung or exhausted the old loader (the C
# unpickler with an allow-list), or let a pickle change the loader's own functions.

P2 = b"\x80\x02"


def _load(tmp_path, payload, **kw):
    path = tmp_path / "crafted.pkl"
    path.write_bytes(payload)
    return path, restricted_load(path, **kw)


@pytest.mark.parametrize("payload, why", [
    # numpy dtype state with object flags: numpy raised SystemError (memory is read as PyObject*)
    (None, "dtype"),
    # a 1e6-deep tuple as dict key: hash() recursed in C and overflowed the stack (segfault)
    (P2 + b"}" + b")" + b"\x85" * 1_000_000 + b"K\x01s.", "dict key"),
    # numpy.ndarray called directly: any shape allocates (here 2**40 bytes)
    (P2 + b"cnumpy\nndarray\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85\x85R.", "REDUCE"),
    (P2 + b"cnumpy\nndarray\nK\x05\x85\x81.", "NEWOBJ"),
    # BUILD on an allowed function: would set attributes on a function that outlives the load
    (P2 + b"c_codecs\nencode\nN}X\x08\x00\x00\x00__name__X\x01\x00\x00\x00xs\x86b.", "BUILD on function"),
    (P2 + b"]" * 100_000 + b"a" * 99_999 + b".", "nested deeper"),
    (P2 + b"]q\x00h\x00a.", "cycle"),
    (P2 + b"c__builtin__\nbytes\nJ\x00\x00\x00\x10\x85R.", "bytes is only allowed"),
    (P2 + b"\x82\x01.", "EXT"),
])
def test_crafted_pickles_are_refused(tmp_path, payload, why):
    if payload is None:
        blob = bytearray(pickle.dumps(np.array([1e-300, 2e-300]), protocol=2))
        i = blob.index(b"J\xff\xff\xff\xffK\x00t")
        blob[i + 6] = 63  # NPY_ITEM_REFCOUNT | NPY_ITEM_HASOBJECT | ...
        payload = bytes(blob)
    with pytest.raises(DataError, match=why) as err:
        _load(tmp_path, payload, allow_numpy=True)
    assert str(tmp_path / "crafted.pkl") in str(err.value) and "byte" in str(err.value)
    assert _compat_encode_still_works(tmp_path)


def _compat_encode_still_works(tmp_path):
    # the loader's functions are fresh per load: nothing a pickle did survives it
    return _load(tmp_path, pickle.dumps(b"\x00\xff", protocol=2))[1] == b"\x00\xff"


def test_huge_memo_index_allocates_nothing(tmp_path):
    # LONG_BINPUT 2**31-1: the C unpickler resized its memo table to 2**32 entries (32 GiB)
    assert _load(tmp_path, P2 + b"Nr\xff\xff\xff\x7f.")[1] is None


def test_protocol_0_to_2_builtins(tmp_path):
    obj = (b"", {1, 2}, frozenset({"a"}), [b"x"])
    for protocol in (0, 1, 2):
        assert _load(tmp_path, pickle.dumps(obj, protocol=protocol))[1] == obj


def test_field_is_named(tmp_path):
    path = tmp_path / "labels.pkl"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        restricted_load(path, field="labels")
    assert err.value.field == "labels" and "labels.pkl" in str(err.value)
