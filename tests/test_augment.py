"""Batched AimCLR augmentations: determinism, per-sample draws and what each op preserves."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from msclr_core import augment as A
from msclr_core.augment import AugmentConfig
from msclr_core.conventions import get_convention
from msclr_core.errors import ConfigError, DataError

NTU = "ntu-rgb+d"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def clips(n=8, t=20, v=25, m=2, seed=0):
    return torch.randn((n, 3, t, v, m), generator=gen(1000 + seed))


def changed(out, x):
    """Bool[N]: which samples an op changed."""
    return (out != x).flatten(1).any(1)


# --- views -----------------------------------------------------------------------------------


def test_views_deterministic_by_seed_and_independent_per_sample():
    x = clips()
    a = A.aimclr_views(x, x, NTU, NTU, gen(0))
    b = A.aimclr_views(x, x, NTU, NTU, gen(0))
    c = A.aimclr_views(x, x, NTU, NTU, gen(1))
    for va, vb, vc in zip(a, b, c):
        assert torch.equal(va, vb)
        assert not torch.allclose(va, vc)
    # x2 and x3 are normal views of the same clips, drawn independently
    assert not torch.allclose(a[1], a[2])
    # the same clip repeated over the batch gets a different augmentation in every sample
    same = x[:1].expand(6, -1, -1, -1, -1).contiguous()
    for view in A.aimclr_views(same, same, NTU, NTU, gen(2)):
        flat = view.flatten(1)
        assert all(not torch.allclose(flat[i], flat[j]) for i in range(6) for j in range(i))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_keep_shape_and_dtype_across_conventions(dtype):
    x_q = clips(n=4, v=25, m=1).to(dtype)
    x_k = clips(n=4, v=42, m=1).to(dtype)
    x1, x2, x3 = A.aimclr_views(x_q, x_k, NTU, get_convention("smplx_42"), gen())
    assert x1.shape == x2.shape == x_q.shape and x3.shape == x_k.shape
    assert x1.dtype == x2.dtype == x3.dtype == dtype
    assert all(torch.isfinite(v.float()).all() for v in (x1, x2, x3))


def test_extreme_without_extras_is_the_normal_view():
    x = clips()
    cfg = AugmentConfig(aug_method="")
    assert torch.equal(A.extreme_view(x, NTU, gen(3), cfg), A.normal_view(x, NTU, gen(3), cfg))
    assert not torch.equal(A.extreme_view(x, NTU, gen(3)), A.normal_view(x, NTU, gen(3)))


def test_augment_config_validation():
    with pytest.raises(ConfigError, match="augment.flip_p"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ConfigError, match="augment.blur_kernel"):
        AugmentConfig(blur_kernel=14)
    with pytest.raises(ConfigError, match="augment.aug_method"):
        AugmentConfig(aug_method="126")
    with pytest.raises(ConfigError, match="augment.blur_sigma_min"):
        AugmentConfig(blur_sigma_min=3.0)


def test_bad_shapes_are_data_errors():
    with pytest.raises(DataError, match="V = 42"):
        A.flip(clips(v=42), NTU, gen())
    with pytest.raises(DataError, match="C = 3"):
        A.shear(torch.zeros(2, 2, 10, 25, 1), gen())
    with pytest.raises(DataError, match="N×C×T×V×M"):
        A.temporal_crop(torch.zeros(3, 10, 25, 1), gen())


# --- normal ops ------------------------------------------------------------------------------


@pytest.mark.parametrize("t,ratio", [(50, 6), (13, 6), (20, 3)])
def test_temporal_crop_is_a_window_of_the_reflect_padded_clip(t, ratio):
    n = 64
    x = clips(n=n, t=t, v=3, m=1)
    out = A.temporal_crop(x, gen(), ratio)
    pad = t // ratio
    starts = set()
    for i in range(n):  # per-sample reference, written as the official NumPy code does it
        seq = x[i].numpy()
        padded = np.concatenate([seq[:, :pad][:, ::-1], seq, seq[:, -pad:][:, ::-1]], axis=1)
        hits = [s for s in range(2 * pad + 1) if np.array_equal(padded[:, s:s + t], out[i].numpy())]
        assert hits, f"sample {i} is not a window of its padded clip"
        starts.add(hits[0])
    assert starts == set(range(2 * pad + 1))  # every start occurs over 64 samples


def test_temporal_crop_short_clip_is_unchanged():
    x = clips(t=5)
    assert torch.equal(A.temporal_crop(x, gen(), 6), x)


def test_shear_matrix_has_unit_diagonal_and_bounded_off_diagonals():
    x = torch.zeros(16, 3, 4, 3, 1)
    for axis in range(3):  # joint `axis` sits at the unit vector e_axis: the output is column `axis` of S
        x[:, axis, :, axis] = 1.0
    out = A.shear(x, gen(), amount=0.5)
    s = out[:, :, 0, :, 0]  # [N, 3 (row), 3 (column = joint)]
    assert torch.allclose(torch.diagonal(s, dim1=1, dim2=2), torch.ones(16, 3))
    off = s[:, ~torch.eye(3, dtype=torch.bool)]
    assert off.abs().max() < 0.5 and off.abs().max() > 0.2
    assert torch.equal(out[:, :, 0], out[:, :, 3])  # one matrix per sample, the same in every frame
    assert not torch.allclose(s[0], s[1])
    x = clips()
    assert torch.equal(A.shear(x, gen(), amount=0.0), x)


# --- extreme ops -----------------------------------------------------------------------------


def test_flip_uses_the_convention_permutation():
    x = clips(n=6, v=25)
    conv = get_convention(NTU)
    out = A.flip(x, conv, gen(), p=1.0)
    l_wrist, r_wrist = conv.joint_names.index("L-wrist"), conv.joint_names.index("R-wrist")
    assert (l_wrist, r_wrist) == (6, 10)
    assert torch.equal(out[:, :, :, r_wrist], x[:, :, :, l_wrist])
    assert torch.equal(out[:, :, :, l_wrist], x[:, :, :, r_wrist])
    assert torch.equal(out[:, :, :, 0], x[:, :, :, 0])  # spine-base is a middle joint
    assert torch.equal(A.flip(out, NTU, gen(5), p=1.0), x)  # flip twice = identity
    x42 = clips(n=4, v=42, m=1)
    perm = list(get_convention("smplx_42").flip)
    assert torch.equal(A.flip(x42, "smplx_42", gen(), p=1.0), x42[:, :, :, perm])
    # p = 0.5: each sample is either untouched or exactly mirrored
    x = clips(n=40)
    out = A.flip(x, NTU, gen(), p=0.5)
    mirrored = x[:, :, :, list(conv.flip)]
    kept = (out == x).flatten(1).all(1)
    assert torch.equal(kept | (out == mirrored).flatten(1).all(1), torch.ones(40, dtype=torch.bool))
    assert 0 < kept.sum() < 40


def _official_rotate(seq, main, angles):
    """AimCLR `random_rotate` on one clip (C, T, V, M) for a given main axis and angles (rad)."""
    def matrix(axis, a):
        c, s = math.cos(a), math.sin(a)
        return {0: np.array([[1, 0, 0], [0, c, s], [0, -s, c]]),
                1: np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]]),
                2: np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])}[axis]

    out = np.transpose(seq, (1, 2, 3, 0))
    for axis in range(3):
        out = out @ matrix(axis, angles[axis]).T
    return np.transpose(out, (3, 0, 1, 2))


def test_rotate_matches_aimclr_composition_and_preserves_distances():
    x = clips(n=12, t=6, m=2).double()
    out = A.rotate(x, gen(4))
    # the same draws, made the way rotate() makes them
    g = gen(4)
    main = torch.randint(0, 3, (12,), generator=g)
    u = torch.rand(12, 3, generator=g)
    for i in range(12):
        angles = [math.radians(u[i, a].item() * (30.0 if a == main[i] else 1.0)) for a in range(3)]
        np.testing.assert_allclose(out[i].numpy(), _official_rotate(x[i].numpy(), main[i].item(), angles),
                                   rtol=1e-5, atol=1e-6)
    # a rotation keeps every pairwise joint distance within a frame
    def dists(y):
        p = y.permute(0, 2, 4, 3, 1)  # N, T, M, V, C
        return torch.cdist(p, p)

    assert torch.allclose(dists(out), dists(x), atol=1e-9)
    assert not torch.allclose(out, x)


def test_gaussian_noise_std_and_probability():
    x = torch.zeros(2000, 3, 8, 5, 1)
    out = A.gaussian_noise(x, gen(), std=0.01, p=0.5)
    noisy = changed(out, x)
    assert abs(noisy.float().mean().item() - 0.5) < 0.05
    assert out[noisy].std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(out[noisy].mean().item()) < 5e-4
    assert torch.equal(out[~noisy], x[~noisy])


def _reference_blur(seq, sigma, normalize):
    """NumPy blur of one clip along T: normalized + edge padding, or AimCLR's raw taps + zeros."""
    j = np.arange(-7, 8)
    taps = np.exp(-j**2 / (2 * sigma**2))
    if normalize:
        taps = taps / taps.sum()
    padded = np.pad(seq, ((0, 0), (7, 7), (0, 0), (0, 0)), mode="edge" if normalize else "constant")
    return sum(taps[k] * padded[:, k:k + seq.shape[1]] for k in range(15))


