"""Hostile inputs for the data readers (issue 3), property-based: valid NTU .skeleton, BVH,
ASF/AMC files and real-mocap .npz arrays, mutated at random (truncation at any byte, tokens
replaced by garbage / NaN / huge numbers, wrong counts, lines dropped or repeated, empty
files). Every reader must either return finite arrays of a consistent shape or raise a
project error (MsclrError) that names the file and the line or field; never anything else.

For .skeleton files the fast vectorised parser must also agree with the strict one: it may
only accept a file the strict parser accepts, with bit-identical values.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fault_report import count_hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_mocap import AMC, ASF, BVH
from test_ntu import skeleton_text

from msclr_core.data import mocap, ntu, ntu_reader, skeleton_scan
from msclr_core.errors import DataError, MsclrError

pytestmark = pytest.mark.faults

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

GARBAGE = [b"nan", b"NaN", b"-nan", b"inf", b"-Infinity", b"1e999", b"-1e400", b"3.5e38", b"-1e308", b"1e-400",
           b"", b"x", b"--1", b"1.2.3", b"+", b"-", b".", b"1e", b"e5", b"1e+", b".e1", b"1_000", b"0x1F", b"\xff\xfe",
           b"\x00", b"\t", b"  ", b"\r", b"\n", b"\r\n\r\n", b"{", b"}", b"99999999999999999999", b"-0",
           b"123456789012345678901234567890", b"1" * 40, b"0.000000000000000000001"]
PIECES = ["-", "+", "1", "0", "25", ".", ".5", "e", "E", "e-", "e+", "7", " "]
numberish = st.one_of(  # near misses of a float literal
    st.text(alphabet="0123456789.eE+- ", max_size=7),
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join),
).map(str.encode)
tokens = st.one_of(
    st.sampled_from(GARBAGE),
    numberish,
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: repr(x).encode()),
    st.integers(-10**20, 10**20).map(lambda i: str(i).encode()),
    st.binary(max_size=4),
)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """One to three random edits of `base`."""
    data = base
    for op in draw(st.lists(st.sampled_from(["truncate", "token", "token", "line", "count", "insert", "empty"]),
                            min_size=1, max_size=3)):
        lines = data.split(b"\n")
        if op == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif op == "token":  # replace one whitespace-separated token
            parts = re.split(rb"(\s+)", data)
            if len(parts) > 1:
                k = draw(st.integers(0, (len(parts) - 1) // 2)) * 2
                parts[k] = draw(tokens)
                data = b"".join(parts)
        elif op == "line":  # drop or repeat a line
            k = draw(st.integers(0, len(lines) - 1))
            lines[k:k + 1] = [] if draw(st.booleans()) else [lines[k], lines[k]]
            data = b"\n".join(lines)
        elif op == "count":  # a one-value line (numFrame, numBody, numJoint, Frames ...) gets another number
            single = [i for i, ln in enumerate(lines) if len(ln.split()) == 1] or [0]
            k = draw(st.sampled_from(single))
            lines[k] = str(draw(st.integers(-3, 60) | st.sampled_from([10**9, 10**19]))).encode()
            data = b"\n".join(lines)
        elif op == "insert":
            k = draw(st.integers(0, len(data)))
            data = data[:k] + draw(tokens) + data[k:]
        else:
            data = b""
    return data


def _assert_names_place(err: MsclrError, path: Path) -> None:
    assert isinstance(err, DataError), repr(err)
    assert str(path) in str(err), str(err)
    assert err.line is not None or err.field is not None, str(err)
    if err.line is not None:
        assert f"line {err.line}" in str(err)


# ----------------------------------------------------------------------------- NTU .skeleton

@st.composite
def skeleton_files(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    text, _ = skeleton_text(rng, frames=draw(st.integers(1, 4)), bodies=draw(st.integers(0, 2)),
                            fmt=draw(st.sampled_from(["{:.7g}", "{:.6e}", "{:.3f}"])),
                            newline=draw(st.sampled_from(["\n", "\r\n"])))
    return draw(mutated(text.encode()))


@settings(max_examples=400, **SETTINGS)
@given(data=skeleton_files())
def test_hostile_skeleton(tmp_path, data):
    count_hostile("ntu .skeleton")
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(data)
    try:
        strict = ntu_reader._read_strict(str(path), data)
    except ntu.SkeletonFormatError:
        strict = None
    try:
        fast = ntu_reader._read_fast(data)
    except ntu_reader._NotFast:
        fast = None
    if fast is not None:  # the fast path never accepts what the strict parser rejects
        assert strict is not None, data[:200]
        assert fast.frame_of.tolist() == strict.frame_of.tolist() and fast.ids.tolist() == strict.ids.tolist()
        assert fast.n_frames == strict.n_frames
        np.testing.assert_array_equal(fast.xyz, strict.xyz)
    scanned = skeleton_scan.scan(data)
    if scanned is not None:  # nor does the C scanner
        assert strict is not None, data[:200]
        frame_of, ids, xyz, n_frames = scanned
        assert frame_of.tolist() == strict.frame_of.tolist() and ids.tolist() == strict.ids.tolist()
        assert n_frames == strict.n_frames
        np.testing.assert_array_equal(xyz, strict.xyz)
    try:
        sk = ntu.read_skeleton(path)
    except MsclrError as err:
        assert strict is None
        _assert_names_place(err, path)
        return
    assert strict is not None
    assert sk.xyz.shape == (strict.n_frames, len(sk.body_ids), 25, 3) and sk.present.shape == sk.xyz.shape[:2]
    assert np.isfinite(sk.xyz).all() and np.isfinite(sk.to_clip(2)).all()


ONE_BODY = skeleton_text(np.random.default_rng(0), frames=1, bodies=1)[0].encode()


@settings(max_examples=1500, **SETTINGS)
@given(token=numberish, field=st.integers(0, 11), joint=st.integers(0, 24))
def test_hostile_skeleton_token_syntax(tmp_path, token, field, joint):
    """One value of a valid file becomes a near-float: the fast path accepts the file exactly
    when float() accepts the token, and then reads the value float() reads."""
    count_hostile("ntu .skeleton value syntax")
    lines = ONE_BODY.split(b"\n")
    row = lines[4 + joint].split(b" ")
    row[field] = token
    lines[4 + joint] = b" ".join(row)
    data = b"\n".join(lines)
    try:
        want = float(token)
    except ValueError:
        want = None
    try:
        fast = ntu_reader._read_fast(data)
    except ntu_reader._NotFast:
        fast = None
    if b" " in token:  # stray spaces: only the strict parser reads such lines
        assert fast is None, token
    elif want is None:
        assert fast is None, token
        with pytest.raises(ntu.SkeletonFormatError) as info:
            ntu_reader._read_strict(str(tmp_path / "x.skeleton"), data)
        assert info.value.line == 5 + joint
    else:
        assert fast is not None, token
        if field < 3:
            assert fast.xyz[0, joint, field] == want and np.signbit(fast.xyz[0, joint, field]) == np.signbit(want)
    # The C scanner: a plain literal is read as float() reads it; anything else goes to the slower paths.
    scanned = skeleton_scan.scan(data)
    if scanned is not None:
        assert want is not None and b" " not in token, token
        if field < 3:
            value = scanned[2][0, joint, field]
            assert value == want and np.signbit(value) == np.signbit(want), token
    elif want is not None and re.fullmatch(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", token) and len(token) < 64:
        assert skeleton_scan.scanner() is None, token  # a plain literal: only refused without the scanner


# ----------------------------------------------------------------------------- BVH

def _check_clip(clip) -> None:
    T, J, three = clip.positions.shape
    assert three == 3 and J == len(clip.joint_names) == len(clip.parents)
    assert np.isfinite(clip.positions).all()
    assert all(-1 <= p < J for p in clip.parents.tolist())


@settings(max_examples=250, **SETTINGS)
@given(data=mutated(BVH.encode()))
def test_hostile_bvh(tmp_path, data):
    count_hostile("bvh")
    path = tmp_path / "hostile.bvh"
    path.write_bytes(data)
    try:
        clip = mocap.read_bvh(path)
    except MsclrError as err:
        _assert_names_place(err, path)
        return
    _check_clip(clip)


# ----------------------------------------------------------------------------- ASF/AMC

@settings(max_examples=250, **SETTINGS)
@given(which=st.sampled_from(["asf", "amc"]), asf=mutated(ASF.encode()), amc=mutated(AMC.encode()))
def test_hostile_asf_amc(tmp_path, which, asf, amc):
    count_hostile("asf/amc")
    asf_path, amc_path = tmp_path / "t.asf", tmp_path / "t.amc"
    asf_path.write_bytes(asf if which == "asf" else ASF.encode())  # one file hostile, the other valid
    amc_path.write_bytes(amc if which == "amc" else AMC.encode())
    try:
        clip = mocap.read_asf_amc(asf_path, amc_path)
    except MsclrError as err:
        assert isinstance(err, DataError), repr(err)
        assert str(asf_path) in str(err) or str(amc_path) in str(err), str(err)
        assert err.line is not None or err.field is not None, str(err)
        return
    _check_clip(clip)


# ----------------------------------------------------------------------------- real-mocap npz

@pytest.fixture(scope="module")
def cmu_arrays(real_mocap_dir):
    with np.load(real_mocap_dir / "cmu_s02_s03.npz") as d:
        arrays = {k: d[k] for k in d.files}
    keep = 3  # the first clips only: a dataset per example stays quick
    end = int(arrays["start"][keep - 1] + arrays["length"][keep - 1])
    arrays["pos"] = arrays["pos"][:end]
    for k in ("start", "length", "label", "clip_names", "subject", "description"):
        if k in arrays and len(arrays[k]) > keep:
            arrays[k] = arrays[k][:keep]
    return arrays


NPZ_EDITS = ["nan_pos", "huge_pos", "inf_pos", "bad_start", "bad_length", "short_labels", "drop_key", "pos_shape",
             "drop_group_len", "bad_group_len", "bad_index"]


@settings(max_examples=60, **SETTINGS)
@given(edit=st.sampled_from(NPZ_EDITS), k=st.integers(0, 10**6), value=st.sampled_from([-1, 0, 10**6, -10**6]))
def test_hostile_real_mocap_npz(tmp_path, cmu_arrays, edit, k, value):
    count_hostile("real-mocap npz")
    a = {key: v.copy() for key, v in cmu_arrays.items()}
    pos = a["pos"]
    if edit in ("nan_pos", "huge_pos", "inf_pos"):
        pos.reshape(-1)[k % pos.size] = {"nan_pos": np.nan, "huge_pos": 3e38, "inf_pos": -np.inf}[edit]
    elif edit == "bad_start":
        a["start"][k % len(a["start"])] = value
    elif edit == "bad_length":
        a["length"][k % len(a["length"])] = value
    elif edit == "short_labels":
        a["label"] = a["label"][:-1]
    elif edit == "drop_key":
        del a[sorted(a)[k % len(a)]]
    elif edit == "drop_group_len":  # the NTU-25 map's index without its group lengths
        del a["ntu25_group_len"]
    elif edit in ("bad_group_len", "bad_index"):
        key = "ntu25_group_len" if edit == "bad_group_len" else "ntu25_index"
        a[key] = a[key].astype(np.int64)  # (stored as int8/int16)
        a[key][k % len(a[key])] = value
    else:
        a["pos"] = pos[:, :-1]
    src = tmp_path / "hostile.npz"
    np.savez(src, **a)
    out = tmp_path / f"ds-{edit}-{k}"
    try:
        ds = mocap.import_real_mocap_npz(src, out, conventions=("ntu-rgb+d",), T=8, overwrite=True)
    except MsclrError as err:
        assert isinstance(err, DataError), repr(err)
        assert str(src) in str(err) and err.field is not None, str(err)
        return
    x = ds.load("ntu-rgb+d")
    assert x.shape == (len(a["start"]), 3, 8, 25, 2) and np.isfinite(x).all()


@pytest.mark.parametrize("edit", ["drop_group_len", "bad_group_len", "bad_index"])
def test_broken_ntu25_map_is_a_data_error(tmp_path, cmu_arrays, edit):
    """The file's own NTU-25 map, broken: a DataError naming the file and the key (was a KeyError
    or IndexError from deep inside the import)."""
    a = {key: v.copy() for key, v in cmu_arrays.items()}
    if edit == "drop_group_len":
        del a["ntu25_group_len"]
    elif edit == "bad_group_len":
        a["ntu25_group_len"][3] = 0
    else:
        a["ntu25_index"][0] = len(a["joint_names"])
    src = tmp_path / "broken.npz"
    np.savez(src, **a)
    with pytest.raises(DataError) as err:
        mocap.import_real_mocap_npz(src, tmp_path / "out", conventions=("ntu-rgb+d",), T=8)
    assert str(src) in str(err.value) and err.value.field in ("ntu25_group_len", "ntu25_index")
    assert not (tmp_path / "out").exists()
