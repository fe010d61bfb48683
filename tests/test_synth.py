"""The synthetic multi-skeleton benchmark: determinism, layout, semantics, difficulty."""

import json

import numpy as np
import pytest

from msclr_core.conventions import get_convention
from msclr_core.data import synth
from msclr_core.errors import ConfigError

CONVS = ("ntu-rgb+d", "h36m_17", "smpl_24")


@pytest.fixture(scope="module")
def small():
    """Four clips per class, three conventions."""
    return synth.generate(len(synth.CLASSES) * 4, seed=7, conventions=CONVS)


def _joint(data, conv, name):
    """(N, T, 3, M) trajectory of joint `name`, in metres."""
    c = get_convention(conv)
    scale = 1e-3 if c.unit == "mm" else 1.0
    return data.arrays[conv][:, :, :, c.joint_names.index(name), :].transpose(0, 2, 1, 3) * scale


def _path(x):
    """Length of the path travelled by person 1 (N,)."""
    return np.linalg.norm(np.diff(x[..., 0], axis=1), axis=2).sum(1)


def test_same_seed_same_bytes_other_seed_differs():
    a = synth.generate(34, seed=3, conventions=("ntu-rgb+d", "h36m_17"))
    b = synth.generate(34, seed=3, conventions=("ntu-rgb+d", "h36m_17"))
    c = synth.generate(34, seed=4, conventions=("ntu-rgb+d", "h36m_17"))
    alone = synth.generate(34, seed=3, conventions=("ntu-rgb+d",))
    for conv in a.arrays:
        assert a.arrays[conv].tobytes() == b.arrays[conv].tobytes()
        assert not np.allclose(a.arrays[conv], c.arrays[conv])
    assert a.sample_names == b.sample_names and (a.labels == b.labels).all()
    # a convention's bytes do not depend on which other conventions were asked for
    assert alone.arrays["ntu-rgb+d"].tobytes() == a.arrays["ntu-rgb+d"].tobytes()


def test_shapes_and_native_units(small):
    n = len(small.labels)
    for conv in CONVS:
        c = get_convention(conv)
        arr = small.arrays[conv]
        assert arr.shape == (n, 3, 50, c.num_joints, 2) and arr.dtype == np.float32
        assert small.units[conv] == c.unit
        assert np.isfinite(arr).all()
    ntu = np.abs(small.arrays["ntu-rgb+d"][..., 0]).max(axis=(1, 2, 3))  # per-clip extent, metres
    h36m = np.abs(small.arrays["h36m_17"][..., 0]).max(axis=(1, 2, 3))  # millimetres
    assert 0.5 < np.median(ntu) < 2.5  # a person, in metres
    assert 500 < np.median(h36m / ntu) < 2000  # the same person in mm: ~1000x
    # y is up: the head is above the ankles
    assert (_joint(small, "ntu-rgb+d", "head")[:, :, 1, 0] > _joint(small, "ntu-rgb+d", "L-ankle")[:, :, 1, 0]).mean() > 0.95


def test_classes_with_left_right_variants_and_every_class_present(small):
    assert len(small.classes) >= 12
    for action in ("wave", "punch", "kick"):
        assert f"{action}-left" in small.classes and f"{action}-right" in small.classes
    assert np.bincount(small.labels, minlength=len(small.classes)).min() == 4


def test_second_person_only_in_interactions(small):
    p2 = np.abs(small.arrays["ntu-rgb+d"][..., 1]).reshape(len(small.labels), -1).max(1)
    interaction = np.isin(small.labels, [small.classes.index(c) for c in ("handshake", "push", "hug")])
    assert interaction.sum() == 12
    assert (p2[interaction] > 0.1).all()
    assert (p2[~interaction] == 0).all()
    assert (np.array(small.meta["partner"])[interaction] > 0).all()


def test_left_right_variants_are_mirror_images(small):
    y = small.labels

    def ratio(cls, a, b):
        sel = y == small.classes.index(cls)
        return _path(_joint(small, "ntu-rgb+d", a)[sel]) / _path(_joint(small, "ntu-rgb+d", b)[sel])

    assert (ratio("wave-left", "L-wrist", "R-wrist") > 1.5).all()
    assert (ratio("wave-right", "R-wrist", "L-wrist") > 1.5).all()
    assert (ratio("kick-left", "L-ankle", "R-ankle") > 1.5).all()
    assert (ratio("kick-right", "R-ankle", "L-ankle") > 1.5).all()


def test_splits_disjoint_covering_and_by_subject_and_camera(small):
    n = len(small.labels)
    subject, camera = np.array(small.meta["subject"]), np.array(small.meta["camera"])
    for protocol in ("xsub", "xview"):
        train, test = small.splits[protocol]["train"], small.splits[protocol]["test"]
        assert len(np.intersect1d(train, test)) == 0
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
        assert len(train) and len(test)
    xsub = small.splits["xsub"]
    assert not set(subject[xsub["train"]]) & set(subject[xsub["test"]])
    assert set(camera[small.splits["xview"]["test"]]) == {1}
    assert 1 not in set(camera[small.splits["xview"]["train"]])
    # partners come from the same side of the xsub split
    partner = np.array(small.meta["partner"])
    two = partner > 0
    assert (np.isin(partner[two], list(synth.XSUB_TRAIN)) == np.isin(subject[two], list(synth.XSUB_TRAIN))).all()


