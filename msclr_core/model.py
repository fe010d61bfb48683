"""Unified ST-GCN encoder: one set of ST-GCN blocks shared by every skeleton convention.

The official FlexModel (spec §1.3) zero-pads every convention to V_max joints before the
blocks, so padded joints enter the BatchNorm statistics of every inner block (spec §6,
item 10). Padding is not needed: the convolution weights never depend on V (the graph
conv is a 1x1 conv followed by a product with A, and the temporal conv runs along T
only). So each batch holds ONE convention at its native joint count and runs through the
shared blocks as it is; only the parts whose shape depends on V are per convention:

- data_bn[conv]           BatchNorm1d(C * V_conv), the input normalisation of ST-GCN;
- buffer A_<conv>         the (3, V_conv, V_conv) adjacency, unpadded (spec §6, item 11);
- edge_importance[conv]   one (3, V_conv, V_conv) Parameter per block, initialised to 1.

Shared: the `blocks` and the head `fc`. Layout everywhere is N x C x T x V x M.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from msclr_core.conventions import get_convention, list_conventions
from msclr_core.errors import ConfigError
from msclr_core.graph import adjacency
from msclr_core.view_batchnorm import batch_norm, memory_format, run

HEADS = ("mlp", "mlp_bn", "linear", None)


def channel_plan(in_channels: int, hidden_channels: int, hidden_dim: int, num_blocks: int):
    """[(c_in, c_out, temporal_stride)] for each block.

    With 10 blocks this is the standard ST-GCN plan scaled by hidden_channels / 64:
    h, h, h, h, 2h (stride 2), 2h, 2h, 4h (stride 2), 4h, and the last block goes to
    hidden_dim. For other depths the two stride-2 blocks sit the same fraction of the way
    through (40% and 70%, rounded; they coincide for 1-2 blocks), the width doubles at
    each of them, and the last block always outputs hidden_dim.
    """
    downsample = {(4 * num_blocks + 5) // 10, (7 * num_blocks + 5) // 10} - {0}
    plan, c_in, width = [], in_channels, hidden_channels
    for i in range(num_blocks):
        stride = 2 if i in downsample else 1
        width *= stride
        c_out = hidden_dim if i == num_blocks - 1 else width
        plan.append((c_in, c_out, stride))
        c_in = c_out
    return plan


class PointwiseConv(nn.Conv2d):
    """A 1x1 conv computed as one linear layer over the channels-last view: the same parameters
    (state dicts unchanged) and function. Its weight gradient keeps the weight's layout; a 1x1
    conv's backward on channels-last input returns it channels-last, and DDP then copied every
    such gradient into its buckets ("Grad strides do not match bucket view strides")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.view(self.out_channels, self.in_channels).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


