"""Linear classifiers on frozen features, trained by SGD with a closed-form gradient.

The linear probe is thousands of tiny steps (batch 128, 256-d features, 60 classes). Through
nn.Linear, autograd and torch.optim one such step is ~40 kernel launches plus the autograd
engine's bookkeeping: about 1 ms on a GPU or on one CPU core, which made the probe, not the
encoder, the floor of a cached linear evaluation on a GPU. Softmax cross-entropy has a
closed-form gradient, so here one step is ~15 tensor ops for all heads at once (weights
stacked as [K, C, D]) and builds no graph. The matmuls run head by head (one each, into
slices of one output): a batched matmul rounds differently for different K, and then an
ensemble's head would not train exactly as the same head alone.

The maths is exactly that of K x (nn.Linear + F.cross_entropy(reduction="mean") +
torch.optim.SGD(momentum, weight_decay, dampening=0, nesterov=False)); only float rounding
differs (tests/test_linear_heads.py checks it against that reference in float64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def probe_lr(lr: float, milestones, epoch: int) -> float:
    """The official probe's step decay: lr * 0.1^(milestones passed), epochs 0-based."""
    return lr * 0.1 ** sum(epoch >= m for m in milestones)


def stack_features(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """[N, d_k] per head -> one [K, N, max d_k] tensor, zero-padded (a zero input column gets a
    zero gradient, so the padded weights stay zero and change no logit)."""
    dim = max(f.shape[1] for f in feats)
    if all(f.shape[1] == dim for f in feats):
        return torch.stack(list(feats))
    out = feats[0].new_zeros(len(feats), feats[0].shape[0], dim)
    for k, f in enumerate(feats):
        out[k, :, :f.shape[1]] = f
    return out


class LinearHeads:
    """K linear classifiers with separate parameters, trained on the same batches.

    Initialised as the official linear evaluation: weight ~ N(0, 0.01) (drawn head by head
    from `generator`, so head k gets what a lone nn.Linear drawn k-th would), bias 0.
    """

    def __init__(self, in_dims: Sequence[int], num_classes: int, *, momentum: float = 0.9,
                 weight_decay: float = 0.0, generator: torch.Generator | None = None, device=None,
                 dtype: torch.dtype = torch.float32):
        weight = torch.zeros(len(in_dims), num_classes, max(in_dims), dtype=dtype)
        for k, d in enumerate(in_dims):
            weight[k, :, :d] = torch.randn(num_classes, d, generator=generator, dtype=dtype) * 0.01
        self.weight = weight.to(device)  # [K, C, D]
        self.bias = torch.zeros(len(in_dims), num_classes, dtype=dtype, device=device)  # [K, C]
        self.momentum, self.weight_decay = momentum, weight_decay
        self._buffers: list[torch.Tensor] | None = None  # SGD momentum, created by the first step

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [K, N, D] -> logits [K, N, C]."""
        out = x.new_empty(x.shape[0], x.shape[1], self.bias.shape[1])
        for k in range(len(x)):
            torch.addmm(self.bias[k], x[k], self.weight[k].T, out=out[k])
        return out

    @torch.no_grad()
    def step(self, x: torch.Tensor, onehot: torch.Tensor, lr: float) -> torch.Tensor:
        """One SGD step on the summed mean CE of all heads. x [K, B, D], onehot [B, C] (the
        labels as one-hot rows, same dtype as x). Returns the loss summed over heads and
        samples (= sum_k mean CE_k * B) as a device tensor, so the caller need not sync."""
        logp = torch.log_softmax(self.logits(x), dim=-1)
        loss_sum = -(logp * onehot).sum()
        # d(mean CE)/d(logits) = (softmax - onehot) / B, reusing logp's memory
        grad_logits = logp.exp_().sub_(onehot).div_(x.shape[1])
        grad_weight = torch.empty_like(self.weight)
        for k in range(len(x)):
            torch.mm(grad_logits[k].T, x[k], out=grad_weight[k])
        grads = [grad_weight, grad_logits.sum(1)]
        params = [self.weight, self.bias]
        if self.weight_decay:
            torch._foreach_add_(grads, params, alpha=self.weight_decay)
        if self.momentum:  # torch.optim.SGD: buffer = grad at the first step, then m * buffer + grad
            if self._buffers is None:
                self._buffers = grads
            else:
                torch._foreach_mul_(self._buffers, self.momentum)
                torch._foreach_add_(self._buffers, grads)
            grads = self._buffers
        torch._foreach_add_(params, grads, alpha=-lr)
        return loss_sum
