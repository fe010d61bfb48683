"""Representation-health numbers for diagnosing collapse in self-supervised pretraining.

A contrastive loss can go down while the feature space quietly shrinks: every clip
maps to (nearly) the same point, or onto a few directions. These numbers, computed
on frozen features of a fixed set of clips, show whether that is happening and
whether two skeleton conventions of one clip land together:

  effective_rank   how many directions the features really use (1 = collapse)
  uniformity       how evenly the L2-normalised features cover the sphere (0 = collapse)
  alignment        how far apart the two views of one clip are (0 = identical)
  positive_cosine / negative_cosine
                   cosine of the same clip across conventions vs of different clips;
                   positive well above negative means the conventions agree per clip.
  bn_mismatch      per convention: how far the clips' own statistics at every BatchNorm
                   layer are from the running statistics eval mode applies to them (the
                   blocks' BN layers are shared by all conventions, so their running
                   statistics are a mixture; a convention far from it is mis-normalised).

Plain functions on torch tensors (numpy arrays are accepted), returning Python floats,
computed in float64.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from msclr_core.errors import DataError

__all__ = [
    "effective_rank", "alignment", "uniformity",
    "positive_cosine", "negative_cosine", "representation_health", "bn_mismatch",
]


def _matrix(x, field: str) -> torch.Tensor:
    """``x`` as an N x D float64 tensor with N >= 2, D >= 1, else DataError naming ``field``."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() != 2:
        raise DataError(f"expected an N x D matrix, got shape {tuple(t.shape)}", field=field)
    if t.shape[0] < 2 or t.shape[1] < 1:
        raise DataError(f"need at least 2 rows and 1 column, got shape {tuple(t.shape)}",
                        field=field)
    return t


def _pair(z1, z2, field1: str = "z1", field2: str = "z2") -> tuple[torch.Tensor, torch.Tensor]:
    """Two row-matched matrices, L2-normalised per row; shapes must agree."""
    a, b = _matrix(z1, field1), _matrix(z2, field2)
    if a.shape != b.shape:
        raise DataError(f"shape {tuple(b.shape)} does not match {field1!r} shape "
                        f"{tuple(a.shape)} (rows must be the same clips)", field=field2)
    return F.normalize(a, dim=1), F.normalize(b, dim=1)


def effective_rank(feats) -> float:
    """Roy & Vetterli (2007) effective rank of an N x D feature matrix.

    The features are centred over N; with singular values s and p = s / s.sum(),
    erank = exp(-sum p log p). Range 1..min(N, D): 1 means all variation lies on one
    direction, min(N, D) means it is spread evenly over all of them. If the centred
    matrix is zero (all rows identical: total collapse) the result is defined as 1.0.
    Round-off is not signal: singular values below max(N, D) * eps * s.max(), with eps
    of the input dtype, count as zero (so float32 features of rank r give about r).
    """
    raw = torch.as_tensor(feats)
    eps = torch.finfo(raw.dtype if raw.is_floating_point() else torch.float64).eps
    x = _matrix(raw, "feats")
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    s = s[s > max(x.shape) * eps * s.max()]
    if s.numel() == 0:  # centred matrix is exactly zero
        return 1.0
    p = s / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(z1, z2, alpha: float = 2) -> float:
    """Wang & Isola (2020) alignment: mean ||f(x) - f(y)||_2 ** alpha over positive pairs.

    Row i of ``z1`` and row i of ``z2`` are a positive pair; rows are L2-normalised
    first. Lower is better aligned: 0 when each pair coincides, 4 (for alpha=2) when
    each pair is antipodal. Range 0..2**alpha.
    """
    a, b = _pair(z1, z2)
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z, t: float = 2, max_samples: int = 2048, seed: int = 0) -> float:
    """Wang & Isola (2020) uniformity: log mean over pairs i != j of exp(-t ||z_i - z_j||^2).

    Rows are L2-normalised. Range -4t..0: 0 means total collapse (all rows equal);
    lower (more negative) is more uniform, about -4 for t=2 with points spread over a
    high-dimensional sphere. At most ``max_samples`` rows are used, drawn with a
    torch.Generator seeded with ``seed`` so the number is reproducible.
    """
    x = _matrix(z, "z")
    if x.shape[0] > max_samples:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(x.shape[0], generator=g)[:max_samples]]
    x = F.normalize(x, dim=1)
    sq = torch.pdist(x, p=2).pow(2)  # each unordered pair once: same mean as over i != j
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))


