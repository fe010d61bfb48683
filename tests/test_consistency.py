"""Cross-convention consistency check (msclr_core.consistency, issue 16).

Every fault is injected into ONE convention of a consistent synthetic dataset (whose
conventions carry independent estimator noise) and must be caught in every pair with that
convention, named (both conventions, the axis or property), and in no other pair.
"""

import json

import numpy as np
import pytest

from msclr_core.consistency import (PARTS, Thresholds, body_parts, check_consistency, check_dataset_consistency,
                                    part_weights)
from msclr_core.conventions import REGISTRY, Convention, get_convention
from msclr_core.data.synth import generate
from msclr_core.data.writer import write_dataset
from msclr_core.errors import ConfigError, DataError

CONVS = ("ntu-rgb+d", "smplx_42", "smpl_24", "h36m_17")
BAD = "smplx_42"  # the convention a fault is injected into


@pytest.fixture(scope="module")
def synth():
    return generate(256, seed=11, conventions=CONVS)


def axis_sign(*signs):
    return np.array(signs, np.float32)[None, :, None, None, None]


def shift(x, k):
    """Delay every clip by k frames (k < 0: advance), repeating the edge frame."""
    if k > 0:
        return np.concatenate([np.repeat(x[:, :, :1], k, 2), x[:, :, :-k]], 2)
    return np.concatenate([x[:, :, -k:], np.repeat(x[:, :, -1:], -k, 2)], 2)


FLIP = list(get_convention(BAD).flip)
FAULTS = {  # name -> (fault applied to BAD's array, fault kind, words the message must contain)
    "y flipped": (lambda x: x * axis_sign(1, -1, 1), "flip", ["y axis flipped"]),
    "x flipped": (lambda x: x * axis_sign(-1, 1, 1), "flip", ["x axis flipped"]),
    "z flipped": (lambda x: x * axis_sign(1, 1, -1), "flip", ["z axis flipped"]),
    "scaled x1000": (lambda x: x * 1000, "scale", ["scale x1000", "units"]),
    "labels swapped": (lambda x: x[:, :, :, FLIP], "mirror", ["left/right mirrored", "labels swapped"]),
    "mirrored recording": (lambda x: x[:, :, :, FLIP] * axis_sign(-1, 1, 1), "mirror",
                           ["left/right mirrored", "x negated"]),
    "delayed 3 frames": (lambda x: shift(x, 3), "lag", ["time-shifted by 3 frames", "({BAD} behind {other})"]),
    "advanced 2 frames": (lambda x: shift(x, -2), "lag", ["time-shifted by 2 frames", "({other} behind {BAD})"]),
}


def with_fault(data, fault):
    arrays = dict(data.arrays)
    arrays[BAD] = np.ascontiguousarray(fault(arrays[BAD]), np.float32)
    return arrays


def test_consistent_synthetic_data_passes_with_margin(synth):
    rep = check_consistency(synth.arrays, synth.units, sample=128, seed=0)
    assert rep.ok and not rep.suspects and not rep.messages()
    assert len(rep.pairs) == len(CONVS) * (len(CONVS) - 1) // 2
    for p in rep.pairs:
        assert p.status == "ok" and not p.faults and not p.warnings, p.message
        assert p.message == f"{p.a} vs {p.b}: consistent"
        assert p.parts == PARTS and p.clips == 128
        assert min(p.corr.values()) > 0.9  # threshold min_corr 0.5: the margin is large
        assert 0.9 < p.scale < 1.1  # units applied (ntu in m, the others in mm)
        assert p.lag == 0 and abs(p.lag_frac) < 0.25 and not p.mirrored and not p.flipped
        assert p.lr_same - p.lr_swapped > 0.5 and p.rotation_deg < 5


