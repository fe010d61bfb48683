"""Raw NTU .skeleton reader, frame-50 preprocessing, dataset build and their CLI commands."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from msclr_core.data import ntu, ntu_reader, skeleton_scan
from msclr_core.data.dataset import check_dataset, load_dataset
from msclr_core.data.ntu import SkeletonFormatError, build_ntu_dataset, parse_sample_name, read_skeleton
from msclr_core.data.preprocess import align_y_rotation, preprocess_clip, resize_frames, valid_length


# ----------------------------------------------------------------------------- generator

def skeleton_text(rng, frames, bodies, zero_body_frames=(), fmt="{:.7g}", newline="\n", moving=None):
    """A valid .skeleton text and what it holds: {(frame, bodyID): 25×3 float64 xyz}."""
    ids = [72057594037931101 + 3 * b for b in range(bodies)]  # close IDs: not exact in float64
    lines, truth = [str(frames)], {}
    for f in range(frames):
        present = [] if f in zero_body_frames else ids
        lines.append(str(len(present)))
        for b, body in enumerate(present):
            lines.append(f"{body} 0 1 0 1 0 0 {rng.normal():.7f} {rng.normal():.7f} 2")
            lines.append("25")
            scale = 1.0 if moving is None else moving[b]
            xyz = np.round(rng.normal(size=(25, 3)) * scale + [b, 0.2, 3.0], 6)
            toks = []
            for j in range(25):
                row = [fmt.format(v) for v in xyz[j]] + [fmt.format(v) for v in rng.normal(size=8)] + ["2"]
                lines.append(" ".join(row))
                toks.append([float(t) for t in row[:3]])
            truth[(f, body)] = np.array(toks)
    return newline.join(lines) + newline, truth


def write_skeleton(path, rng, frames=30, bodies=1, **kw):
    text, truth = skeleton_text(rng, frames, bodies, **kw)
    path.write_text(text, newline="")
    return truth


# ----------------------------------------------------------------------------- reader

@pytest.mark.parametrize("fmt, newline", [("{:.7g}", "\n"), ("{:.6e}", "\n"), ("{:.7g}", "\r\n")])
def test_read_round_trips_exactly(tmp_path, fmt, newline):
    rng = np.random.default_rng(1)
    p = tmp_path / "S001C001P001R001A001.skeleton"
    truth = write_skeleton(p, rng, frames=12, bodies=3, zero_body_frames={0, 5}, fmt=fmt, newline=newline)
    sk = read_skeleton(p)
    assert sk.xyz.shape == (12, 3, 25, 3) and sk.xyz.dtype == np.float32
    assert sk.body_ids == [72057594037931101, 72057594037931104, 72057594037931107]
    assert not sk.present[0].any() and not sk.present[5].any() and sk.present[1].all()
    for (f, body), xyz in truth.items():
        np.testing.assert_array_equal(sk.xyz[f, sk.body_ids.index(body)], xyz.astype(np.float32))
    # the strict fallback parser agrees bit for bit
    strict = ntu_reader._read_strict(str(p), p.read_bytes())
    fast = ntu_reader._read_fast(p.read_bytes())
    assert fast.frame_of.tolist() == strict.frame_of.tolist() and fast.ids.tolist() == strict.ids.tolist()
    assert fast.n_frames == strict.n_frames == 12
    np.testing.assert_array_equal(fast.xyz, strict.xyz)


def _lines(path):
    return path.read_text().splitlines()


def test_truncated_file_names_file_and_line(tmp_path):
    p = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(p, np.random.default_rng(2), frames=3)
    lines = _lines(p)
    p.write_text("\n".join(lines[:40]) + "\n")  # frame 2 stops inside its joint lines
    with pytest.raises(SkeletonFormatError) as info:
        read_skeleton(p)
    assert info.value.line == 41 and str(p) in str(info.value) and "line 41" in str(info.value)


def test_non_numeric_token_names_line(tmp_path):
    p = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(p, np.random.default_rng(3), frames=3)
    lines = _lines(p)
    row = lines[33].split()
    row[9] = "0.1x"  # an orientation value: unused, but still must be a number
    lines[33] = " ".join(row)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError) as info:
        read_skeleton(p)
    assert info.value.line == 34 and info.value.field == "joint" and "0.1x" in str(info.value)


def test_wrong_joint_count_names_line(tmp_path):
    p = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(p, np.random.default_rng(4), frames=3)
    lines = _lines(p)
    lines[31] = "24"  # frame 1's numJoint line (1 + [1 + 2 + 25] + 1 + 1 + 1 = line 32)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SkeletonFormatError) as info:
        read_skeleton(p)
    assert info.value.line == 32 and info.value.field == "numJoint"


def test_nan_joint_is_zeroed_and_counted(tmp_path):
    p = tmp_path / "S001C001P001R001A001.skeleton"
    write_skeleton(p, np.random.default_rng(5), frames=3)
    lines = _lines(p)
    lines[5] = "nan nan nan " + " ".join(lines[5].split()[3:])  # frame 0, body 0, joint 1
    p.write_text("\n".join(lines) + "\n")
    sk = read_skeleton(p)
    assert sk.nan_joints == 1 and (sk.xyz[0, 0, 1] == 0).all() and np.isfinite(sk.xyz).all()


def test_keeps_two_most_active_bodies(tmp_path):
    p = tmp_path / "S001C001P001R001A050.skeleton"
    # body 0 barely moves (a misdetection), bodies 1 and 2 move
    write_skeleton(p, np.random.default_rng(6), frames=20, bodies=3, moving=[0.001, 1.0, 0.5])
    sk = read_skeleton(p)
    act = sk.activity
    assert act[0] < act[2] < act[1]
    clip = sk.to_clip(2)
    assert clip.shape == (3, 20, 25, 2)
    np.testing.assert_array_equal(clip[..., 0], sk.xyz[:, 1].transpose(2, 0, 1))  # first-appearance order
    np.testing.assert_array_equal(clip[..., 1], sk.xyz[:, 2].transpose(2, 0, 1))


def test_parse_sample_name_and_missing_lists():
    assert parse_sample_name("S001C002P003R002A013") == dict(setup=1, camera=2, subject=3, replication=2, action=13)
    assert parse_sample_name("/x/S017C003P020R001A059.skeleton")["subject"] == 20
    with pytest.raises(ntu.DataError):
        parse_sample_name("S01C002P003R002A013")
    m60, m120 = ntu.missing_samples("ntu60"), ntu.missing_samples("ntu120")
    assert len(m60) == 302 and len(m120) == 535 and m60 <= m120
    assert "S001C002P005R002A008" in m60 and "S032C003P067R002A077" in m120


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_root_length_and_rotation():
    rng = np.random.default_rng(7)
    x = np.zeros((3, 80, 25, 2), np.float32)
    x[:, :60] = rng.normal(size=(3, 60, 25, 2)) + 2.0
    # shoulders: R − L has positive z in every frame (sign quirk then rotates every frame right)
    x[:, :60, 8, :] = x[:, :60, 4, :] + np.array([0.3, 0.1, 0.2]).reshape(3, 1, 1)
    assert valid_length(x, 0) == 60
    y = preprocess_clip(x, "ntu-rgb+d", T=50)
    assert y.shape == (3, 50, 25, 2) and y.dtype == np.float32
    v = y[:, :, 8, :] - y[:, :, 4, :]
    assert np.abs(v[2]).max() < 1e-3 and (v[0] > 0.3).all()
    # root joint is zero before rotation (rotation about y keeps the origin)
    z = preprocess_clip(x, "ntu-rgb+d", steps=("trim", "root_relative", "resize"))
    assert np.abs(z[:, :, 20]).max() == 0
    padded = preprocess_clip(x, "ntu-rgb+d", steps=("trim",), pad_to=300)
    assert padded.shape == (3, 300, 25, 2) and (padded[:, 60:] == 0).all()


def test_resize_matches_cv2_linear_positions():
    ramp = np.arange(10, dtype=np.float32).reshape(1, 10, 1, 1)
    out = resize_frames(ramp, T=5)[0, :, 0, 0]
    np.testing.assert_allclose(out, [0.5, 2.5, 4.5, 6.5, 8.5])  # src = (t+0.5)·2 − 0.5
    up = resize_frames(ramp[:, :2], T=4)[0, :, 0, 0]
    np.testing.assert_allclose(up, [0.0, 0.25, 0.75, 1.0])  # clamped at the edges
    assert (resize_frames(ramp, T=50, length=0) == 0).all()


def test_rotation_sign_quirk_per_sequence():
    x = np.zeros((3, 2, 25, 1), np.float32)
    x[:, 0, 8, 0] = [1.0, 0, 1.0]  # z > 0
    x[:, 1, 8, 0] = [1.0, 0, -0.2]  # z < 0, outvoted by frame 0
    quirk = align_y_rotation(x, 4, 8)
    fixed = align_y_rotation(x, 4, 8, per_frame_sign=True)
    assert abs(quirk[2, 0, 8, 0]) < 1e-3 and abs(quirk[2, 1, 8, 0]) > 0.1
    assert np.abs(fixed[2, :, 8, 0]).max() < 1e-3


# ----------------------------------------------------------------------------- dataset build

NAMES = ["S001C001P001R001A001", "S001C002P003R001A002", "S002C003P002R002A003", "S003C001P004R001A001",
         "S018C002P045R001A061"]  # the last one is NTU-120 only


def _skeleton_dir(tmp_path, names=NAMES, bad=()):
    d = tmp_path / "skel"
    d.mkdir()
    rng = np.random.default_rng(8)
    for i, name in enumerate(names):
        write_skeleton(d / f"{name}.skeleton", rng, frames=20 + 7 * i, bodies=1 + i % 2)
    write_skeleton(d / "S001C002P005R002A008.skeleton", rng, frames=5)  # on the missing list
    for name in bad:
        (d / f"{name}.skeleton").write_text("3\n1\n")
    return d


def test_build_ntu60_dataset_and_splits(tmp_path):
    rep = build_ntu_dataset(_skeleton_dir(tmp_path), tmp_path / "out", benchmark="ntu60")
    assert rep.skipped_missing == 1 and not rep.bad
    ds = load_dataset(tmp_path / "out")
    assert ds.sample_names == NAMES[:4] and ds.labels.tolist() == [0, 1, 2, 0] and len(ds.classes) == 60
    assert ds.array("ntu-rgb+d").shape == (4, 3, 50, 25, 2)
    assert ds.meta["subject"] == [1, 3, 2, 4] and ds.meta["camera"] == [1, 2, 3, 1]
    train = set(ds.split_indices("xsub", "train").tolist())
    assert train == {0, 2, 3}  # subjects 1, 2, 4 train; subject 3 test
    assert set(ds.split_indices("xview", "test").tolist()) == {0, 3}  # camera 1
    assert check_dataset(ds.root)["ok"]
    # rows equal the reader + preprocessing of each file
    sk = read_skeleton(tmp_path / "skel" / f"{NAMES[1]}.skeleton")
    np.testing.assert_array_equal(ds.load("ntu-rgb+d", [1])[0], preprocess_clip(sk.to_clip(), "ntu-rgb+d"))


def test_build_ntu120_parallel_matches_serial(tmp_path):
    d = _skeleton_dir(tmp_path)
    build_ntu_dataset(d, tmp_path / "a", benchmark="ntu120", workers=1)
    build_ntu_dataset(d, tmp_path / "b", benchmark="ntu120", workers=2, chunksize=1)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert a.sample_names == b.sample_names == NAMES and sorted(a.splits) == ["xset120", "xsub120"]
    assert a.split_indices("xsub120", "train").tolist() == [0, 2, 3, 4]  # subject 45 trains in NTU-120
    assert a.split_indices("xset120", "train").tolist() == [2, 4]  # even setups 2 and 18
    np.testing.assert_array_equal(a.array("ntu-rgb+d"), b.array("ntu-rgb+d"))


def test_bad_file_aborts_or_is_skipped(tmp_path):
    d = _skeleton_dir(tmp_path, bad=["S001C001P002R001A005"])
    with pytest.raises(SkeletonFormatError) as info:
        build_ntu_dataset(d, tmp_path / "out", workers=2)
    assert "S001C001P002R001A005" in str(info.value) and info.value.line == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["skel"]  # no dataset, no temp dir
    rep = build_ntu_dataset(d, tmp_path / "out", skip_bad=True)
    assert [b[0].endswith("S001C001P002R001A005.skeleton") for b in rep.bad] == [True]
    assert len(load_dataset(tmp_path / "out")) == 4


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "msclr_platform.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_data_ntu_and_bench_read(tmp_path):
    d = _skeleton_dir(tmp_path, bad=["S001C001P002R001A005"])
    out = _cli("data", "ntu", d, "--out", tmp_path / "ds", "--workers", 1, "--skip-bad", "--no-rotate", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["samples"] == 4 and summary["bad"][0]["file"].endswith("S001C001P002R001A005.skeleton")
    assert summary["steps"] == ["trim", "root_relative", "resize"]
    assert 10 < summary["peak_rss_mb"] < 2000 and summary["workers_peak_rss_mb"] >= 0
    out = _cli("data", "ntu", d, "--out", tmp_path / "ds2", "--workers", 1)
    assert out.returncode == 2 and "line 3" in out.stderr and not (tmp_path / "ds2").exists()
    bench = _cli("bench", "read", d, "--limit", 3, "--repeat", 2, "--baseline", 3, "--json", "--out",
                 tmp_path / "bench.json")  # (the 3 files include the malformed one: the baseline survives it too)
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    for key in ("files_per_s", "frames_per_s", "files", "frames", "official_files_per_s", "ratio", "peak_rss_mb",
                "cpu_files_per_s", "load_avg_1m"):
        assert key in report
    assert report["files"] == 3 and json.loads((tmp_path / "bench.json").read_text()) == report
    assert report["passes"] == 2 and report["files_per_s"] == max(report["passes_files_per_s"])
    assert report["bad_files"] == 1 and report["baseline_files"] == 3 and report["ratio_in_run"] > 0


def test_build_memory_stays_bounded(tmp_path):
    """The output is streamed into a memmap whose written pages are released: peak RSS must not
    grow with the number of samples (unreleased, 100 -> 400 rows of 3x300x25x2 float32 would
    add 54 MB)."""
    import os

    one = tmp_path / "one.skeleton"
    write_skeleton(one, np.random.default_rng(9), frames=3)
    peaks = []
    for n in (100, 400):
        d = tmp_path / f"skel{n}"
        d.mkdir()
        for i in range(n):  # distinct NTU-60 names, all setups <= 17, none on the missing list
            os.link(one, d / f"S{1 + i % 17:03d}C001P{1 + i // 17:03d}R001A{1 + i % 60:03d}.skeleton")
        out = _cli("data", "ntu", d, "--out", tmp_path / f"ds{n}", "--workers", 1, "--no-resize", "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["samples"] == n and summary["shape"] == [n, 3, 300, 25, 2]
        peaks.append(summary["peak_rss_mb"])
    assert peaks[1] - peaks[0] < 20, peaks


# ----------------------------------------------------------------------------- paper recipe (issue 16)

def frames_text(frames) -> str:
    """.skeleton text of explicit frames, each a list of (bodyID, 25×3 xyz) in file order."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for body, xyz in bodies:
            lines += [f"{body} 0 1 0 1 0 0 0.1 0.2 2", "25"]
            lines += [" ".join(f"{v:.6f}" for v in row) + " 0 0 0 0 0 0 0 0 2" for row in xyz]
    return "\n".join(lines) + "\n"


