"""The dataset directory format: write/load round trip, validation errors, atomic writes, check."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from msclr_core.data.dataset import check_dataset, load_dataset
from msclr_core.data.writer import DatasetWriter, write_dataset
from msclr_core.errors import DataError

CONV = "ntu-rgb+d"


def _small(tmp_path, n=6, name="ds", **kw):
    rng = np.random.default_rng(0)
    arrays = {CONV: rng.normal(size=(n, 3, 8, 25, 2)).astype(np.float32),
              "smpl_24": rng.normal(size=(n, 3, 8, 24, 1)).astype(np.float32) * 1000}
    args = dict(name="toy", classes=["a", "b", "c"], arrays=arrays, sample_names=[f"s{i}" for i in range(n)],
                labels=[i % 3 for i in range(n)], meta={"subject": [1 + i % 2 for i in range(n)]},
                splits={"xsub": {"train": [0, 2, 4], "test": [1, 3, 5]}}, units={CONV: "m", "smpl_24": "mm"})
    args.update(kw)
    return write_dataset(tmp_path / name, **args), arrays


def _edit_manifest(root, fn):
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_round_trip_and_units(tmp_path):
    ds, arrays = _small(tmp_path)
    again = load_dataset(ds.root)
    assert again.sample_names == [f"s{i}" for i in range(6)]
    assert again.labels.dtype == np.int64 and again.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert again.meta == {"subject": [1, 2, 1, 2, 1, 2]}
    assert again.split_indices("xsub", "test").tolist() == [1, 3, 5]
    mm = again.array(CONV)
    assert isinstance(mm, np.memmap) and mm.shape == (6, 3, 8, 25, 2)
    np.testing.assert_array_equal(again.load(CONV, [4, 1]), arrays[CONV][[4, 1]])
    # smpl_24 stored in mm, loaded in metres by default and natively on request
    np.testing.assert_allclose(again.load("smpl_24"), arrays["smpl_24"] / 1000, rtol=1e-6)
    np.testing.assert_array_equal(again.load("smpl_24", unit=None), arrays["smpl_24"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.update(version=99), "version"),
    (lambda m: m.pop("classes"), "classes"),
    (lambda m: m["samples"]["label"].__setitem__(0, 7), "samples.label"),
    (lambda m: m["samples"]["subject"].pop(), "samples.subject"),
    (lambda m: m["splits"]["xsub"]["test"].append(6), "splits.xsub.test"),
    (lambda m: m["splits"]["xsub"].pop("train"), "splits.xsub.train"),
    (lambda m: m["conventions"].update({"no-such-skeleton": m["conventions"][CONV]}), "conventions.no-such-skeleton"),
    (lambda m: m["conventions"][CONV].update(shape=[6, 3, 9, 25, 2]), f"conventions.{CONV}.shape"),
    (lambda m: m["conventions"][CONV].update(file="../x.npy"), f"conventions.{CONV}.file"),
    (lambda m: m["conventions"][CONV].update(unit="inch"), f"conventions.{CONV}.unit"),
])
def test_invalid_manifest_names_file_and_field(tmp_path, edit, field):
    ds, _ = _small(tmp_path)
    _edit_manifest(ds.root, edit)
    with pytest.raises(DataError) as info:
        load_dataset(ds.root)
    assert info.value.field == field
    assert "manifest.json" in str(info.value) or str(ds.root) in str(info.value)
    report = check_dataset(ds.root)
    assert not report["ok"] and report["problems"]


def test_bad_json_reports_line(tmp_path):
    ds, _ = _small(tmp_path)
    (ds.root / "manifest.json").write_text('{\n"format": "msclr-dataset",\n oops\n}')
    with pytest.raises(DataError) as info:
        load_dataset(ds.root)
    assert info.value.line == 3 and "manifest.json" in str(info.value)


def test_interrupted_writer_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with DatasetWriter(target, capacity=4, shapes={CONV: (3, 8, 25, 2)}) as w:
            w.write(0, {CONV: np.ones((3, 8, 25, 2), np.float32)})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # leaving the block without commit() publishes nothing either
    with DatasetWriter(target, capacity=4, shapes={CONV: (3, 8, 25, 2)}):
        pass
    assert list(tmp_path.iterdir()) == []


def test_writer_commit_fewer_rows_than_capacity(tmp_path):
    rows = np.arange(3 * 3 * 8 * 25 * 2, dtype=np.float32).reshape(3, 3, 8, 25, 2)
    with DatasetWriter(tmp_path / "out", capacity=5, shapes={CONV: (3, 8, 25, 2)}) as w:
        for i in range(3):
            w.write(i, {CONV: rows[i]})
        ds = w.commit(name="x", classes=["a"], sample_names=["p", "q", "r"], labels=[0, 0, 0],
                      splits={"all": {"train": [0, 1], "test": [2]}})
    assert ds.conventions[CONV].shape == (3, 3, 8, 25, 2)
    np.testing.assert_array_equal(np.load(ds.root / f"{CONV}.npy"), rows)
    assert check_dataset(ds.root)["ok"]


def test_check_dataset_reports_values_and_splits(tmp_path):
    ds, _ = _small(tmp_path, splits={"xsub": {"train": [0, 1, 2], "test": [2, 3]}})
    report = check_dataset(ds.root)
    assert report["samples"] == 6 and report["classes"] == 3
    assert report["splits"] == {"xsub": {"train": 3, "test": 2}}
    assert any("both" in p for p in report["problems"]) and not report["ok"]
    assert any("no part" in w for w in report["warnings"])

    ds2, _ = _small(tmp_path, name="nan")
    mm = np.load(ds2.root / f"{CONV}.npy", mmap_mode="r+")
    mm[4, 0, 0, 0, 0] = np.nan
    mm.flush()
    del mm
    report = check_dataset(ds2.root)
    assert not report["ok"] and any("NaN" in p and "s4" in p for p in report["problems"])


def test_data_check_cli(tmp_path):
    ds, _ = _small(tmp_path)
    # random arrays per convention disagree by construction: the consistency report is tested in test_paper_kit.py
    run = [sys.executable, "-m", "msclr_platform.cli", "data", "check", str(ds.root), "--json", "--no-consistency"]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True
    _edit_manifest(ds.root, lambda m: m["samples"]["label"].__setitem__(0, 9))
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 1 and json.loads(out.stdout)["problems"]


# ---------------------------------------------------------------- array paths (issue 7)
# Rule: a relative path must resolve (symlinks included) inside the dataset directory; an
# absolute path is used as is, but only with "allow_absolute_paths": true in the manifest.


def test_relative_paths_inside_the_dataset_are_fine(tmp_path):
    ds, arrays = _small(tmp_path)
    (ds.root / "arrays").mkdir()
    (ds.root / f"{CONV}.npy").rename(ds.root / "arrays" / "joints.npy")
    (ds.root / "smpl_24.npy").rename(ds.root / "arrays" / "body.npy")
    (ds.root / "smpl_24.npy").symlink_to(ds.root / "arrays" / "body.npy")  # a link that stays inside
    _edit_manifest(ds.root, lambda m: m["conventions"][CONV].update(file="arrays/joints.npy"))
    again = load_dataset(ds.root)
    np.testing.assert_array_equal(again.load(CONV), arrays[CONV])
    np.testing.assert_array_equal(again.load("smpl_24", unit=None), arrays["smpl_24"])
    assert check_dataset(ds.root)["ok"]


@pytest.mark.parametrize("escape", ["dotdot", "symlink", "absolute", "symlinked_dir"])
def test_array_paths_cannot_escape_the_dataset(tmp_path, escape):
    ds, _ = _small(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (ds.root / f"{CONV}.npy").rename(outside / "x.npy")
    if escape == "dotdot":
        _edit_manifest(ds.root, lambda m: m["conventions"][CONV].update(file="../elsewhere/x.npy"))
    elif escape == "symlink":
        (ds.root / f"{CONV}.npy").symlink_to(outside / "x.npy")
    elif escape == "absolute":
        _edit_manifest(ds.root, lambda m: m["conventions"][CONV].update(file=str(outside / "x.npy")))
    else:
        (ds.root / "sub").symlink_to(outside)
        _edit_manifest(ds.root, lambda m: m["conventions"][CONV].update(file="sub/x.npy"))
    with pytest.raises(DataError) as info:
        load_dataset(ds.root)
    assert info.value.field == f"conventions.{CONV}.file" and str(ds.root / "manifest.json") in str(info.value)
    assert ("absolute path" if escape == "absolute" else "outside the dataset directory") in str(info.value)
    assert not check_dataset(ds.root)["ok"]


def test_absolute_paths_need_the_explicit_opt_in(tmp_path):
    ds, arrays = _small(tmp_path)
    shared = tmp_path / "shared.npy"
    (ds.root / f"{CONV}.npy").rename(shared)
    _edit_manifest(ds.root, lambda m: (m["conventions"][CONV].update(file=str(shared)),
                                       m.update(allow_absolute_paths=True)))
    np.testing.assert_array_equal(load_dataset(ds.root).load(CONV), arrays[CONV])
    _edit_manifest(ds.root, lambda m: m.update(allow_absolute_paths="yes"))  # only a real boolean counts
    with pytest.raises(DataError, match="allow_absolute_paths"):
        load_dataset(ds.root)


@pytest.mark.parametrize("damage", ["truncated", "npz", "pickle", "header", "strings"])
def test_damaged_array_files_name_file_and_field(tmp_path, damage):
    import io
    import pickle

    ds, arrays = _small(tmp_path)
    path = ds.root / f"{CONV}.npy"
    buf = io.BytesIO()
    if damage == "truncated":  # an interrupted copy: the header promises more data than there is
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "npz":
        np.savez(buf, x=arrays[CONV])
        path.write_bytes(buf.getvalue())
    elif damage == "pickle":
        path.write_bytes(pickle.dumps(arrays[CONV]))
    elif damage == "header":
        path.write_bytes(path.read_bytes().replace(b"'descr'", b"'descr((", 1))
    else:
        np.save(path, np.full(arrays[CONV].shape, "x"))
    with pytest.raises(DataError) as info:
        load_dataset(ds.root)
    assert info.value.field == f"conventions.{CONV}.file" and str(path) in str(info.value)
    assert any(f"{CONV}.npy" in p for p in check_dataset(ds.root)["problems"])


def test_huge_numbers_in_the_manifest_are_data_errors(tmp_path):
    ds, _ = _small(tmp_path)
    _edit_manifest(ds.root, lambda m: m["samples"]["label"].__setitem__(1, 2**80))
    with pytest.raises(DataError, match="outside") as info:
        load_dataset(ds.root)
    assert info.value.field == "samples.label" and info.value.sample == "s1"
    text = (ds.root / "manifest.json").read_text()
    (ds.root / "manifest.json").write_text(re.sub(r'"version":\s*1', '"version": ' + "9" * 5000, text))
    with pytest.raises(DataError) as info:
        load_dataset(ds.root)
    assert info.value.line == 1


def test_writer_refuses_an_existing_directory(tmp_path):
    ds, _ = _small(tmp_path)
    with pytest.raises(DataError, match="already exists") as info:
        DatasetWriter(ds.root, capacity=1, shapes={CONV: (3, 8, 25, 2)})
    assert str(ds.root) in str(info.value)
