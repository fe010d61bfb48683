import json

import numpy as np
import pytest
import torch

from msclr_core.conventions import get_convention
from msclr_core.data.dataset import check_dataset, load_dataset
from msclr_core.data.writer import write_dataset
from msclr_core.data.poses import add_pose_convention, track_persons
from msclr_core.errors import DataError

CONV = "h36m_17"
NAMES = ["S001C001P001R001A001", "S001C001P002R001A002", "S001C001P003R001A003"]
# y-up (Kinect-like) coordinates -> MeTRAbs camera coordinates (x right, y down, z forward), written
# out by hand here, not taken from msclr_core.data.poses, so that a wrong table there fails the tests
CAMERA_YDOWN = np.array([-1.0, -1.0, 1.0])


def _dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    write_dataset(root, name="t", classes=["a", "b", "c"],
                  arrays={"ntu-rgb+d": rng.normal(size=(3, 3, 50, 25, 2)).astype(np.float32)},
                  sample_names=NAMES, labels=[0, 1, 2], meta={}, splits={"xsub": {"train": [0, 1], "test": [2]}},
                  units={"ntu-rgb+d": "m"})
    return root


def _person(F, x0, arm_up, rng):
    """A standing h36m_17 person (mm, y up) at x = x0 walking slowly along z; arm_up raises the left wrist."""
    names = get_convention(CONV).joint_names
    base = {"pelv": (0, 1000, 0), "rhip": (-100, 1000, 0), "rkne": (-100, 550, 0), "rank": (-100, 100, 0),
            "lhip": (100, 1000, 0), "lkne": (100, 550, 0), "lank": (100, 100, 0), "spin": (0, 1250, 0),
            "neck": (0, 1500, 0), "head": (0, 1600, 0), "htop": (0, 1750, 0), "lsho": (200, 1450, 0),
            "lelb": (200, 1150, 0), "lwri": (200, 900, 0), "rsho": (-200, 1450, 0), "relb": (-200, 1150, 0),
            "rwri": (-200, 900, 0)}
    if arm_up:
        base.update(lelb=(200, 1750, 0), lwri=(200, 2000, 0))
    pose = np.array([base[n] for n in names], float)
    out = np.repeat(pose[None], F, axis=0)
    out[:, :, 0] += x0
    out[:, :, 2] += np.arange(F)[:, None] * 10.0  # 1 cm per frame
    return out + rng.normal(0, 2.0, out.shape)


def _swapped_detections(F=40, swap_at=15, rng=None):
    rng = rng or np.random.default_rng(1)
    a, b = _person(F, -800, True, rng), _person(F, 800, False, rng)
    det = np.stack([a, b], axis=1)
    det[swap_at:] = det[swap_at:, ::-1]  # the detector reports the people in the other order
    det[30:33, 0 if (30 - swap_at) % 2 else 1] = 0  # ... and misses person b for 3 frames
    return det, a, b


def test_tracking_unswaps_identities():
    det, a, b = _swapped_detections()
    h36 = get_convention(CONV).joint_names
    tracks = track_persons(det, h36.index("neck"), persons=2, max_jump=500)
    np.testing.assert_allclose(tracks[:, 0], a)  # a is present in every frame: person 0
    seen = tracks[:, 1].any(axis=(1, 2))
    assert seen.sum() == 37
    np.testing.assert_allclose(tracks[seen, 1], b[seen])


