import pickle

import numpy as np
import pytest

from msclr_core.data.dataset import check_dataset, load_dataset
from msclr_core.data.importers import export_pyskl, import_pyskl, import_skeletonclr
from msclr_core.errors import DataError

NAMES = {"train": ["S001C001P001R001A001", "S001C002P002R001A002", "S001C003P001R002A003"],
         "val": ["S002C001P003R001A001", "S002C001P003R001A002"]}


def _skeletonclr_files(tmp_path, T=50):
    """AimCLR-style files: per split one array per convention + one label pickle (protocol 2, like gendata)."""
    rng = np.random.default_rng(0)
    data, labels, arrays = {}, {}, {}
    for split, names in NAMES.items():
        n = len(names)
        for conv, v in (("ntu-rgb+d", 25), ("smplx_42", 42)):
            arr = rng.normal(size=(n, 3, T, v, 2)).astype(np.float32)
            path = tmp_path / f"{split}_{conv}.npy"
            np.save(path, arr)
            data.setdefault(conv, {})[split] = path
            arrays.setdefault(conv, {})[split] = arr
        labels[split] = tmp_path / f"{split}_label.pkl"
        labels[split].write_bytes(pickle.dumps(([f"{s}.skeleton" for s in names],
                                                [int(s[-3:]) - 1 for s in names]), protocol=2))
    return data, labels, arrays


def test_skeletonclr_import_both_layouts(tmp_path):
    data, labels, arrays = _skeletonclr_files(tmp_path)
    ds = import_skeletonclr(data, labels, tmp_path / "ds")
    assert check_dataset(tmp_path / "ds")["ok"]
    assert ds.sample_names == NAMES["train"] + NAMES["val"]  # ".skeleton" suffix dropped
    assert ds.labels.tolist() == [0, 1, 2, 0, 1]
    assert ds.splits["xsub"]["train"].tolist() == [0, 1, 2] and ds.splits["xsub"]["test"].tolist() == [3, 4]
    assert ds.conventions["ntu-rgb+d"].unit == "m" and ds.conventions["smplx_42"].unit == "mm"
    assert ds.meta["subject"] == [1, 2, 1, 3, 3] and ds.classes[:3] == ["A001", "A002", "A003"]
    np.testing.assert_array_equal(ds.array("smplx_42")[3:], arrays["smplx_42"]["val"])  # T=50: copied as is
    # the MS-CLR form {split: {conv: npy}} gives the same dataset
    msclr_form = {s: {c: data[c][s] for c in data} for s in NAMES}
    ds2 = import_skeletonclr(msclr_form, labels, tmp_path / "ds2", protocol="xview")
    np.testing.assert_array_equal(ds2.array("ntu-rgb+d"), ds.array("ntu-rgb+d"))
    assert "xview" in ds2.splits


def test_skeletonclr_raw_300_frames_are_preprocessed(tmp_path):
    data, labels, arrays = _skeletonclr_files(tmp_path, T=60)
    ds = import_skeletonclr({"ntu-rgb+d": data["ntu-rgb+d"]}, labels, tmp_path / "ds", T=20)
    x = ds.array("ntu-rgb+d")
    assert x.shape == (5, 3, 20, 25, 2)
    np.testing.assert_allclose(x[:, :, :, 20], 0, atol=1e-5)  # root-relative on spine-shoulder


