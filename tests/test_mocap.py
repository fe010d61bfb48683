import numpy as np
import pytest

from msclr_core.data import mocap
from msclr_core.errors import DataError

# root translates (1,2,3) and turns 90° about z; "a" turns 90° about x (listed Z X Y);
# "b" has the channel order X Z Y with x=z=90°, so it must use Rx·Rz, not Rz·Rx.
BVH = """HIERARCHY
ROOT hips
{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Xrotation Yrotation
  JOINT a
  {
    OFFSET 0 10 0
    CHANNELS 3 Zrotation Xrotation Yrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
  JOINT b
  {
    OFFSET 10 0 0
    CHANNELS 3 Xrotation Zrotation Yrotation
    End Site
    {
      OFFSET 0 5 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0333333
0 0 0 0 0 0 0 0 0 0 0 0
1 2 3 90 0 0 0 90 0 90 90 0
"""


def test_bvh_forward_kinematics_by_hand(tmp_path):
    path = tmp_path / "tiny.bvh"
    path.write_text(BVH)
    clip = mocap.read_bvh(path, unit="cm")
    assert clip.joint_names == ["hips", "a", "a_end", "b", "b_end"]
    assert clip.parents.tolist() == [-1, 0, 1, 0, 3]
    assert clip.fps == pytest.approx(30.0, rel=1e-4)
    rest = np.array([[0, 0, 0], [0, 10, 0], [0, 15, 0], [10, 0, 0], [10, 5, 0]]) * 0.01
    np.testing.assert_allclose(clip.positions[0], rest, atol=1e-6)
    # frame 1, by hand: Rz90 maps (0,10,0)->(-10,0,0) and (10,0,0)->(0,10,0);
    # a_end = a + Rz90·Rx90·(0,5,0) = a + (0,0,5); b_end = b + Rz90·Rx90·Rz90·(0,5,0) = b + Rz90·(-5,0,0)
    want = np.array([[1, 2, 3], [-9, 2, 3], [-9, 2, 8], [1, 12, 3], [1, 7, 3]]) * 0.01
    np.testing.assert_allclose(clip.positions[1], want, atol=1e-6)
    assert [n for n in mocap.read_bvh(path, end_sites=False).joint_names] == ["hips", "a", "b"]


def test_bvh_truncated_names_line(tmp_path):
    path = tmp_path / "cut.bvh"
    path.write_text(BVH.rsplit("\n", 2)[0] + "\n")  # drop the last frame line
    with pytest.raises(DataError, match=r"cut\.bvh.*line \d+.*1 of 2 frames"):
        mocap.read_bvh(path)
    path.write_text(BVH.split("JOINT b")[0])  # hierarchy cut mid-way
    with pytest.raises(DataError, match=r"cut\.bvh, line 15: unexpected end of file"):
        mocap.read_bvh(path)
    path.write_text(BVH.replace("Zrotation Xrotation Yrotation\n    End", "Zrotation Xrotation Wobble\n    End"))
    with pytest.raises(DataError, match=r"line 9.*unknown channel 'Wobble'"):
        mocap.read_bvh(path)
    path.write_text(BVH.replace("1 2 3 90 0 0 0 90 0 90 90 0", "1 2 3 90 0 0 0 90 0 90 90"))
    with pytest.raises(DataError, match=r"line 29.*frame 1 has 11 values.*12 channels"):
        mocap.read_bvh(path)


ASF = """# tiny Acclaim skeleton
:version 1.10
:name tiny
:units
  mass 1.0
  length 0.5
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name up
     direction 0 1 0
     length 10
     axis 0 0 0 XYZ
     dof rx ry rz
     limits (-180 180)
            (-180 180)
            (-180 180)
  end
  begin
     id 2
     name fore
     direction 1 0 0
     length 5
     axis 0 0 90 XYZ
     dof rx
     limits (-180 180)
  end
:hierarchy
  begin
    root up
    up fore
  end
"""