def test_add_pose_convention_tracks_converts_and_preprocesses(tmp_path):
    root = _dataset(tmp_path)
    poses = tmp_path / "poses"
    poses.mkdir()
    for i, name in enumerate(NAMES):
        det, _, _ = _swapped_detections(rng=np.random.default_rng(i))
        det = det * CAMERA_YDOWN  # as MeTRAbs writes it: x right, y down, z forward (the default --frame)
        if i == 1:
            torch.save(torch.from_numpy(det), poses / f"{name}.pt")  # MeTRAbs .pt tensors work too
        else:
            np.save(poses / f"{name}.npy", det)
    report = add_pose_convention(root, poses, CONV, unit="mm", T=50)
    assert report.zero_filled == []
    ds = load_dataset(root)
    assert check_dataset(root)["ok"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["conventions"][CONV]["source"] == {"kind": "poses", "frame": "camera-ydown", "unit": "mm"}
    assert ds.conventions[CONV].shape == (3, 3, 50, 17, 2) and ds.conventions[CONV].unit == "m"
    x = ds.array(CONV)
    names = get_convention(CONV).joint_names
    shin = np.linalg.norm(x[:, :, :, names.index("lkne")] - x[:, :, :, names.index("lank")], axis=1)
    np.testing.assert_allclose(shin[..., 0], 0.45, atol=0.02)  # 450 mm -> metres
    # person 0 raises the left arm in EVERY frame: no identity swap survived preprocessing
    wrist_above_head = x[:, 1, :, names.index("lwri"), 0] > x[:, 1, :, names.index("htop"), 0]
    assert wrist_above_head.all()
    assert np.median(x[:, 1, :, names.index("lwri"), 1] - x[:, 1, :, names.index("head"), 1]) < -0.5  # person 1: arm down
    np.testing.assert_allclose(x[:, :, :, names.index("neck"), 0], 0, atol=1e-5)  # root-relative
    np.testing.assert_array_equal(ds.array("ntu-rgb+d"), load_dataset(root).array("ntu-rgb+d"))


def test_missing_pose_file_and_zero_fill(tmp_path):
    root = _dataset(tmp_path)
    poses = tmp_path / "poses"
    poses.mkdir()
    for name in NAMES[:2]:
        np.save(poses / f"{name}.npy", _swapped_detections()[0])
    with pytest.raises(DataError, match=f"sample {NAMES[2]}"):
        add_pose_convention(root, poses, CONV)
    report = add_pose_convention(root, poses, CONV, missing="zero")
    assert report.zero_filled == [NAMES[2]]
    assert not report.dataset.array(CONV)[2].any() and report.dataset.array(CONV)[0].any()


def test_original_dataset_intact_after_a_failure(tmp_path):
    root = _dataset(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    poses = tmp_path / "poses"
    poses.mkdir()
    np.save(poses / f"{NAMES[0]}.npy", _swapped_detections()[0])
    np.save(poses / f"{NAMES[1]}.npy", np.zeros((10, 2, 25, 3)))  # NTU-shaped: wrong joint count
    np.save(poses / f"{NAMES[2]}.npy", _swapped_detections()[0])
    with pytest.raises(DataError, match=rf"{NAMES[1]}\.npy, sample {NAMES[1]}, field 'shape'.*17"):
        add_pose_convention(root, poses, CONV)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]  # no temp dir left behind
    assert CONV not in json.loads((root / "manifest.json").read_text())["conventions"]
    with pytest.raises(DataError, match="already has convention 'ntu-rgb\\+d'"):
        add_pose_convention(root, poses, "ntu-rgb+d")


def test_cli_poses(tmp_path, capsys):
    from msclr_platform.cli import main

    root = _dataset(tmp_path)
    poses = tmp_path / "poses"
    poses.mkdir()
    np.save(poses / f"{NAMES[0]}.npy", _swapped_detections()[0])
    assert main(["data", "import", "poses", str(poses), "--dataset", str(root), "--convention", CONV]) == 2
    assert NAMES[1] in capsys.readouterr().err
    assert main(["data", "import", "poses", str(poses), "--dataset", str(root), "--convention", CONV,
                 "--missing", "zero"]) == 0
    assert "2 sample(s) without a pose file were zero-filled" in capsys.readouterr().out
    assert CONV in load_dataset(root).conventions


# ---------------------------------------------------------------- estimator frame (issue 16)


@pytest.fixture(scope="module")
def ntu_and_metrabs(tmp_path_factory):
    """A dataset with NTU-frame ntu-rgb+d clips only (preprocessed as `msclr data ntu` does)
    and MeTRAbs-style pose files of the same clips: smplx_42, mm, x right / y down / z forward."""
    from msclr_core.data.preprocess import preprocess_clip
    from msclr_core.data.synth import generate

    base = tmp_path_factory.mktemp("frames")
    d = generate(48, seed=3, conventions=("ntu-rgb+d", "smplx_42"))
    assert d.units["smplx_42"] == "mm"
    ntu = np.stack([preprocess_clip(c, "ntu-rgb+d") for c in d.arrays["ntu-rgb+d"]])
    names = [f"S001C001P{i + 1:03d}R001A{i % 17 + 1:03d}" for i in range(len(ntu))]
    write_dataset(base / "ds", name="t", classes=d.classes, arrays={"ntu-rgb+d": ntu}, sample_names=names,
                  labels=d.labels, splits={"xsub": {"train": list(range(40)), "test": list(range(40, 48))}})
    (base / "poses").mkdir()
    for i, name in enumerate(names):  # N×C×T×V×M row -> [frames, persons, joints, 3], camera frame
        np.save(base / "poses" / f"{name}.npy", d.arrays["smplx_42"][i].transpose(1, 3, 2, 0) * CAMERA_YDOWN)
    return base


@pytest.mark.parametrize("frame, verdict", [
    (None, "consistent"),  # the default is MeTRAbs's frame
    ("camera-ydown", "consistent"),
    ("kinect", "y axis flipped"),  # the y-down coordinates kept as they are: every pose upside down
    ("camera-ydown-mirrored", "left/right mirrored"),
])  # fmt: skip
def test_pose_frame_is_converted_to_the_dataset_frame(tmp_path, ntu_and_metrabs, frame, verdict):
    import shutil

    from msclr_core.consistency import check_dataset_consistency
    from msclr_platform.cli import main

    root = shutil.copytree(ntu_and_metrabs / "ds", tmp_path / "ds")
    args = ["data", "import", "poses", str(ntu_and_metrabs / "poses"), "--dataset", str(root),
            "--convention", "smplx_42"] + (["--frame", frame] if frame else [])
    assert main(args) == 0
    rep = check_dataset_consistency(root, sample=48)
    (pair,) = rep.pairs
    assert pair.message.startswith("ntu-rgb+d vs smplx_42: ") and verdict in pair.message, pair.message
    assert rep.ok == (verdict == "consistent")
    recorded = json.loads((root / "manifest.json").read_text())["conventions"]["smplx_42"]["source"]
    assert recorded["frame"] == (frame or "camera-ydown")


def test_unknown_frame_is_refused_before_reading(tmp_path):
    root = _dataset(tmp_path)
    with pytest.raises(DataError) as err:
        add_pose_convention(root, tmp_path / "nowhere", CONV, frame="camera-zdown")
    assert err.value.field == "frame" and "camera-ydown" in str(err.value)


# ---------------------------------------------------------------- hostile inputs (issue 7)


class _Shell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("content", ["malicious", "bfloat16", "complex", "dict", "too_many_people", "huge"])
def test_bad_pose_tensors_leave_the_dataset_untouched(tmp_path, content):
    root = _dataset(tmp_path)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    poses = tmp_path / "poses"
    poses.mkdir()
    for name in NAMES:
        np.save(poses / f"{name}.npy", _swapped_detections()[0])
    (poses / f"{NAMES[1]}.npy").unlink()
    bad = poses / f"{NAMES[1]}.pt"
    value = {"malicious": {"poses": torch.zeros(5, 2, 17, 3), "x": _Shell(tmp_path / "pwned")},
             "bfloat16": torch.zeros(5, 2, 17, 3, dtype=torch.bfloat16),
             "complex": torch.zeros(5, 2, 17, 3, dtype=torch.complex64), "dict": {"poses": torch.zeros(5, 2, 17, 3)},
             "too_many_people": torch.zeros(5, 100, 17, 3),
             "huge": torch.full((5, 2, 17, 3), 1e300, dtype=torch.float64)}
    torch.save(value[content], bad)
    with pytest.raises(DataError) as err:
        add_pose_convention(root, poses, CONV)
    assert str(bad) in str(err.value) and f"sample {NAMES[1]}" in str(err.value) and err.value.field
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before
    assert not (tmp_path / "pwned").exists()


def test_sample_names_cannot_reach_outside_the_pose_dir(tmp_path):
    root = _dataset(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["samples"]["name"][2] = "../secret"
    (root / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "poses").mkdir()
    np.save(tmp_path / "secret.npy", _swapped_detections()[0])  # would be read as poses/../secret.npy
    with pytest.raises(DataError) as err:
        add_pose_convention(root, tmp_path / "poses", CONV, missing="zero")
    assert err.value.field == "samples.name" and err.value.sample == 2 and "manifest.json" in str(err.value)