def test_skeletonclr_errors_name_file_and_field(tmp_path):
    data, labels, _ = _skeletonclr_files(tmp_path)
    np.save(data["smplx_42"]["val"], np.zeros((4, 3, 50, 42, 2), np.float32))  # one sample short
    with pytest.raises(DataError, match=r"val_smplx_42\.npy, field 'N': has 4 samples, the label pickle .*val_label\.pkl lists 2"):
        import_skeletonclr(data, labels, tmp_path / "a")
    np.save(data["smplx_42"]["val"], np.zeros((2, 3, 50, 25, 2), np.float32))  # wrong V for smplx_42
    with pytest.raises(DataError, match=r"val_smplx_42\.npy, field 'V'.*V=25.*42 joints"):
        import_skeletonclr(data, labels, tmp_path / "b")
    label_npy = tmp_path / "val_label.npy"
    np.save(label_npy, np.zeros(2, np.int64))
    with pytest.raises(DataError, match=r"val_label\.npy.*label \.npy was passed where the label pickle"):
        import_skeletonclr(data, {**labels, "val": label_npy}, tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def _pyskl_pickle(path, three_d=True, multi=False):
    rng = np.random.default_rng(1)
    anns = []
    for i, (frames, persons) in enumerate([(30, 1), (75, 2), (50, 3), (12, 1)]):
        c = 3 if three_d else 2
        ann = {"frame_dir": f"clip{i}", "label": i % 2, "total_frames": frames,
               "keypoint": rng.normal(size=(persons, frames, 25, c)).astype(np.float16)}
        if not three_d:
            ann["keypoint_score"] = np.ones((persons, frames, 25), np.float16)
        if multi:
            ann["keypoints"] = {"h36m_17": rng.normal(size=(persons, frames, 17, c)).astype(np.float32)}
        anns.append(ann)
    split = {"xsub_train": ["clip0", "clip1"], "xsub_val": ["clip2", "clip3"]}
    path.write_bytes(pickle.dumps({"split": split, "annotations": anns}, protocol=2))
    return anns


@pytest.mark.parametrize("three_d, multi", [(True, False), (False, False), (True, True)])
def test_pyskl_round_trip(tmp_path, three_d, multi):
    _pyskl_pickle(tmp_path / "in.pkl", three_d, multi)
    ds = import_pyskl(tmp_path / "in.pkl", tmp_path / "ds", "ntu-rgb+d", T=40)
    report = check_dataset(tmp_path / "ds")
    assert report["ok"], report["problems"]
    x = ds.array("ntu-rgb+d")
    assert x.shape == (4, 3 if three_d else 2, 40, 25, 2)
    assert ds.conventions["ntu-rgb+d"].unit == ("m" if three_d else "px")
    assert set(ds.conventions) == ({"ntu-rgb+d", "h36m_17"} if multi else {"ntu-rgb+d"})
    assert not x[0, ..., 1].any() and x[1, ..., 1].any()  # 1 person padded, 3 persons truncated to 2
    assert ds.splits["xsub"]["train"].tolist() == [0, 1] and ds.splits["xsub"]["test"].tolist() == [2, 3]

    extra = ("h36m_17",) if multi else ()
    out = export_pyskl(tmp_path / "ds", tmp_path / "out.pkl", "ntu-rgb+d", extra_conventions=extra)
    with open(out, "rb") as f:
        exported = pickle.load(f)
    assert set(exported["split"]) == {"xsub_train", "xsub_val"}
    assert exported["annotations"][1]["keypoint"].shape == (2, 40, 25, 3 if three_d else 2)
    assert exported["annotations"][1]["keypoint"].dtype == np.float32
    ds2 = import_pyskl(out, tmp_path / "ds2", "ntu-rgb+d", T=40)
    for conv in ds.conventions:
        np.testing.assert_array_equal(ds2.array(conv), ds.array(conv))
    assert ds2.sample_names == ds.sample_names and ds2.labels.tolist() == ds.labels.tolist()
    assert {p: {k: v.tolist() for k, v in parts.items()} for p, parts in ds2.splits.items()} == \
           {p: {k: v.tolist() for k, v in parts.items()} for p, parts in ds.splits.items()}


def test_pyskl_resizes_variable_length(tmp_path):
    anns = _pyskl_pickle(tmp_path / "in.pkl")
    ds = import_pyskl(tmp_path / "in.pkl", tmp_path / "ds", T=50)
    x = ds.array("ntu-rgb+d")
    src = anns[2]["keypoint"][0].astype(np.float32).transpose(2, 0, 1)  # 50 frames: unchanged
    np.testing.assert_allclose(x[2, :, :, :, 0], src, atol=1e-6)
    src = anns[0]["keypoint"][0].astype(np.float32).transpose(2, 0, 1)  # 30 frames -> 50
    np.testing.assert_allclose(x[0, :, 0, :, 0], src[:, 0], atol=1e-6)
    np.testing.assert_allclose(x[0, :, -1, :, 0], src[:, -1], atol=1e-6)


def test_pyskl_errors_name_annotation_and_field(tmp_path):
    path = tmp_path / "bad.pkl"
    anns = [{"frame_dir": "a", "label": 0, "keypoint": np.zeros((1, 10, 25, 3), np.float32)},
            {"frame_dir": "b", "label": 1, "keypoint": np.zeros((1, 10, 17, 3), np.float32)}]
    path.write_bytes(pickle.dumps({"split": {}, "annotations": anns}))
    with pytest.raises(DataError, match=r"bad\.pkl, sample annotation 1 \(b\), field 'keypoint'.*V=17"):
        import_pyskl(path, tmp_path / "ds")
    del anns[1]["label"]
    path.write_bytes(pickle.dumps({"split": {}, "annotations": anns}))
    with pytest.raises(DataError, match=r"sample annotation 1, field 'label'.*missing"):
        import_pyskl(path, tmp_path / "ds")
    anns[1] = {"frame_dir": "b", "label": 1, "keypoint": np.zeros((1, 10, 25, 3), np.float32)}
    path.write_bytes(pickle.dumps({"split": {"xsub_train": ["a"], "xsub_val": ["zz"]}, "annotations": anns}))
    with pytest.raises(DataError, match=r"field 'split.xsub_val'.*'zz'"):
        import_pyskl(path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_export_is_atomic_and_names_missing_convention(tmp_path):
    _pyskl_pickle(tmp_path / "in.pkl")
    import_pyskl(tmp_path / "in.pkl", tmp_path / "ds")
    (tmp_path / "out.pkl").write_bytes(b"old")
    with pytest.raises(DataError, match="smpl_24"):
        export_pyskl(tmp_path / "ds", tmp_path / "out.pkl", "smpl_24")
    assert (tmp_path / "out.pkl").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    assert load_dataset(tmp_path / "ds").conventions


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def test_label_pickles_go_through_the_restricted_loader(tmp_path):
    data, labels, _ = _skeletonclr_files(tmp_path)
    labels["val"].write_bytes(pickle.dumps((NAMES["val"], [0, _Payload(tmp_path / "pwned")]), protocol=2))
    with pytest.raises(DataError, match="refused global"):
        import_skeletonclr(data, labels, tmp_path / "ds")
    assert not (tmp_path / "pwned").exists()


def test_cli_import_export(tmp_path, capsys):
    import json

    from msclr_platform.cli import main

    data, labels, _ = _skeletonclr_files(tmp_path)
    argv = ["data", "import", "skeletonclr", "--out", str(tmp_path / "sk"), "--json", "--protocol", "xview"]
    argv += [f"--data={c}:{s}={p}" for c, per in data.items() for s, p in per.items()]
    argv += [f"--labels={s}={p}" for s, p in labels.items()]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 5 and summary["splits"] == {"xview": {"train": 3, "test": 2}}

    assert main(["data", "export", "pyskl", str(tmp_path / "sk"), "--out", str(tmp_path / "x.pkl"),
                 "--extra-convention", "smplx_42"]) == 0
    assert main(["data", "import", "pyskl", str(tmp_path / "x.pkl"), "--out", str(tmp_path / "px"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # first line: the export message
    assert set(summary["conventions"]) == {"ntu-rgb+d", "smplx_42"}
    np.testing.assert_allclose(load_dataset(tmp_path / "px").load("smplx_42"), load_dataset(tmp_path / "sk").load("smplx_42"),
                               rtol=1e-6)  # exported in metres, re-imported as metres

    # user errors exit with 2 and a message naming the problem
    assert main(["data", "import", "pyskl", "--out", str(tmp_path / "q")]) == 2
    assert "source is required" in capsys.readouterr().err
    assert main(["data", "import", "pyskl", str(tmp_path / "absent.pkl"), "--out", str(tmp_path / "q")]) == 2
    assert "absent.pkl" in capsys.readouterr().err


# ---------------------------------------------------------------- hostile inputs (issue 7)


@pytest.mark.parametrize("names, labels, classes, match", [
    (NAMES["val"], [0, 2**70], None,
     r"val_label\.pkl, sample 1 \(S002C001P003R001A002\), field 'labels'.*\[0, 100000\)"),
    (NAMES["val"], [0, 3], ["a", "b", "c"], r"sample 1 .*field 'labels'.*\[0, 3\)"),
    (NAMES["val"], [0, True], None, r"sample 1 .*label must be an int"),
    ([NAMES["val"][0], ".skeleton"], [0, 1], None, r"sample 1, field 'labels'.*expected a sample name"),
    ([NAMES["train"][0], NAMES["val"][0]], [0, 1], None, r"val_label\.pkl, sample S001C001P001R001A001.*duplicate"),
])
def test_bad_label_pickles_name_file_sample_and_field(tmp_path, names, labels, classes, match):
    data, label_files, _ = _skeletonclr_files(tmp_path)
    label_files["val"].write_bytes(pickle.dumps((names, labels), protocol=2))
    with pytest.raises(DataError, match=match):
        import_skeletonclr(data, label_files, tmp_path / "ds", classes=classes)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("damage", ["nan", "overflow", "strings", "truncated"])
def test_bad_skeletonclr_arrays_leave_nothing(tmp_path, damage):
    data, labels, arrays = _skeletonclr_files(tmp_path)
    path, arr = data["smplx_42"]["val"], arrays["smplx_42"]["val"]
    if damage == "nan":
        arr[1, 0, 3, 5, 0] = np.nan
        np.save(path, arr)
    elif damage == "overflow":  # float64 beyond float32: would become inf
        np.save(path, arr.astype(np.float64) * 1e300)
    elif damage == "strings":
        np.save(path, np.full(arr.shape, "1.5"))
    else:
        path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError) as err:
        import_skeletonclr(data, labels, tmp_path / "ds")
    assert str(path) in str(err.value) and err.value.field is not None
    if damage in ("nan", "overflow"):
        assert err.value.sample == NAMES["val"][1 if damage == "nan" else 0]
    assert not (tmp_path / "ds").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]


@pytest.mark.parametrize("edit, field", [
    (lambda a: a[0].update(keypoints=[1, 2]), "keypoints"),
    (lambda a: a[1].update(keypoints=np.zeros(3)), "keypoints"),
    (lambda a: a[1].update(frame_dir=["clip1"]), "frame_dir"),
    (lambda a: a[2].update(keypoint=np.full((1, 5, 25, 3), np.inf, np.float32)), "keypoint"),
    (lambda a: a[2].update(keypoint=np.zeros((1, 5, 25, 3), np.complex64)), "keypoint"),
    (lambda a: a[3].update(label=10**30), "label"),
])
def test_bad_pyskl_annotations(tmp_path, edit, field):
    anns = _pyskl_pickle(tmp_path / "in.pkl")
    edit(anns)
    (tmp_path / "in.pkl").write_bytes(pickle.dumps({"split": {}, "annotations": anns}, protocol=4))
    with pytest.raises(DataError) as err:
        import_pyskl(tmp_path / "in.pkl", tmp_path / "ds")
    assert err.value.field == field and "in.pkl" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_pyskl_split_members_must_be_names(tmp_path):
    anns = _pyskl_pickle(tmp_path / "in.pkl")
    (tmp_path / "in.pkl").write_bytes(pickle.dumps({"split": {"xsub_train": [["clip0"]]}, "annotations": anns}))
    with pytest.raises(DataError, match="split.xsub_train"):
        import_pyskl(tmp_path / "in.pkl", tmp_path / "ds")


def test_pyskl_empty_split_part_is_refused(tmp_path):
    # found by the fuzzer: an empty part imported, then `msclr data check` called the dataset broken
    anns = _pyskl_pickle(tmp_path / "in.pkl")
    split = {"xsub_train": [], "xsub_val": [a["frame_dir"] for a in anns]}
    (tmp_path / "in.pkl").write_bytes(pickle.dumps({"split": split, "annotations": anns}))
    with pytest.raises(DataError, match="split.xsub_train") as err:
        import_pyskl(tmp_path / "in.pkl", tmp_path / "ds")
    assert "empty" in str(err.value) and "in.pkl" in str(err.value)
    assert not (tmp_path / "ds").exists()