AMC = """#!OML:ASF tiny.asf
:FULLY-SPECIFIED
:DEGREES
1
root 0 0 0 0 0 0
up 0 0 0
fore 0
2
root 1 2 3 0 0 0
up 0 0 90
fore 90
"""


def test_asf_amc_forward_kinematics_by_hand(tmp_path):
    (tmp_path / "t.asf").write_text(ASF)
    (tmp_path / "t.amc").write_text(AMC)
    clip = mocap.read_asf_amc(tmp_path / "t.asf", tmp_path / "t.amc")
    assert clip.joint_names == ["root", "up", "fore"] and clip.parents.tolist() == [-1, 0, 1]
    s = 0.0254 / 0.5  # inches × length unit 0.5 -> metres
    np.testing.assert_allclose(clip.positions[0], np.array([[0, 0, 0], [0, 10, 0], [5, 10, 0]]) * s, atol=1e-6)
    # frame 2: "up" turns 90° about z: (0,10,0) -> (-10,0,0). "fore" has axis z=90°, so its
    # rx dof turns about the world y axis (after the parent's Rz90 the direction (1,0,0)
    # is rotated to (0,0,-1)): end = up + 5·(0,0,-1).
    want = np.array([[1, 2, 3], [-9, 2, 3], [-9, 2, -2]]) * s
    np.testing.assert_allclose(clip.positions[1], want, atol=1e-6)


def test_amc_errors_name_line(tmp_path):
    (tmp_path / "t.asf").write_text(ASF)
    (tmp_path / "t.amc").write_text(AMC.replace("fore 90", "fore 90 1"))
    with pytest.raises(DataError, match=r"t\.amc, line 11.*fore has 2 values.*1 dof"):
        mocap.read_asf_amc(tmp_path / "t.asf", tmp_path / "t.amc")
    (tmp_path / "t.amc").write_text(AMC.replace("up 0 0 90", "neck 0 0 90"))
    with pytest.raises(DataError, match=r"line 10.*unknown bone 'neck'"):
        mocap.read_asf_amc(tmp_path / "t.asf", tmp_path / "t.amc")


@pytest.mark.parametrize("asf_edit, amc_edit, match", [
    (("up fore", "up fore\n    fore up"), None, r"t\.asf, line \d+.*'up' appears twice in the hierarchy"),  # a cycle
    (("length 0.5", "length 0"), None, r"t\.asf, line 6.*units length must be > 0"),
    (("length 10", "length"), None, r"t\.asf, line 18.*length needs 1 value"),
    (("direction 1 0 0", "direction 1 0"), None, r"line 28.*direction needs 3 value"),
    (("dof rx\n", "dof rq\n"), None, r"line 31.*unsupported dof 'rq'"),
    (None, ("fore 90", "fore nan"), r"t\.amc, line 11.*fore must be finite"),
    (None, ("", ""), None),  # unchanged: reads
])
def test_asf_amc_hostile_values_name_line(tmp_path, asf_edit, amc_edit, match):
    (tmp_path / "t.asf").write_text(ASF.replace(*asf_edit) if asf_edit else ASF)
    (tmp_path / "t.amc").write_text(AMC.replace(*amc_edit) if amc_edit else AMC)
    if match is None:
        assert mocap.read_asf_amc(tmp_path / "t.asf", tmp_path / "t.amc").positions.shape == (2, 3, 3)
        return
    with pytest.raises(DataError, match=match):
        mocap.read_asf_amc(tmp_path / "t.asf", tmp_path / "t.amc")