def test_val_protocols_hold_out_training_subjects_and_keep_the_test_part():
    data = synth.generate(600, seed=2, conventions=("ntu-rgb+d",))
    subject = np.array(data.meta["subject"])
    for proto in ("xsub", "xview"):
        parts = data.splits[f"{proto}_val"]
        assert sorted(parts) == ["test", "train", "val"] and all(len(v) for v in parts.values())
        assert np.array_equal(parts["test"], data.splits[proto]["test"])  # the test part is unchanged
        assert np.array_equal(np.sort(np.concatenate([parts["train"], parts["val"]])), data.splits[proto]["train"])
        assert not set(subject[parts["val"]]) & set(subject[parts["train"]])  # subject-disjoint
    assert set(subject[data.splits["xsub_val"]["val"]]) <= synth.XSUB_TRAIN
    tiny = synth.generate(48, seed=3, conventions=("ntu-rgb+d",), subjects=3)  # too few subjects for a val part
    assert sorted(tiny.splits) == ["xsub", "xview"]


def test_conventions_share_the_motion_but_not_the_placement(small):
    pairs = [(("ntu-rgb+d", "L-wrist"), ("h36m_17", "lwri")), (("ntu-rgb+d", "R-ankle"), ("smpl_24", "rank")),
             (("ntu-rgb+d", "head"), ("h36m_17", "head"))]
    for (ca, ja), (cb, jb) in pairs:
        a, b = _joint(small, ca, ja)[..., 0], _joint(small, cb, jb)[..., 0]  # (N, T, 3)
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)  # motion around each clip's mean
        corr = (a * b).sum((1, 2)) / np.sqrt((a * a).sum((1, 2)) * (b * b).sum((1, 2)))
        assert np.median(corr) > 0.8, (ja, jb)
    # the placement differs: a Kinect hip sits wider than an SMPL hip
    clean = synth.generate(17, seed=1, conventions=("ntu-rgb+d", "smpl_24"), noise=0)
    width_kinect = np.linalg.norm(_joint(clean, "ntu-rgb+d", "L-hip") - _joint(clean, "ntu-rgb+d", "R-hip"), axis=2)
    width_smpl = np.linalg.norm(_joint(clean, "smpl_24", "lhip") - _joint(clean, "smpl_24", "rhip"), axis=2)
    assert (width_kinect[..., 0] > width_smpl[..., 0] + 0.03).all()


def test_clean_render_keeps_bone_lengths():
    def upper_arm(data):  # h36m shoulder and elbow are both joint centres of the upper-arm segment
        return np.linalg.norm(_joint(data, "h36m_17", "lsho") - _joint(data, "h36m_17", "lelb"), axis=2)[..., 0]

    clean = synth.generate(17, seed=2, conventions=("h36m_17",), noise=0)
    assert upper_arm(clean).std(axis=1).max() < 1e-4  # rigid segments
    noisy = synth.generate(17, seed=2, conventions=("h36m_17",))
    assert upper_arm(noisy).std(axis=1).mean() > 0.003  # estimator-like jitter


def test_ridge_on_raw_coordinates_beats_chance_clearly():
    data = synth.generate(len(synth.CLASSES) * 40, seed=11, conventions=("ntu-rgb+d",))
    x, y = data.arrays["ntu-rgb+d"], data.labels
    train, test = data.splits["xsub"]["train"], data.splits["xsub"]["test"]
    top1 = synth.ridge_top1(x[train], y[train], x[test], y[test])
    chance = 1 / len(data.classes)
    assert top1 > 4 * chance  # learnable (0.58 with this seed) ...
    assert top1 < 0.97  # ... but a linear model does not solve it


@pytest.mark.parametrize("kwargs", [dict(clips=0), dict(conventions=("openpose_25",)), dict(conventions=("nope",)),
                                    dict(views=1), dict(subjects=2), dict(persons=1), dict(noise=-1.0)])
def test_bad_arguments_raise_config_error(kwargs):
    args = dict(clips=17, seed=0) | kwargs
    with pytest.raises(ConfigError):
        synth.generate(**args)


def test_cli_writes_a_valid_dataset(tmp_path, capsys):
    from msclr_core.data.dataset import check_dataset, load_dataset
    from msclr_platform.cli import main

    out = tmp_path / "synth"
    rc = main(["data", "synth", "--out", str(out), "--clips", "240", "--seed", "5",
               "--conventions", "ntu-rgb+d,smplx_42", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clips"] == 240 and summary["conventions"] == ["ntu-rgb+d", "smplx_42"]
    report = check_dataset(out)
    assert report["ok"], report["problems"]
    ds = load_dataset(out)
    assert ds.conventions["smplx_42"].unit == "mm" and ds.conventions["ntu-rgb+d"].unit == "m"
    assert ds.classes == list(synth.CLASSES)
    again = synth.generate(240, seed=5, conventions=("smplx_42",))
    assert np.array_equal(ds.array("smplx_42"), again.arrays["smplx_42"])
    # metres after load: the same scale as the ntu array
    ratio = np.abs(ds.load("smplx_42")).max() / np.abs(ds.load("ntu-rgb+d")).max()
    assert 0.7 < ratio < 1.4
    assert main(["data", "synth", "--out", str(out), "--clips", "10"]) != 0  # exists, no --overwrite
