"""The dataset directory format: write/load round trip, validation errors, atomic writes, check."""

import json
import subprocess
import sys

import numpy as np
import pytest

from msclr_core.data.dataset import DatasetWriter, check_dataset, load_dataset, write_dataset
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
    run = [sys.executable, "-m", "msclr_platform.cli", "data", "check", str(ds.root), "--json"]
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True
    _edit_manifest(ds.root, lambda m: m["samples"]["label"].__setitem__(0, 9))
    out = subprocess.run(run, capture_output=True, text=True)
    assert out.returncode == 1 and json.loads(out.stdout)["problems"]