def test_body_selection_official_keeps_each_frames_first_two(tmp_path):
    rng = np.random.default_rng(10)
    ghost, b, c = 11, 22, 33  # the ghost barely moves and is listed first; c moves most
    order = [[ghost, b, c], [ghost, c], [b, c], [c, ghost, b], [c], [ghost, b, c]]
    pos = {(f, body): np.round(rng.normal(size=(25, 3)) * {ghost: 1e-3, b: 0.5, c: 2.0}[body] + [body, 0, 3], 6)
           for f, ids in enumerate(order) for body in ids}
    p = tmp_path / "skel" / "S001C001P001R001A050.skeleton"
    p.parent.mkdir()
    p.write_text(frames_text([[(body, pos[f, body]) for body in ids] for f, ids in enumerate(order)]))
    sk = read_skeleton(p)
    official, active = sk.to_clip(2, "official"), sk.to_clip(2)
    for f, ids in enumerate(order):
        for m in range(2):  # official: slot m = the m-th body listed in this frame, whoever it is
            want = pos[f, ids[m]] if m < len(ids) else np.zeros((25, 3))
            np.testing.assert_array_equal(official[:, f, :, m], want.T.astype(np.float32))
        for m, body in enumerate([b, c]):  # most-active: b and c, one slot each for the whole clip
            want = pos[f, body] if body in ids else np.zeros((25, 3))
            np.testing.assert_array_equal(active[:, f, :, m], want.T.astype(np.float32))
    with pytest.raises(ntu.DataError, match="most-active, official"):
        sk.to_clip(2, "first")
    build_ntu_dataset(p.parent, tmp_path / "off", bodies="official")
    build_ntu_dataset(p.parent, tmp_path / "act")
    for name, bodies in (("off", "official"), ("act", "most-active")):
        source = json.loads((tmp_path / name / "manifest.json").read_text())["source"]
        assert source["bodies"] == bodies and source["benchmark"] == "ntu60" and source["frames"] == 50
    assert not np.array_equal(load_dataset(tmp_path / "off").array("ntu-rgb+d"),
                              load_dataset(tmp_path / "act").array("ntu-rgb+d"))