class Dropout(nn.Dropout):
    """nn.Dropout (same function and RNG: the global generator) with a cheaper mask on the CPU.

    CPU bernoulli_ draws the mask element by element (~17 ns each): in a 1/8-width pretraining
    step on one core the masks took ~10% of the time. torch.rand + compare is vectorised:
    forward + backward on 5M elements went from 111 to 35 ms, the step about 7% faster.
    Other devices keep the fused native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != "cpu" or not 0.0 < self.p < 1.0:
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x.mul_(keep) if self.inplace else x * keep.to(x.dtype)


class STGCNBlock(nn.Module):
    """gcn (1x1 conv to K*C_out, then sum_k X_k A_k) -> tcn -> + residual -> ReLU.

    The function is the official one; the arithmetic is reordered for speed (issue 6).
    Feature maps are (N, C, T, V) tensors in channels-last memory, i.e. laid out as
    (N, T, V, C). The graph conv  y[c, w] = sum_k sum_v A_k[v, w] (W_k x[v] + b_k)[c]
    is then two plain matrix products with no layout copies:
      1. mix joints first, for all K partitions at once (fused partitions):
         x_A[w, k, :] = sum_v A_k[v, w] x[v, :]   one matmul with a (V*K, V) matrix;
      2. mix channels: y = x_A.view(.., K*C_in) @ W^T + b_A, one linear layer, where
         W is the 1x1 conv weight regrouped as (C_out, K*C_in) and b_A[w] = sum_k
         b_k colsum(A_k)[w] carries the conv bias through the graph.
    The einsum over (N, K, C, T, V) this replaces spent a third of the CPU step in
    permute copies and small batched products. Joints are mixed before channels
    because C_in <= C_out in every ST-GCN block, so step 1 is the cheaper order.
    """

    def __init__(self, c_in, c_out, stride=1, num_subsets=3, temporal_kernel=9, dropout=0.0, residual=True):
        super().__init__()
        self.num_subsets, self.c_in, self.c_out = num_subsets, c_in, c_out
        self.gcn = nn.Conv2d(c_in, num_subsets * c_out, kernel_size=1)  # kept as a conv: state dicts, init
        pad = (temporal_kernel - 1) // 2  # "same" length for stride 1, ceil(T/2) for stride 2
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, (temporal_kernel, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(c_out),
            Dropout(dropout, inplace=True),
        )
        self.stride = stride
        if not residual:
            self.residual = None
        elif c_in == c_out and stride == 1:
            self.residual = nn.Identity()
        else:
            # A 1x1 conv with stride (s, 1) is a 1x1 conv of every s-th frame. Written as
            # frame slicing + stride-1 conv because oneDNN's channels-last backward of the
            # strided 1x1 conv hangs for 4 input channels (torch 2.13 CPU), and it is cheaper.
            self.residual = nn.Sequential(PointwiseConv(c_in, c_out, 1), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def graph_conv(self, x: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """x: (N, C_in, T, V) channels-last, A: (K, V, V) with A[k][v, w] the weight of v -> w."""
        n, _, t, v = x.shape
        K, c_in, c_out = self.num_subsets, self.c_in, self.c_out
        A = A.to(x.dtype)
        x_ntvc = _KeepGradLayout.apply(x).permute(0, 2, 3, 1)  # a view for channels-last x
        A_fused = A.permute(2, 0, 1).reshape(v * K, v)  # [w*K + k, v] = A[k, v, w]
        x_A = torch.matmul(A_fused, x_ntvc).view(n, t, v, K * c_in)
        W = self.gcn.weight.view(K, c_out, c_in).transpose(0, 1).reshape(c_out, K * c_in)
        b_A = torch.einsum("kc,kw->wc", self.gcn.bias.view(K, c_out).to(x.dtype), A.sum(dim=1))
        y = torch.nn.functional.linear(x_A, W.to(x.dtype)) + b_A  # (N, T, V, C_out)
        return y.permute(0, 3, 1, 2)  # (N, C_out, T, V), channels-last memory

    def forward(self, x: torch.Tensor, A: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """groups: x holds that many views stacked along the batch, each with its own BN statistics."""
        if self.residual is None:
            res = 0
        else:
            # Frames sliced in the (N, T, V, C) view: the slice's gradient then comes back
            # channels-last like every other gradient here (slicing the (N, C, T, V) view gave a
            # contiguous one, and the residual add and ReLU backward ran on mixed layouts, ~8x slower).
            res = run(self.residual, x.permute(0, 2, 3, 1)[:, :: self.stride].permute(0, 3, 1, 2), groups)
        return self.relu(run(self.tcn, self.graph_conv(x, A), groups) + res)


class _KeepGradLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient on in the input's memory layout. The graph
    conv's matmul returns its input gradient in (N, T, C, V) memory; the residual add, ReLU and
    BatchNorm backward that follow ran up to ~8x slower on that mix of layouts (CPU) than on
    channels-last alone, which one copy restores."""

    @staticmethod
    def forward(ctx, x):
        ctx.memory_format = memory_format(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.memory_format)


