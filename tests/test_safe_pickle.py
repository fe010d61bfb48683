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