# The official rules, written out from the reference (msclr-method.md §4), not from ntu.py
XSUB60 = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
XSUB120 = XSUB60 | {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
                    89, 91, 92, 93, 94, 95, 97, 98, 100, 103}
RULES = {"ntu60": {"xsub": lambda s, c, p: p in XSUB60, "xview": lambda s, c, p: c in (2, 3)},
         "ntu120": {"xsub120": lambda s, c, p: p in XSUB120, "xset120": lambda s, c, p: s % 2 == 0}}


def test_split_sizes_follow_the_official_rules(tmp_path):
    rng = np.random.default_rng(12)
    one = tmp_path / "one.skeleton"
    write_skeleton(one, rng, frames=3)
    d = tmp_path / "skel"
    d.mkdir()
    names = {f"S{rng.integers(1, 33):03d}C{rng.integers(1, 4):03d}P{rng.integers(1, 107):03d}R{rng.integers(1, 3):03d}"
             f"A{rng.integers(1, 121):03d}" for _ in range(160)}
    names |= {"S001C002P005R002A008", "S018C001P008R001A061"}  # on the missing lists (ntu60 / ntu120)
    for name in names:
        os.link(one, d / f"{name}.skeleton")
    counts = {}
    for bench, (max_setup, max_action) in {"ntu60": (17, 60), "ntu120": (32, 120)}.items():
        kept = [parse_sample_name(n) for n in sorted(names - ntu.missing_samples(bench))]
        kept = [m for m in kept if m["setup"] <= max_setup and m["action"] <= max_action]
        out = _cli("data", "ntu", d, "--out", tmp_path / bench, "--benchmark", bench, "--workers", 1,
                   "--bodies", "official", "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert summary["samples"] == len(kept) and summary["bodies"] == "official"
        for proto, is_train in RULES[bench].items():
            train = sum(is_train(m["setup"], m["camera"], m["subject"]) for m in kept)
            assert 0 < train < len(kept)  # the generated set exercises both sides of every rule
            assert summary["splits"][proto] == {"train": train, "test": len(kept) - train}
            sizes = summary["split_sizes"]["splits"][proto]
            assert (sizes["train"]["got"], sizes["test"]["got"]) == (train, len(kept) - train)
        assert summary["split_sizes"]["full_set"] is False and summary["split_sizes"]["match"] is None
        counts[bench] = len(kept)
    text = _cli("data", "ntu", d, "--out", tmp_path / "text", "--workers", 1)
    assert "(full set: 40,091 / 16,487)" in text.stdout and "(full set: 37,646 / 18,932)" in text.stdout
    assert f"a subset: {counts['ntu60']} of the 56,578 samples of the full ntu60 set" in text.stdout
    assert "bodies: most-active" in text.stdout


def test_split_size_report_on_the_full_set():
    from msclr_platform.commands.data_ntu import _size_lines

    official = {"xsub120": {"train": 63026, "test": 50919}, "xset120": {"train": 54468, "test": 59477}}
    full = ntu.split_size_report("ntu120", official, 113945)
    assert full["full_set"] and full["match"] and full["expected_samples"] == 113945
    assert "every split size matches the official one" in "\n".join(_size_lines(full, "ntu120"))
    lines = "\n".join(_size_lines(full, "ntu120"))
    assert "xsub120: train 63026 (official 63,026), test 50919 (official 50,919)" in lines
    off = ntu.split_size_report("ntu120", {**official, "xset120": {"train": 54467, "test": 59478}}, 113945)
    assert off["full_set"] and off["match"] is False and "WARNING" in "\n".join(_size_lines(off, "ntu120"))
    sixty = ntu.split_size_report("ntu60", {"xsub": {"train": 40091, "test": 16487},
                                            "xview": {"train": 37646, "test": 18932}}, 56578)
    assert sixty["full_set"] and sixty["match"]
    assert ntu.split_size_report("ntu60", {}, 56577)["full_set"] is False


# ----------------------------------------------------------------------------- C scanner

def _have_compiler():
    return bool(os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))