@pytest.mark.parametrize("name", list(FAULTS))
def test_each_fault_is_caught_and_named(synth, name):
    fault, kind, words = FAULTS[name]
    rep = check_consistency(with_fault(synth, fault), synth.units, sample=128, seed=0)
    assert not rep.ok and rep.suspects == [BAD]
    for p in rep.pairs:
        if BAD not in (p.a, p.b):
            assert p.status == "ok", p.message  # the other conventions still agree
            continue
        other = p.a if p.b == BAD else p.b
        assert p.status == "fault"
        assert [f["kind"] for f in p.faults] == [kind], p.message  # that fault and nothing else
        assert p.message.startswith(f"{p.a} vs {p.b}: ") and other in p.message and BAD in p.message
        for word in words:
            assert word.format(BAD=BAD, other=other) in p.message, p.message
    with pytest.raises(DataError, match="inconsistent conventions") as err:
        rep.raise_if_inconsistent()
    assert words[0] in str(err.value) and f"{BAD} disagrees with every other" in str(err.value)


def test_flip_message_quotes_the_negative_correlation(synth):
    rep = check_consistency(with_fault(synth, FAULTS["y flipped"][0]), synth.units, sample=64)
    pair = next(p for p in rep.pairs if {p.a, p.b} == {"ntu-rgb+d", BAD})
    assert pair.corr["y"] < -0.9 and pair.flipped == ["y"]
    assert f"y axis flipped (corr {pair.corr['y']:+.2f})" in pair.message


def test_two_flipped_axes_are_called_a_rotation(synth):
    rep = check_consistency(with_fault(synth, lambda x: x * axis_sign(-1, -1, 1)), synth.units, sample=64)
    pair = next(p for p in rep.pairs if {p.a, p.b} == {"ntu-rgb+d", BAD})
    assert pair.flipped == ["x", "y"] and "180 deg rotation about z" in pair.message


def test_wrong_unit_in_the_manifest_is_a_scale_fault(synth, tmp_path):
    """smplx_42 holds millimetres; a manifest that says metres makes it 1000x too big."""
    def write(root, units):
        return write_dataset(root, name="t", classes=synth.classes, arrays=synth.arrays,
                             sample_names=synth.sample_names, labels=synth.labels, meta=synth.meta,
                             splits=synth.splits, units=units)

    good = check_dataset_consistency(write(tmp_path / "good", synth.units), sample=64, protocol="xsub")
    assert good.ok, good.messages()
    bad = check_dataset_consistency(write(tmp_path / "bad", {**synth.units, BAD: "m"}), sample=64)
    msgs = [p.message for p in bad.pairs if p.status == "fault"]
    assert len(msgs) == 3 and all(BAD in m and "scale x1000 (units?)" in m for m in msgs)


def test_rotation_is_caught(synth):
    def rot_y(x, deg=35.0):
        c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
        out = x.copy()
        out[:, 0], out[:, 2] = c * x[:, 0] + s * x[:, 2], c * x[:, 2] - s * x[:, 0]
        return out

    rep = check_consistency(with_fault(synth, rot_y), synth.units, sample=64)
    pair = next(p for p in rep.pairs if {p.a, p.b} == {"ntu-rgb+d", BAD})
    assert "rotation" in [f["kind"] for f in pair.faults] and abs(pair.rotation_deg - 35) < 3


def test_person_order_may_differ_between_sources(synth):
    """Interaction clips whose two persons one source stores in the other order still agree
    (each clip is compared with the closer person). Only interaction clips are sampled: the
    persons face each other, so comparing person 1 with person 2 would read as a fault."""
    two = np.flatnonzero(np.abs(synth.arrays[BAD][..., 1]).sum((1, 2, 3)) > 0)  # clips with a person 2
    arrays = dict(synth.arrays)
    arrays[BAD] = arrays[BAD].copy()
    arrays[BAD][two] = arrays[BAD][two][..., ::-1]
    assert len(two) >= 16
    rep = check_consistency(arrays, synth.units, sample=len(two), indices=two)
    assert rep.ok, rep.messages()


def test_report_is_deterministic_and_json_ready(synth):
    a = check_consistency(synth.arrays, synth.units, sample=32, seed=5).to_dict()
    b = check_consistency(synth.arrays, synth.units, sample=32, seed=5).to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b and json.loads(json.dumps(a, allow_nan=False))["pairs"][0]["corr"].keys() == {"x", "y", "z"}