@pytest.mark.parametrize("old, new, match", [
    ("CHANNELS 3 Zrotation", "CHANNELS nan Zrotation", r"line 9.*must be finite"),
    ("CHANNELS 3 Zrotation", "CHANNELS 2.5 Zrotation", r"line 9.*whole number"),
    ("Frames: 2", "Frames: -1", r"line 26.*whole number >= 0"),
    ("OFFSET 0 10 0", "OFFSET 0 1e999 0", r"line 8.*must be finite"),
    ("1 2 3 90 0 0", "1 2 3 nan 0 0", r"line 29.*frame 1 has a value that is not a finite number"),
    ("OFFSET 0 10 0", "OFFSET 0 1e308 0", r"field 'positions'.*no finite position"),  # overflows in FK
])
def test_bvh_hostile_values_name_line(tmp_path, old, new, match):
    path = tmp_path / "h.bvh"
    path.write_text(BVH.replace(old, new, 1))
    with pytest.raises(DataError, match=match):
        mocap.read_bvh(path)


def _ridge_accuracy(train_x, train_y, test_x, test_y, num_classes, lam=1.0):
    # 16 resampled frames of the (already root-relative, shoulder-aligned) NTU coordinates
    def feats(x):
        idx = np.linspace(0, x.shape[2] - 1, 16).round().astype(int)
        return x[..., 0][:, :, idx].reshape(len(x), -1)  # (person 0, 16 frames)
    a, b = feats(train_x), feats(test_x)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mu) / sd, (b - mu) / sd
    y = np.eye(num_classes)[train_y]
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ y)
    return float((np.argmax(b @ w, 1) == test_y).mean())


def test_name_maps_agree_with_the_files_ntu_map(real_mocap_dir):
    for fname, kind in (("bandai1_10cls.npz", "bandai"), ("cmu_s02_s03.npz", "cmu")):
        d = np.load(real_mocap_dir / fname)
        names = [str(n) for n in d["joint_names"]]
        assert mocap.skeleton_kind(names) == kind
        ours = mocap.map_weights(names, mocap.JOINT_MAPS[kind]["ntu-rgb+d"])
        theirs = mocap.map_weights(names, mocap._file_ntu_map(d, names, real_mocap_dir / fname))
        np.testing.assert_allclose(ours, theirs)


def test_real_bandai_import(real_mocap_dir, tmp_path):
    from msclr_core.conventions import get_convention
    from msclr_core.data.dataset import check_dataset

    ds = mocap.import_real_mocap_npz(real_mocap_dir / "bandai1_10cls.npz", tmp_path / "bandai",
                                     conventions=("ntu-rgb+d", "h36m_17"), offset_scale=0.05, noise=0.005)
    report = check_dataset(tmp_path / "bandai")
    assert report["ok"], report["problems"]
    assert set(ds.conventions) == {"ntu-rgb+d", "h36m_17"} and len(ds) == 165
    assert ds.conventions["h36m_17"].shape == (165, 3, 50, 17, 2)
    ntu = ds.load("ntu-rgb+d")
    assert not ntu[..., 1].any()  # single-person clips: the second person stays empty
    thigh = np.linalg.norm(ntu[:, :, :, 12, 0] - ntu[:, :, :, 13, 0], axis=1)  # L-hip -> L-knee
    assert 0.3 < np.median(thigh) < 0.6
    h36 = ds.load("h36m_17")
    names = get_convention("h36m_17").joint_names
    shin = np.linalg.norm(h36[:, :, :, names.index("lkne"), 0] - h36[:, :, :, names.index("lank"), 0], axis=1)
    assert 0.3 < np.median(shin) < 0.6
    # the two views of the same motion differ (perturbed), but not wildly
    assert not np.allclose(ntu[:, :, :, 0, 0], h36[:, :, :, names.index("pelv"), 0] + 0)

    tr, te = ds.split_indices("style", "train"), ds.split_indices("style", "test")
    assert len(tr) == 110 and len(te) == 55
    val = ds.splits["style_val"]  # two training styles held out for choosing settings; same test part
    style = np.array(ds.meta["style"])
    assert len(set(style[val["val"]])) == 2 and not set(style[val["val"]]) & set(style[val["train"]])
    assert np.array_equal(np.sort(np.concatenate([val["train"], val["val"]])), tr) and np.array_equal(val["test"], te)
    acc = _ridge_accuracy(ntu[tr], ds.labels[tr], ntu[te], ds.labels[te], ds.num_classes)
    assert acc > 0.4, acc  # chance is 0.10; the README reports 0.78 for this recipe