@pytest.mark.parametrize("normalize", [True, False])
def test_gaussian_blur_matches_reference(normalize):
    x = clips(n=3, t=30).double()
    out = A.gaussian_blur(x, gen(), sigma=(1.5, 1.5), p=1.0, normalize=normalize)
    for i in range(3):  # taps are float32, hence the tolerance
        np.testing.assert_allclose(out[i].numpy(), _reference_blur(x[i].numpy(), 1.5, normalize), atol=1e-6)


def test_gaussian_blur_keeps_constants_and_damps_high_frequencies():
    n, t = 64, 40
    const = torch.full((n, 3, t, 4, 1), 0.7)
    assert torch.allclose(A.gaussian_blur(const, gen(), p=1.0), const)
    zigzag = (-1.0) ** torch.arange(t, dtype=torch.float32)  # the highest temporal frequency
    x = zigzag.view(1, 1, t, 1, 1).expand(n, 3, t, 4, 1).contiguous()
    energy = lambda y: y.pow(2).flatten(1).sum(1)  # noqa: E731
    out = A.gaussian_blur(x, gen(), p=0.5)
    blurred = changed(out, x)
    assert 0 < blurred.sum() < n
    assert torch.equal(out[~blurred], x[~blurred])  # samples not chosen stay exactly as they were
    assert (energy(out) <= energy(x) + 1e-4).all()
    strong = A.gaussian_blur(x, gen(), sigma=(1.0, 2.0), p=1.0)
    assert (energy(strong) < 0.05 * energy(x)).all()