def test_two_d_conventions_are_skipped_and_bad_shapes_refused(synth):
    arrays = {"ntu-rgb+d": synth.arrays["ntu-rgb+d"],
              "openpose_25": np.ones((len(synth.labels), 2, 50, 25, 2), np.float32)}
    rep = check_consistency(arrays, {"ntu-rgb+d": "m", "openpose_25": "px"}, sample=8)
    assert rep.ok and rep.pairs[0].status == "skipped" and "openpose_25" in rep.pairs[0].message
    json.dumps(rep.to_dict(), allow_nan=False)  # strict JSON: no NaN for the pair that has no numbers
    with pytest.raises(DataError, match="conventions.smplx_42"):
        check_consistency({"ntu-rgb+d": synth.arrays["ntu-rgb+d"], "smplx_42": synth.arrays[BAD][:10]}, sample=8)
    other_t = check_consistency({"ntu-rgb+d": synth.arrays["ntu-rgb+d"], BAD: synth.arrays[BAD][:, :, :25]},
                                synth.units, sample=8)
    assert other_t.pairs[0].status == "skipped" and "different frame counts (50 vs 25)" in other_t.pairs[0].message


def test_every_registry_convention_has_the_joint_map():
    for name, conv in REGISTRY.items():
        _, found = part_weights(conv)
        assert found == PARTS, (name, found)
    assert body_parts("ntu-rgb+d", "berkeley_mhad_43") == PARTS


def test_too_few_correspondences_fail_naming_both_conventions():
    names = ("head", "lsho", "rsho", "lwri", "rwri", "lelb", "relb")
    tiny = Convention("tiny_7", names, (-1, 0, 0, 1, 2, 1, 2), ((1, 0), (2, 0), (3, 1), (4, 2), (5, 1), (6, 2)),
                      center=0, flip=(0, 2, 1, 4, 3, 6, 5))
    with pytest.raises(ConfigError, match=r"ntu-rgb\+d vs tiny_7: only 2 corresponding left/right body parts"):
        body_parts("ntu-rgb+d", tiny)


@pytest.mark.parametrize("fname, convs", [("bandai1_10cls.npz", ("ntu-rgb+d", "h36m_17")),
                                          ("cmu_s02_s03.npz", ("ntu-rgb+d", "h36m_17", "smpl_24"))])
def test_real_mocap_fixtures_pass_and_a_flip_is_still_caught(real_mocap_dir, tmp_path, fname, convs):
    from msclr_core.data.mocap import import_real_mocap_npz

    # offset_scale/noise: each convention gets its own joint placement and jitter, as real sources do
    ds = import_real_mocap_npz(real_mocap_dir / fname, tmp_path / "ds", convs, offset_scale=0.1, noise=0.01)
    rep = check_dataset_consistency(ds, sample=128)
    assert rep.ok, rep.messages()
    for p in rep.pairs:
        assert min(p.corr.values()) > 0.9 and 0.9 < p.scale < 1.1 and p.lag == 0 and not p.warnings, p

    arrays = {c: ds.array(c) for c in convs}
    arrays["h36m_17"] = arrays["h36m_17"] * axis_sign(1, -1, 1)
    flipped = check_consistency(arrays, sample=128)
    assert [p.message for p in flipped.pairs if p.status == "fault"] == [
        f"{p.a} vs {p.b}: y axis flipped (corr {p.corr['y']:+.2f})" for p in flipped.pairs if "h36m_17" in (p.a, p.b)]


def test_thresholds_are_the_knobs(synth):
    """A 1-frame lag passes when max_lag allows it, and is a fault by default."""
    arrays = with_fault(synth, lambda x: shift(x, 1))
    assert not check_consistency(arrays, synth.units, sample=64).ok
    assert check_consistency(arrays, synth.units, sample=64, thresholds=Thresholds(max_lag=1)).ok
