"""Batched AimCLR augmentations (spec section 1.5), on any device.

The official code augments one clip at a time in NumPy inside DataLoader workers
(`feeder/tools.py`); that is the first bottleneck of the published pipeline. Here every op
takes a whole batch x: Tensor[N, C, T, V, M] (C = 3 coordinates) and draws one set of
random parameters *per sample*, so a batch costs a handful of tensor kernels instead of
N Python calls.

Randomness: every op takes a `torch.Generator`. Parameters are drawn on the generator's
device and then moved to x's device, so a CPU generator also drives a CUDA batch (same
numbers as on CPU, but the Gaussian noise field is then drawn on the CPU and copied: use a
generator on x's device for speed). Outputs are deterministic for a given generator state
and device.

dtype: parameters are drawn in float32 and cast to x.dtype, so bf16/fp16 batches work;
float32 is the intended input.

Ops: temporal_crop, shear (the two "normal" ops), flip, rotate, gaussian_noise,
gaussian_blur, axis_mask (the "extreme" extras, AimCLR `aug_method` digits 1-5).
Views: normal_view, extreme_view, aimclr_views. Their knobs live in `AugmentConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from msclr_core.conventions import Convention, get_convention
from msclr_core.errors import ConfigError, DataError


@dataclass
class AugmentConfig:
    """Probabilities and magnitudes of the AimCLR views (defaults = the official ones)."""

    padding_ratio: int = 6  # temporal crop pads T // ratio frames at each end; 0 disables
    shear_amount: float = 0.5  # off-diagonals U(-a, a); 0 disables
    aug_method: str = "12345"  # extreme extras: 1 flip, 2 rotate, 3 noise, 4 blur, 5 axis mask
    flip_p: float = 0.5
    rotate_main_max_deg: float = 30.0
    rotate_other_max_deg: float = 1.0
    noise_std: float = 0.01
    noise_p: float = 0.5
    blur_kernel: int = 15
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    blur_p: float = 0.5
    blur_normalize: bool = True  # False: AimCLR's unnormalised, zero-padded kernel (see gaussian_blur)
    axis_mask_p: float = 0.5

    def __post_init__(self):
        def bad(name, why):
            raise ConfigError(f"augment.{name}: {why}, got {getattr(self, name)!r}")

        for f in fields(self):
            if f.name.endswith("_p") and not 0.0 <= getattr(self, f.name) <= 1.0:
                bad(f.name, "a probability must be in [0, 1]")
        for name in ("padding_ratio", "shear_amount", "rotate_main_max_deg", "rotate_other_max_deg", "noise_std"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            bad("blur_kernel", "must be a positive odd number of frames")
        if not 0 < self.blur_sigma_min <= self.blur_sigma_max:
            bad("blur_sigma_min", f"need 0 < blur_sigma_min <= blur_sigma_max ({self.blur_sigma_max})")
        if set(self.aug_method) - set("12345"):
            bad("aug_method", "only the digits 1-5 are known (1 flip, 2 rotate, 3 noise, 4 blur, 5 axis mask)")


# --- helpers -------------------------------------------------------------------------------

def _check(x: torch.Tensor, coords: bool = True) -> tuple[int, int, int, int, int]:
    if x.dim() != 5:
        raise DataError(f"expected a batch N×C×T×V×M, got shape {tuple(x.shape)}", field="x")
    if coords and x.shape[1] != 3:
        raise DataError(f"this augmentation needs C = 3 (xyz) coordinates, got shape {tuple(x.shape)}", field="C")
    return tuple(x.shape)


def _rand(gen: torch.Generator, *shape: int, device) -> torch.Tensor:
    """U(0, 1) float32 drawn on the generator's device, returned on `device`."""
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def _chosen(gen: torch.Generator, n: int, p: float, device) -> torch.Tensor:
    """Bool[n]: which samples an op with probability p applies to."""
    return _rand(gen, n, device=device) < p


def _convention(conv: Convention | str, x: torch.Tensor) -> Convention:
    conv = get_convention(conv) if isinstance(conv, str) else conv
    if conv.num_joints != x.shape[3]:
        raise DataError(f"convention {conv.name!r} has {conv.num_joints} joints but the batch has "
                        f"V = {x.shape[3]} (shape {tuple(x.shape)})", field="V")
    return conv


def _apply_to_chosen(x: torch.Tensor, chosen: torch.Tensor, op, subset: bool | None = None) -> torch.Tensor:
    """Apply `op(xs, which)` to the chosen samples only; the others come back unchanged.
    `which` indexes per-sample parameters drawn for the whole batch.

    subset (default: x is on the CPU): run the op on the chosen sub-batch only (about half
    the work; the `nonzero` that finds them is free on the CPU). Otherwise, as on an
    accelerator where `nonzero` would cost a host sync, the op runs on every sample and
    `torch.where` keeps the chosen results.
    """
    if subset is None:
        subset = x.device.type == "cpu"
    if subset:
        rows = chosen.nonzero().squeeze(1)
        if len(rows) == 0:
            return x.clone()
        return x.index_copy(0, rows, op(x.index_select(0, rows), rows))
    return torch.where(chosen.view(-1, 1, 1, 1, 1), op(x, slice(None)), x)