def simam_drop(x: torch.Tensor, keep_prob: float = 0.7, e_lambda: float = 1e-4) -> torch.Tensor:
    """AimCLR's energy-based attention drop (spec §1.4) on a feature map x (NM, C, T, V).

    SimAM attention att = sigmoid(d / (4 (sum_{T,V} d / (TV - 1) + lambda)) + 0.5) with
    d = (x - mean_{T,V} x)^2 is large where x stands out. The drop removes what stands out:
    1. spatial: joints whose mean attention over (C, T) is >= keep_prob are zeroed;
    2. temporal: the official code views att as (NM, C*V, T) and zeroes entries >= keep_prob,
       which is an elementwise mask on (c, t, v), written so here.
    Both masks come from the attention of the input map, as in the official code. After each
    mask the map is rescaled by numel / sum(mask) over the whole batch (as official); the sum
    is clamped to 1 so an all-dropped map gives zeros, not NaN (spec §6, item 11).

    It has no parameters and the joint count only enters through the tensor shape, so one
    function serves every convention (the official per-format Simam_Drop(num_point=V) held
    V only to reshape).
    """
    xf = x.float()  # attention in float32: bf16 rounds values near the threshold
    _, _, t, v = x.shape
    d = (xf - xf.mean(dim=(2, 3), keepdim=True)).pow(2)
    denom = 4 * (d.sum(dim=(2, 3), keepdim=True) / max(t * v - 1, 1) + e_lambda)
    att = torch.sigmoid(d / denom + 0.5)

    def keep(mask: torch.Tensor) -> torch.Tensor:
        mask = mask.float()
        return (mask * (mask.numel() / mask.sum().clamp_min(1.0))).to(x.dtype)

    x = x * keep(att.mean(dim=(1, 2)) < keep_prob)[:, None, None, :]  # spatial, (NM, V)
    return x * keep(att < keep_prob)  # temporal, (NM, C, T, V)