def test_axis_mask_zeroes_exactly_one_axis():
    x = torch.rand(2000, 3, 4, 5, 1) + 0.1  # no zero anywhere
    out = A.axis_mask(x, gen(), p=0.5)
    masked = changed(out, x)
    assert abs(masked.float().mean().item() - 0.5) < 0.05
    zero_axes = (out == 0).flatten(2).all(2)  # [N, 3]
    assert torch.equal(zero_axes.sum(1), masked.long())
    assert ((out == x) | (out == 0)).all()
    counts = zero_axes[masked].sum(0).float() / masked.sum()
    assert (abs(counts - 1 / 3) < 0.06).all()  # the axis is uniform


@pytest.mark.parametrize("op", ["flip", "noise", "blur", "mask"])
def test_probabilities_over_a_large_batch(op):
    x = torch.rand(2000, 3, 16, 25, 1) + 0.1
    zig = (-1.0) ** torch.arange(16.0)
    x = x * zig.view(1, 1, 16, 1, 1)  # so that any blur changes every sample
    p = 0.3
    out = {"flip": lambda: A.flip(x, NTU, gen(), p=p),
           "noise": lambda: A.gaussian_noise(x, gen(), p=p),
           "blur": lambda: A.gaussian_blur(x, gen(), sigma=(1.0, 2.0), p=p),
           "mask": lambda: A.axis_mask(x, gen(), p=p)}[op]()
    assert abs(changed(out, x).float().mean().item() - p) < 0.04


def test_apply_to_chosen_both_paths_agree():
    # the accelerator path (op on all samples + where) cannot be reached on a CPU otherwise
    x = clips(n=10)
    chosen = torch.arange(10) % 3 == 0
    scale = torch.arange(10.0) + 2

    def op(xs, which):
        return xs * scale[which].view(-1, 1, 1, 1, 1)

    a = A._apply_to_chosen(x, chosen, op, subset=True)
    b = A._apply_to_chosen(x, chosen, op, subset=False)
    assert torch.equal(a, b)
    assert torch.equal(a[chosen], x[chosen] * scale[chosen].view(-1, 1, 1, 1, 1))
    assert torch.equal(a[~chosen], x[~chosen])
    assert torch.equal(A._apply_to_chosen(x, torch.zeros(10, dtype=torch.bool), op), x)


# --- bench -----------------------------------------------------------------------------------


def test_bench_augment_command(tmp_path):
    out_file = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "msclr_platform.cli", "bench", "augment", "--seconds", "0.5", "--batch-size", "16",
         "--json", "--out", str(out_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("samples_per_s", "batch_size", "threads", "device", "official_samples_per_s", "ratio"):
        assert key in report
    assert report["samples_per_s"] > 0 and report["batch_size"] == 16 and report["threads"] == 1
    assert report["device"] == "cpu" and report["official_samples_per_s"] == 595
    assert report["ratio"] == pytest.approx(report["samples_per_s"] / 595, rel=0.01)
    assert json.loads(out_file.read_text()) == report
