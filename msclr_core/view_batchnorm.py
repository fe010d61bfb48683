"""BatchNorm over several views stacked along one batch, each view with its own statistics.

Running two views of a clip batch (AimCLR's normal and extreme query views) through an encoder
as ONE batch doubles the batch per kernel, but a train-mode BatchNorm would then pool both
views' statistics: another function. `batch_norm(bn, x, groups)` keeps the function: each
view is normalised with its own batch statistics and the running statistics are updated view
after view, as `groups` separate calls of the module would, and the backward is the per-view
backward. Used through `run(module, x, groups)` by msclr_core.model.
"""

from __future__ import annotations

import torch
from torch import nn


class _PartsBatchNorm(torch.autograd.Function):
    """Train-mode batch norm of x = `len(factors)` equal parts stacked along the batch, each
    part normalised with its own statistics: the same kernels, statistics and running-statistic
    updates (part after part) as that many calls of the module, written into one output tensor
    (no concatenation copy), and the backward likewise part by part."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factors, eps):
        parts = len(factors)
        out = torch.empty_like(x)
        dtype = _stats_dtype(x, weight, bias, running_mean, running_var)
        stats = []
        for xp, op, factor in zip(x.chunk(parts), out.chunk(parts), factors):
            mean, invstd = (torch.empty(x.shape[1], dtype=dtype, device=x.device) for _ in range(2))
            torch.ops.aten.native_batch_norm.out(xp, weight, bias, running_mean, running_var, True, factor, eps,
                                                 out=op, save_mean=mean, save_invstd=invstd)
            stats += [mean, invstd]
        ctx.parts, ctx.eps = parts, eps
        ctx.save_for_backward(x, weight, *stats)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, *stats = ctx.saved_tensors
        grad = grad.contiguous(memory_format=memory_format(x))
        mask = list(ctx.needs_input_grad[:3])
        grad_x = torch.empty_like(x) if mask[0] else None
        grad_w = grad_b = None
        grad_x_parts = grad_x.chunk(ctx.parts) if mask[0] else ()
        for i, (xp, gp) in enumerate(zip(x.chunk(ctx.parts), grad.chunk(ctx.parts))):
            args = (gp, xp, weight, None, None, stats[2 * i], stats[2 * i + 1], True, ctx.eps, mask)
            if all(mask):  # the blocks' BNs: written in place
                _, gw, gb = torch.ops.aten.native_batch_norm_backward.out(
                    *args, out0=grad_x_parts[i], out1=torch.zeros_like(weight), out2=torch.zeros_like(weight))
            else:  # .out refuses the outputs a mask leaves undefined (input BN, affine-free head BN)
                gx, gw, gb = torch.ops.aten.native_batch_norm_backward(*args)
                if mask[0]:
                    grad_x_parts[i].copy_(gx)
            if mask[1]:
                grad_w = gw if grad_w is None else grad_w + gw
            if mask[2]:
                grad_b = gb if grad_b is None else grad_b + gb
        return grad_x, grad_w, grad_b, None, None, None, None


def memory_format(x: torch.Tensor) -> torch.memory_format:
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def _stats_dtype(x: torch.Tensor, *params) -> torch.dtype:
    """The dtype native_batch_norm gives its saved mean/invstd (its .out variant wants it exactly):
    float32 for bf16/fp16 input on CUDA (accumulate type) or on the CPU beside float32 parameters."""
    if x.dtype not in (torch.bfloat16, torch.float16):
        return x.dtype
    mixed = any(p is not None and p.dtype != x.dtype for p in params)
    return torch.float32 if mixed or x.device.type != "cpu" else x.dtype


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """bn(x), where x may hold `groups` views stacked along the batch (equal parts): with batch
    statistics (train mode) each view is normalised with its own and the running statistics are
    updated view after view, exactly as `groups` sequential calls of bn would. With running
    statistics (eval mode) this is bn(x)."""
    uses_batch_stats = bn.training or bn.running_mean is None
    if groups == 1 or not uses_batch_stats:
        return bn(x)
    if x.shape[0] % groups:
        raise ValueError(f"a batch of {x.shape[0]} cannot hold {groups} equal views")
    if x.device.type not in ("cpu", "cuda") or torch.compiler.is_compiling():
        # the plain form (one copy more): what the compiler traces, and for other devices
        return torch.cat([bn(part) for part in x.chunk(groups)])
    factors = []
    for _ in range(groups):  # nn.BatchNorm's own bookkeeping, once per view
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        factors.append(factor)
    track = not bn.training or bn.track_running_stats
    return _PartsBatchNorm.apply(x.contiguous(memory_format=memory_format(x)), bn.weight, bn.bias,
                                 bn.running_mean if track else None, bn.running_var if track else None,
                                 tuple(factors), bn.eps)


def run(module: nn.Module, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """module(x), a Sequential layer by layer, with every BatchNorm per view (see batch_norm)."""
    if groups == 1:
        return module(x)
    if isinstance(module, nn.Sequential):
        for layer in module:
            x = run(layer, x, groups)
        return x
    return batch_norm(module, x, groups) if isinstance(module, nn.modules.batchnorm._BatchNorm) else module(x)