def _apply_coord_matrix(x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """x'[n, :, t, v, m] = mat[n] @ x[n, :, t, v, m]: one batched matmul over all points."""
    n, c = x.shape[:2]
    return torch.bmm(mat.to(x.dtype), x.reshape(n, c, -1)).view(x.shape)


# --- normal ops ------------------------------------------------------------------------------

def temporal_crop(x: torch.Tensor, gen: torch.Generator, padding_ratio: int = 6) -> torch.Tensor:
    """Pad pad = T // padding_ratio frames at each end by reversed reflection (left: the
    first `pad` frames reversed, right: the last `pad` frames reversed), then keep a window
    of T frames starting at U{0, ..., 2·pad}, drawn per sample."""
    n, c, t, v, m = _check(x, coords=False)
    pad = t // padding_ratio if padding_ratio > 0 else 0
    if pad == 0:
        return x.clone()
    # Frame of x that each position of the padded sequence shows: no padded copy is built.
    start = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    frames = torch.arange(t, device=x.device)
    padded_to_src = torch.cat([frames[:pad].flip(0), frames, frames[-pad:].flip(0)])
    src = padded_to_src[start[:, None] + frames]  # [N, T]
    # Gather whole (V·M) rows of x viewed as [N·C·T, V·M]: a contiguous copy per row.
    first_row = (torch.arange(n, device=x.device)[:, None] * c + torch.arange(c, device=x.device)) * t  # [N, C]
    rows = (first_row[:, :, None] + src[:, None, :]).reshape(-1)
    return x.reshape(n * c * t, v * m).index_select(0, rows).view(n, c, t, v, m)


def shear(x: torch.Tensor, gen: torch.Generator, amount: float = 0.5) -> torch.Tensor:
    """x' = S x on the coordinate axis, S = identity with off-diagonals U(-amount, amount)."""
    n = _check(x)[0]
    off = (_rand(gen, n, 3, 3, device=x.device) * 2 - 1) * amount
    eye = torch.eye(3, device=x.device)
    return _apply_coord_matrix(x, eye + off * (1 - eye))


# --- extreme ops -----------------------------------------------------------------------------

def flip(x: torch.Tensor, conv: Convention | str, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror left/right on a random subset (probability p) of samples using the
    convention's joint permutation `conv.flip` (keyed by convention, never by V)."""
    n, c, t, v, m = _check(x, coords=False)
    perm = torch.tensor(_convention(conv, x).flip, device=x.device)
    chosen = _chosen(gen, n, p, x.device)
    per_sample = torch.where(chosen[:, None], perm, torch.arange(v, device=x.device))  # [N, V]
    # Index of the (joint, person) column each output column reads, in x viewed as [N, C·T, V·M].
    cols = (per_sample[:, :, None] * m + torch.arange(m, device=x.device)).reshape(n, 1, v * m)
    return x.reshape(n, c * t, v * m).gather(2, cols.expand(n, c * t, v * m)).view(n, c, t, v, m)


def _axis_rotation(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] rotations about `axis` (0 = x, 1 = y, 2 = z), written as AimCLR writes them."""
    cos, sin = angle.cos(), angle.sin()
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rows = {
        0: [[one, zero, zero], [zero, cos, sin], [zero, -sin, cos]],
        1: [[cos, zero, -sin], [zero, one, zero], [sin, zero, cos]],
        2: [[cos, sin, zero], [-sin, cos, zero], [zero, zero, one]],
    }[axis]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def rotate(x: torch.Tensor, gen: torch.Generator, main_max_deg: float = 30.0,
           other_max_deg: float = 1.0) -> torch.Tensor:
    """Per sample one random main axis is rotated by U(0, main_max_deg) degrees and the two
    others by U(0, other_max_deg). As in AimCLR `random_rotate`, the x rotation is applied
    first, then y, then z: x' = Rz Ry Rx x."""
    n = _check(x)[0]
    main = torch.randint(0, 3, (n,), generator=gen, device=gen.device).to(x.device)
    max_deg = torch.where(torch.arange(3, device=x.device) == main[:, None], main_max_deg, other_max_deg)
    angle = torch.deg2rad(_rand(gen, n, 3, device=x.device) * max_deg)  # [N, 3]: x, y, z
    rx, ry, rz = (_axis_rotation(a, angle[:, a]) for a in range(3))
    return _apply_coord_matrix(x, rz @ ry @ rx)


def gaussian_noise(x: torch.Tensor, gen: torch.Generator, std: float = 0.01, p: float = 0.5) -> torch.Tensor:
    """Add N(0, std²) i.i.d. noise to every coordinate of a random subset (probability p)."""
    n = _check(x, coords=False)[0]
    chosen = _chosen(gen, n, p, x.device)

    def add_noise(xs, _):
        noise = torch.empty(xs.shape, dtype=xs.dtype, device=gen.device).normal_(generator=gen)
        return torch.add(xs, noise.to(xs.device), alpha=std)

    return _apply_to_chosen(x, chosen, add_noise)


def gaussian_blur(x: torch.Tensor, gen: torch.Generator, kernel: int = 15, sigma: tuple[float, float] = (0.1, 2.0),
                  p: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """Gaussian blur along time with σ ~ U(sigma) per sample, on a random subset (probability p).

    One grouped convolution runs over the chosen samples with one kernel per sample.
    normalize=True (default): kernel taps sum to 1 and the ends are padded by repeating the
    first/last frame, so a constant sequence stays constant. normalize=False reproduces
    AimCLR's GaussianBlurConv: unnormalised taps exp(-j²/2σ²) (summing to about √(2π)σ,
    i.e. a blurred clip is also scaled by up to 5×) and zero padding (the ends fade).
    """
    n, c, t, v, m = _check(x, coords=False)
    radius = kernel // 2
    lo, hi = sigma
    sig = lo + (hi - lo) * _rand(gen, n, device=x.device)
    chosen = _chosen(gen, n, p, x.device)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    taps = torch.exp(-offsets**2 / (2 * sig[:, None] ** 2))  # [N, K]
    if normalize:
        taps = taps / taps.sum(dim=1, keepdim=True)

    def blur(xs, which):
        k = xs.shape[0] * c  # one (K×1) kernel per (sample, coordinate) plane [T, V·M]
        weight = taps[which].repeat_interleave(c, dim=0).view(k, 1, kernel, 1).to(xs.dtype)
        planes = xs.reshape(1, k, t, v * m)  # a free view of the batch
        if normalize:
            out = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="replicate"), weight, groups=k)
        else:
            out = F.conv2d(planes, weight, padding=(radius, 0), groups=k)
        return out.view(xs.shape)

    return _apply_to_chosen(x, chosen, blur)


def axis_mask(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Zero one random coordinate axis (x, y or z, uniform) of a random subset (probability p)."""
    n, c = _check(x)[:2]
    chosen = _chosen(gen, n, p, x.device)
    axis = torch.randint(0, c, (n,), generator=gen, device=gen.device).to(x.device)
    keep = 1.0 - (torch.arange(c, device=x.device) == axis[:, None]).float() * chosen[:, None].float()
    return x * keep.to(x.dtype).view(n, c, 1, 1, 1)


# --- views -----------------------------------------------------------------------------------

def normal_view(x: torch.Tensor, conv: Convention | str, gen: torch.Generator,
                cfg: AugmentConfig | None = None) -> torch.Tensor:
    """AimCLR `_aug`: temporal crop, then shear. `conv` is unused (kept for a uniform API)."""
    cfg = cfg or AugmentConfig()
    if cfg.padding_ratio > 0:
        x = temporal_crop(x, gen, cfg.padding_ratio)
    if cfg.shear_amount > 0:
        x = shear(x, gen, cfg.shear_amount)
    return x


def extreme_view(x: torch.Tensor, conv: Convention | str, gen: torch.Generator,
                 cfg: AugmentConfig | None = None) -> torch.Tensor:
    """AimCLR `_strong_aug`: the normal view, then in this order the extras selected by
    cfg.aug_method: 1 flip, 2 rotate, 3 noise, 4 blur, 5 axis mask."""
    cfg = cfg or AugmentConfig()
    x = normal_view(x, conv, gen, cfg)
    if "1" in cfg.aug_method:
        x = flip(x, conv, gen, cfg.flip_p)
    if "2" in cfg.aug_method:
        x = rotate(x, gen, cfg.rotate_main_max_deg, cfg.rotate_other_max_deg)
    if "3" in cfg.aug_method:
        x = gaussian_noise(x, gen, cfg.noise_std, cfg.noise_p)
    if "4" in cfg.aug_method:
        x = gaussian_blur(x, gen, cfg.blur_kernel, (cfg.blur_sigma_min, cfg.blur_sigma_max), cfg.blur_p,
                          cfg.blur_normalize)
    if "5" in cfg.aug_method:
        x = axis_mask(x, gen, cfg.axis_mask_p)
    return x


def aimclr_views(x_q: torch.Tensor, x_k: torch.Tensor, conv_q: Convention | str, conv_k: Convention | str,
                 gen: torch.Generator, cfg: AugmentConfig | None = None):
    """The three AimCLR views of one batch, drawn independently:
    (x1 = extreme(x_q), x2 = normal(x_q), x3 = normal(x_k)). x_q and x_k are the same clips
    written in the query and key conventions (they may differ in V)."""
    x1 = extreme_view(x_q, conv_q, gen, cfg)
    x2 = normal_view(x_q, conv_q, gen, cfg)
    x3 = normal_view(x_k, conv_k, gen, cfg)
    return x1, x2, x3
