"""Representation-health diagnostics against known answers (tiny inputs, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msclr_core.diagnostics import (
    alignment, effective_rank, negative_cosine, positive_cosine,
    representation_health, uniformity,
)
from msclr_core.errors import DataError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ effective rank

def test_erank_isotropic_gaussian_is_near_full():
    x = torch.randn(2000, 8, generator=_gen())
    assert 7.5 < effective_rank(x) <= 8.0 + 1e-9


def test_erank_two_dim_subspace():
    g = _gen(1)
    x = torch.randn(500, 2, generator=g) @ torch.randn(2, 16, generator=g)
    r = effective_rank(x)
    assert 1.0 < r <= 2.0 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_erank_rank_one_is_one(dtype):
    g = _gen(2)  # built in the tested dtype: its own round-off must not count as rank
    x = torch.randn(300, 1, generator=g, dtype=dtype) @ torch.randn(1, 12, generator=g, dtype=dtype)
    assert effective_rank(x + 5.0) == pytest.approx(1.0, abs=1e-6)


def test_erank_identical_rows_is_one():
    x = torch.full((50, 10), 0.3) + torch.arange(10.0)  # every row the same
    assert effective_rank(x) == 1.0


def test_erank_equal_spread_over_three_axes_is_exactly_three():
    e = torch.eye(5)[:3]
    x = torch.cat([e, -e]) + 7.0  # centred rows are +-e_k: three equal singular values
    assert effective_rank(x) == pytest.approx(3.0, abs=1e-9)


def test_erank_accepts_numpy():
    assert effective_rank(np.random.default_rng(0).normal(size=(400, 4))) > 3.5


# ------------------------------------------------------------------ alignment

def test_alignment_identical_is_zero_and_scale_invariant():
    z = torch.randn(64, 16, generator=_gen())
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, 5.0 * z) == pytest.approx(0.0, abs=1e-12)  # rows are normalised


def test_alignment_antipodal_is_four_and_alpha():
    z = torch.randn(64, 16, generator=_gen())
    assert alignment(z, -z) == pytest.approx(4.0)
    assert alignment(z, -z, alpha=1) == pytest.approx(2.0)


def test_alignment_orthogonal_is_two():
    e = torch.eye(4)
    assert alignment(e[[0, 1]], e[[2, 3]]) == pytest.approx(2.0)


# ------------------------------------------------------------------ uniformity

def test_uniformity_collapse_is_zero():
    z = torch.ones(100, 32)
    assert abs(uniformity(z)) < 1e-6


def test_uniformity_gaussian_is_spread():
    z = torch.randn(500, 64, generator=_gen())
    assert uniformity(z) < -3.0


def test_uniformity_two_antipodal_points():
    e = torch.eye(3)[:1]
    # one pair, squared distance 4: log exp(-t * 4)
    assert uniformity(torch.cat([e, -e]), t=2) == pytest.approx(-8.0)
    assert uniformity(torch.cat([3 * e, -e]), t=1) == pytest.approx(-4.0)  # rows normalised


def test_uniformity_ignores_row_norms():
    z = torch.randn(100, 16, generator=_gen())
    assert uniformity(10.0 * z) == pytest.approx(uniformity(z))


def test_uniformity_subsampling_is_seeded():
    z = torch.randn(300, 8, generator=_gen())
    a = uniformity(z, max_samples=40, seed=3)
    assert a == uniformity(z, max_samples=40, seed=3)
    assert a != uniformity(z, max_samples=40, seed=4)  # a different subset was used


# ------------------------------------------------------------------ positive / negative cosine

def test_positive_cosine_identical_and_opposite():
    z = torch.randn(50, 16, generator=_gen())
    assert positive_cosine(z, z) == pytest.approx(1.0)
    assert positive_cosine(z, -z) == pytest.approx(-1.0)


def test_negative_cosine_excludes_diagonal():
    e = torch.eye(3)
    # matched rows orthogonal, the swapped rows identical
    assert positive_cosine(e[[0, 1]], e[[1, 0]]) == pytest.approx(0.0)
    assert negative_cosine(e[[0, 1]], e[[1, 0]]) == pytest.approx(1.0)
    # identical orthonormal rows: diagonal 1, every off-diagonal pair 0
    assert negative_cosine(e, e) == pytest.approx(0.0, abs=1e-12)


def test_negative_cosine_matches_full_matrix():
    g = _gen(5)
    a, b = torch.randn(20, 6, generator=g) + 0.5, torch.randn(20, 6, generator=g)
    cos = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
    off = cos[~torch.eye(20, dtype=torch.bool)]
    assert negative_cosine(a, b) == pytest.approx(float(off.mean()), abs=1e-6)


def test_negative_cosine_independent_rows_near_zero():
    g = _gen(6)
    z1, z2 = torch.randn(500, 64, generator=g), torch.randn(500, 64, generator=g)
    assert abs(negative_cosine(z1, z2)) < 0.05


def test_shared_component_makes_positives_closer():
    g = _gen(7)
    shared = torch.randn(200, 32, generator=g)
    z1 = shared + 0.5 * torch.randn(200, 32, generator=g)
    z2 = shared + 0.5 * torch.randn(200, 32, generator=g)
    assert positive_cosine(z1, z2) > negative_cosine(z1, z2) + 0.5


# ------------------------------------------------------------------ representation_health

def test_health_keys_two_conventions():
    g = _gen(8)
    feats = {"ntu": torch.randn(40, 16, generator=g), "smpl": torch.randn(40, 16, generator=g)}
    out = representation_health(feats)
    assert set(out) == {
        "erank.ntu", "erank.smpl", "uniformity.ntu", "uniformity.smpl",
        "alignment.ntu|smpl", "pos_cos.ntu|smpl", "neg_cos.ntu|smpl",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert out["pos_cos.ntu|smpl"] == positive_cosine(feats["ntu"], feats["smpl"])


def test_health_keys_one_convention():
    out = representation_health({"ntu": torch.randn(30, 8, generator=_gen())})
    assert set(out) == {"erank.ntu", "uniformity.ntu"}


def test_health_pairs_follow_dict_order():
    z = torch.randn(10, 4, generator=_gen())
    out = representation_health({"b": z, "a": z, "c": z})
    assert {k.split(".", 1)[1] for k in out if k.startswith("alignment.")} == {"b|a", "b|c", "a|c"}


def test_health_mismatched_rows_names_field():
    g = _gen(9)
    with pytest.raises(DataError, match="smpl") as info:
        representation_health({"ntu": torch.randn(40, 16, generator=g),
                               "smpl": torch.randn(39, 16, generator=g)})
    assert info.value.field == "smpl"


@pytest.mark.parametrize("bad", [torch.randn(10), torch.randn(2, 3, 4), torch.randn(1, 8),
                                 torch.randn(10, 0)])
def test_health_bad_shape_names_field(bad):
    with pytest.raises(DataError) as info:
        representation_health({"ntu": torch.randn(10, 8), "kinect": bad})
    assert info.value.field == "kinect"


def test_pair_metrics_reject_mismatched_rows():
    with pytest.raises(DataError, match="z2"):
        alignment(torch.randn(5, 3), torch.randn(6, 3))


# ------------------------------------------------------------------ BN statistics per convention

def test_bn_mismatch_small_for_the_fitted_convention_large_for_the_other():
    """Running statistics fitted on ntu-rgb+d clips (one train-mode pass, cumulative average)
    fit those clips in eval mode; smplx_42 clips, offset and scaled, and never seen by their own
    data-BN, do not."""
    from msclr_core.diagnostics import bn_mismatch
    from msclr_core.model import UnifiedSTGCN

    torch.manual_seed(0)
    model = UnifiedSTGCN(["ntu-rgb+d", "smplx_42"], hidden_channels=4, hidden_dim=8, num_blocks=3,
                         dropout=0.0, head=None)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average: one pass sets the batch statistics exactly
    a = torch.randn(16, 3, 12, 25, 2, generator=_gen(2))
    b = 5.0 * torch.randn(16, 3, 12, 42, 2, generator=_gen(3)) + 3.0
    model.train()
    with torch.no_grad():
        model.features(a, "ntu-rgb+d")
    fitted, other = bn_mismatch(model, a, "ntu-rgb+d"), bn_mismatch(model, b, "smplx_42")
    assert set(fitted) == {"bn_shift.ntu-rgb+d", "bn_logvar.ntu-rgb+d"}
    assert fitted["bn_shift.ntu-rgb+d"] < 0.05 and fitted["bn_logvar.ntu-rgb+d"] < 0.1
    assert other["bn_shift.smplx_42"] > 0.5 and other["bn_logvar.smplx_42"] > 1.0
    assert model.training  # eval() only for the check: the previous flag is restored
    model.eval()
    assert bn_mismatch(model, a, "ntu-rgb+d") == fitted and not model.training