def init_weights(module: nn.Module) -> None:
    """Spec §1.4: Conv/Linear weights N(0, 0.02), bias 0; BatchNorm gamma N(1, 0.02), beta 0."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_args(conventions, in_channels, hidden_channels, hidden_dim, num_blocks, temporal_kernel, dropout, head,
                feature_dim):  # fmt: skip
    if isinstance(conventions, str):
        raise ConfigError(f"conventions must be a list of names, got the string {conventions!r}")
    if not conventions:
        raise ConfigError("conventions: at least one skeleton convention is needed")
    if len(set(conventions)) != len(conventions):
        raise ConfigError(f"conventions: duplicate names in {list(conventions)}")
    for name in conventions:
        if "." in name:  # ModuleDict keys and buffer names cannot hold "."
            raise ConfigError(f"conventions: name {name!r} contains '.', which module keys cannot hold")
    for field, value in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                         ("hidden_dim", hidden_dim), ("num_blocks", num_blocks),
                         ("feature_dim", feature_dim)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{field} must be a positive integer, got {value!r}")
    if isinstance(temporal_kernel, bool) or not isinstance(temporal_kernel, int) or temporal_kernel % 2 != 1:
        raise ConfigError(f"temporal_kernel must be an odd positive integer, got {temporal_kernel!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    if head not in HEADS:
        raise ConfigError(f"head must be one of {HEADS}, got {head!r}")


class UnifiedSTGCN(nn.Module):
    """ST-GCN encoder shared by several skeleton conventions (see the module docstring).

    forward(x, conv) -> N x feature_dim (N x hidden_dim with head=None);
    forward(x, conv, drop=True) -> (z, z_drop), z_drop from the SimAM-dropped feature map
    through the same head; features(x, conv) -> N x hidden_dim, pooled, before the head.
    """

    def __init__(
        self,
        conventions: Sequence[str],
        in_channels: int = 3,
        hidden_channels: int = 16,
        hidden_dim: int = 256,
        num_blocks: int = 10,
        temporal_kernel: int = 9,
        dropout: float = 0.5,
        partition: str = "official",
        head: str | None = "mlp",
        feature_dim: int = 128,
        keep_prob: float = 0.7,
        e_lambda: float = 1e-4,
    ):
        super().__init__()
        _check_args(conventions, in_channels, hidden_channels, hidden_dim, num_blocks, temporal_kernel, dropout,
                    head, feature_dim)  # fmt: skip
        self.conventions = tuple(conventions)
        self.in_channels, self.hidden_dim = in_channels, hidden_dim
        self.keep_prob, self.e_lambda, self.dropout = keep_prob, e_lambda, dropout
        graphs = {name: torch.from_numpy(adjacency(name, partition)) for name in self.conventions}
        self.num_joints = {name: get_convention(name).num_joints for name in self.conventions}

        # Shared parts are built and initialised first: their random init then does not
        # depend on which conventions follow (same seed -> same shared weights).
        plan = channel_plan(in_channels, hidden_channels, hidden_dim, num_blocks)
        self.blocks = nn.ModuleList(
            STGCNBlock(c_in, c_out, stride, temporal_kernel=temporal_kernel,
                       dropout=dropout if i > 0 else 0.0, residual=i > 0)  # fmt: skip
            for i, (c_in, c_out, stride) in enumerate(plan)
        )
        if head == "mlp":  # the official "mlp hack"
            self.fc = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, feature_dim))
        elif head == "mlp_bn":  # SimCLR / MoCo v3 projector: BN centres the outputs (see ModelSettings.head)
            self.fc = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(),
                                    nn.Linear(hidden_dim, feature_dim), nn.BatchNorm1d(feature_dim, affine=False))
        elif head == "linear":
            self.fc = nn.Linear(hidden_dim, feature_dim)
        else:
            self.fc = nn.Identity()
        self.out_dim = hidden_dim if head is None else feature_dim

        self.data_bn = nn.ModuleDict()
        self.edge_importance = nn.ModuleDict()
        for name, A in graphs.items():
            V = A.shape[-1]
            self.data_bn[name] = nn.BatchNorm1d(in_channels * V)
            self.edge_importance[name] = nn.ParameterList(nn.Parameter(torch.ones_like(A)) for _ in plan)
            self.register_buffer(f"A_{name}", A)
        self.apply(init_weights)  # children in registration order: shared first

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: torch.Tensor, conv: str) -> None:
        if conv not in self.num_joints:
            raise ConfigError(f"convention {conv!r} is not in this model; it knows {list(self.conventions)}"
                              + ("" if conv in list_conventions() else " (and it is not a registered convention)"))
        V = self.num_joints[conv]
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[3] != V:
            raise ConfigError(
                f"input for convention {conv!r} must be N x C x T x V x M with C={self.in_channels}, "
                f"V={V}; got shape {tuple(x.shape)}"
            )

    def feature_map(self, x: torch.Tensor, conv: str, groups: int = 1) -> torch.Tensor:
        """The last block's output (N*M, hidden_dim, T', V_conv). groups: see forward."""
        self._check_input(x, conv)
        N, C, T, V, M = x.shape
        # data-BN over (N*M, V*C, T): one normaliser per (joint, coordinate), persons pooled
        x = x.permute(0, 4, 3, 1, 2).reshape(N * M, V * C, T)
        x = batch_norm(self.data_bn[conv], x, groups)
        # to (N*M, C, T, V) in channels-last memory, the layout every block works in
        x = x.view(N * M, V, C, T).permute(0, 3, 1, 2).contiguous().permute(0, 3, 1, 2)
        A = getattr(self, f"A_{conv}")
        for block, importance in zip(self.blocks, self.edge_importance[conv]):
            x = block(x, A * importance, groups)
        return x

    @staticmethod
    def _pool(fmap: torch.Tensor, num_persons: int) -> torch.Tensor:
        """Global average over (T, V), then mean over persons: (N*M, C, T, V) -> (N, C).
        Averaged in the (N, T, V, C) view, so that the gradient comes back channels-last."""
        pooled = fmap.permute(0, 2, 3, 1).mean(dim=(1, 2))
        return pooled.view(-1, num_persons, pooled.shape[1]).mean(dim=1)

    # ------------------------------------------------------------------ API
    def features(self, x: torch.Tensor, conv: str) -> torch.Tensor:
        """N x hidden_dim pooled features before the head (linear evaluation input)."""
        return self._pool(self.feature_map(x, conv), x.shape[-1])

    def forward(self, x: torch.Tensor, conv: str, drop: bool = False, groups: int = 1):
        """groups > 1: x holds that many views of equal size stacked along the batch, and every
        BatchNorm normalises each view with its own statistics (in train mode), so the call
        equals separate calls per view, in order (dropout masks aside); z covers every view and
        z_drop (drop=True) only the last one."""
        fmap = self.feature_map(x, conv, groups)
        M = x.shape[-1]
        z = run(self.fc, self._pool(fmap, M), groups)
        if not drop:
            return z
        # the last view, sliced in the (N, T, V, C) view so that its gradient stays channels-last
        last = fmap.permute(0, 2, 3, 1)[fmap.shape[0] // groups * (groups - 1):].permute(0, 3, 1, 2)
        z_drop = self.fc(self._pool(simam_drop(last, self.keep_prob, self.e_lambda), M))
        return z, z_drop