def positive_cosine(z1, z2) -> float:
    """Mean cosine similarity of matched rows (one clip in two conventions). Range -1..1."""
    a, b = _pair(z1, z2)
    return float((a * b).sum(dim=1).mean())


def negative_cosine(z1, z2) -> float:
    """Mean cosine similarity of mismatched rows: row i of ``z1`` vs row j != i of ``z2``.

    Range -1..1; near 0 for unrelated directions. Compared with positive_cosine it says
    whether features of the same clip are closer than those of different clips.
    Computed exactly over all N(N-1) pairs as (sum a)·(sum b) - sum a_i·b_i.
    """
    a, b = _pair(z1, z2)
    n = a.shape[0]
    total = a.sum(dim=0) @ b.sum(dim=0) - (a * b).sum()
    return float(total / (n * (n - 1)))


def representation_health(feats: dict[str, torch.Tensor]) -> dict[str, float]:
    """All the numbers above for features of the same N clips under several conventions.

    ``feats`` maps convention name -> N x D features, rows in the same clip order.
    Returns flat keys: ``erank.<c>`` and ``uniformity.<c>`` per convention c, and
    ``alignment.<a>|<b>``, ``pos_cos.<a>|<b>``, ``neg_cos.<a>|<b>`` for each unordered
    pair (a, b) in the dict's order. Raises DataError naming the offending convention
    when an input is not N x D with N >= 2 or when N differs between conventions.
    """
    if not feats:
        raise DataError("no conventions given", field="feats")
    mats = {c: _matrix(z, c) for c, z in feats.items()}
    out: dict[str, float] = {}
    for c, z in mats.items():
        out[f"erank.{c}"] = effective_rank(z)
        out[f"uniformity.{c}"] = uniformity(z)
    for (a, za), (b, zb) in itertools.combinations(mats.items(), 2):
        _pair(za, zb, a, b)  # shape check naming the conventions
        key = f"{a}|{b}"
        out[f"alignment.{key}"] = alignment(za, zb)
        out[f"pos_cos.{key}"] = positive_cosine(za, zb)
        out[f"neg_cos.{key}"] = negative_cosine(za, zb)
    return out


def bn_mismatch(encoder: torch.nn.Module, x: torch.Tensor, conv: str, eps: float = 1e-5) -> dict[str, float]:
    """Eval-mode BatchNorm statistics against the statistics of one convention's clips.

    ``encoder.features(x, conv)`` runs once in eval mode; at every BatchNorm layer it passes
    (its own data-BN and the shared blocks' BNs) the batch mean and variance of the layer's
    input per channel are compared with the layer's running statistics:
      ``bn_shift.<conv>``  mean over channels and layers of |batch mean - running mean| /
                           running std (0 when the running mean fits this convention);
      ``bn_logvar.<conv>`` mean of |log(batch var / running var)| (0 when the scale fits).
    ``x`` is the model's input (N x C x T x V x M, already in the stream), N >= 2.
    """
    stats: list[tuple[float, float]] = []

    def hook(module, inputs, _output):
        h = inputs[0].detach().to(torch.float64)
        dims = [d for d in range(h.dim()) if d != 1]
        mean, var = h.mean(dim=dims), h.var(dim=dims, unbiased=False)
        run_mean = module.running_mean.to(torch.float64)
        run_var = module.running_var.to(torch.float64) + eps
        stats.append((float(((mean - run_mean).abs() / run_var.sqrt()).mean()),
                      float(((var + eps) / run_var).log().abs().mean())))

    layers = [m for m in encoder.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = encoder.training
    try:
        encoder.eval()
        with torch.no_grad():
            encoder.features(x, conv)
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    if not stats:
        raise DataError("the encoder ran no BatchNorm layer with running statistics", field=conv)
    return {f"bn_shift.{conv}": sum(s for s, _ in stats) / len(stats),
            f"bn_logvar.{conv}": sum(v for _, v in stats) / len(stats)}