@pytest.mark.parametrize("fmt, newline, bodies", [("{:.7g}", "\r\n", 1), ("{:.6e}", "\n", 3), ("{:.17g}", "\n", 2),
                                                  ("{:.3f}", "\r\n", 0)])
def test_c_scanner_reads_like_numpy_and_strict_paths(fmt, newline, bodies):
    if not _have_compiler():
        pytest.skip("no C compiler here: the numpy fast path reads the files")
    assert skeleton_scan.scanner() is not None, skeleton_scan.unavailable_reason()
    text, truth = skeleton_text(np.random.default_rng(7), frames=9, bodies=bodies, zero_body_frames={2}, fmt=fmt,
                                newline=newline)
    data = text.encode()
    c = ntu.RawSkeleton(*skeleton_scan.scan(data))
    for other in (ntu_reader._read_fast(data), ntu_reader._read_strict("x", data)):
        assert c.n_frames == other.n_frames == 9
        assert c.ids.tolist() == other.ids.tolist() and c.frame_of.tolist() == other.frame_of.tolist()
        assert np.array_equal(c.xyz.view(np.int64), other.xyz.view(np.int64))  # bit for bit, -0.0 included
    for (f, body), xyz in truth.items():
        np.testing.assert_array_equal(c.xyz[(c.frame_of == f) & (c.ids == body)][0], xyz)


def test_c_scanner_is_built_once_atomically_and_can_be_disabled(tmp_path):
    if not _have_compiler():
        pytest.skip("no C compiler here")
    probe = ("from msclr_core.data import skeleton_scan as s; print(s.scanner() is not None, "
             "repr(s.unavailable_reason()))")
    env = {**os.environ, "MSCLR_CACHE_DIR": str(tmp_path / "cache")}
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert first.stdout.startswith("True"), first.stderr + first.stdout
    built = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(built) == 1 and built[0].startswith("skeleton_scan-") and built[0].endswith(".so")  # no .partial left
    mtime = (tmp_path / "cache" / built[0]).stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert again.stdout.startswith("True") and (tmp_path / "cache" / built[0]).stat().st_mtime_ns == mtime
    off = subprocess.run([sys.executable, "-c", probe], env={**env, "MSCLR_NO_C_SCANNER": "1"},
                         capture_output=True, text=True, timeout=300)
    assert off.stdout.startswith("False") and "MSCLR_NO_C_SCANNER" in off.stdout
    (tmp_path / "cache").chmod(0o777)  # a cache others can write to: never load code from it
    shared = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert shared.stdout.startswith("False") and "writable by others" in shared.stdout, shared.stdout + shared.stderr