def test_real_cmu_import(real_mocap_dir, tmp_path):
    ds = mocap.import_real_mocap_npz(real_mocap_dir / "cmu_s02_s03.npz", tmp_path / "cmu",
                                     conventions=("ntu-rgb+d", "h36m_17", "smpl_24"), T=32)
    from msclr_core.data.dataset import check_dataset

    assert check_dataset(tmp_path / "cmu")["ok"]
    assert ds.conventions["smpl_24"].shape == (14, 3, 32, 24, 2)
    assert ds.meta["subject"][0] == 2 and sorted(set(ds.split_indices("subject", "test"))) == [10, 11, 12, 13]
    ntu = ds.load("ntu-rgb+d")
    np.testing.assert_allclose(ntu[:, :, :, 20, 0], 0, atol=1e-6)  # default "ntu": per-frame root-relative
    forearm = np.linalg.norm(ntu[:, :, :, 5, 0] - ntu[:, :, :, 6, 0], axis=1)  # L-elbow -> L-wrist
    assert 0.15 < np.median(forearm) < 0.4


def test_clip_normalization_option(real_mocap_dir, tmp_path):
    # "clip" keeps the trajectory: only the first frame is root-relative, later frames move
    ds = mocap.import_real_mocap_npz(real_mocap_dir / "cmu_s02_s03.npz", tmp_path / "cmu", conventions=("ntu-rgb+d",),
                                     normalize="clip")
    x = ds.load("ntu-rgb+d")
    travel = np.linalg.norm(x[:, [0, 2], -1, 20, 0] - x[:, [0, 2], 0, 20, 0], axis=1)
    # (resized frame 0 samples source frame ~L/100, so it is near, not at, the origin)
    assert np.median(np.abs(x[:, :, 0, 20, 0])) < 0.05 and travel.max() > 1.0  # walks travel metres
    with pytest.raises(DataError, match="normalize"):
        mocap.import_real_mocap_npz(real_mocap_dir / "cmu_s02_s03.npz", tmp_path / "x", normalize="bogus")


def test_map_to_convention_offsets_and_noise_are_seeded(tmp_path):
    (tmp_path / "t.bvh").write_text(BVH)
    clip = mocap.read_bvh(tmp_path / "t.bvh")
    name_map = ["hips", ("a", "b"), "a_end"]
    from msclr_core.conventions import Convention

    conv = Convention("tiny", ("r", "m", "e"), (-1, 0, 1), ((1, 0), (2, 1)), 0, (0, 1, 2))
    exact = mocap.map_to_convention(clip, conv, name_map=name_map)
    np.testing.assert_allclose(exact[1, 1], (clip.positions[1, 1] + clip.positions[1, 3]) / 2, atol=1e-7)
    a = mocap.map_to_convention(clip, conv, name_map=name_map, offset_scale=0.1, noise=0.01, seed=3)
    b = mocap.map_to_convention(clip, conv, name_map=name_map, offset_scale=0.1, noise=0.01, seed=3)
    c = mocap.map_to_convention(clip, conv, name_map=name_map, offset_scale=0.1, noise=0.01, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, exact) and not np.allclose(a, c)
    with pytest.raises(DataError, match="'nope'"):
        mocap.map_to_convention(clip, conv, name_map=["hips", "nope", "a"])


def test_cli_mocap_import(real_mocap_dir, tmp_path, capsys):
    import json

    from msclr_platform.cli import main

    assert main(["data", "import", "mocap", str(real_mocap_dir / "cmu_s02_s03.npz"), "--out", str(tmp_path / "cmu"),
                 "--conventions", "ntu-rgb+d,smpl_24", "--frames", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["conventions"]["smpl_24"]["shape"] == [14, 3, 20, 24, 2]
    assert summary["splits"]["subject"] == {"train": 10, "test": 4}
