"""MS-CLR: MoCo with a momentum key encoder, a negative queue, and the AimCLR or SkeletonCLR
objective, where the query and the key may come from different skeleton conventions.

Shaped after facebookresearch/moco `builder.py` (encoder_q, encoder_k, queue,
_momentum_update_key_encoder). Method: msclr-method.md §1.4. Differences from the official
AimCLR code, all deliberate (§6):
  * encoder_k is a deep copy of encoder_q taken after its initialisation, so f_k == f_q at
    step 0 (the official weights_init re-randomised f_k after the copy);
  * the queue is a `MoCoQueue` (all-gather under DDP, wrap-around, pointer advanced in the
    same call), not a buffer, so DDP never re-broadcasts it;
  * labels and masks are built on the features' device (no hard-coded `.cuda()`);
  * the contrastive logits are computed in float32 even under autocast.
Like the official code there is no shuffle-BN: keys come from a BN in train mode over the
key batch of one rank. The query and key usually come from different conventions, hence
different per-convention data-BN layers, which already limits the BN "shortcut" that
shuffle-BN prevents in single-view MoCo.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .model import UnifiedSTGCN
from .queue import MoCoQueue

OBJECTIVES = ("aimclr", "skeletonclr")


class MSCLR(nn.Module):
    def __init__(
        self,
        conventions: Sequence[str],
        objective: str = "aimclr",
        feature_dim: int = 128,
        queue_size: int = 32768,
        momentum: float = 0.999,
        temperature: float = 0.07,
        mining_epoch: int = 150,
        topk: int = 1,
        queue_seed: int = 0,
        fused_views: bool | None = None,
        **encoder_kwargs,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"momentum must be in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= queue_size:
            raise ConfigError(f"topk must be an integer in [1, queue_size={queue_size}], got {topk!r}")
        if mining_epoch < 0:
            raise ConfigError(f"mining_epoch must be >= 0, got {mining_epoch}")
        self.conventions = list(conventions)
        self.objective = objective
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.mining_epoch, self.topk = int(mining_epoch), topk
        # AimCLR's two query views (normal x2, extreme x1) through encoder_q as ONE batch, each
        # view with its own BatchNorm statistics (view_batchnorm.batch_norm): the same function,
        # running statistics and gradients as two calls, with twice the batch per kernel. None:
        # fused where that is exact, i.e. without dropout (a fused call draws the dropout masks
        # in another order: the same distribution, other masks), and not on the CPU, where twice
        # the batch per kernel gains nothing (measured 0.89-1.04x, benchmarks/RESULTS.md).
        # False: the two-call reference (`msclr bench step` times both).
        self.fused_views = fused_views

        encoder_kwargs.setdefault("head", "mlp")  # the official "mlp hack": 256 -> 256 -> 128
        self.encoder_q = UnifiedSTGCN(self.conventions, feature_dim=feature_dim, **encoder_kwargs)
        # Copy after the encoder initialised itself, so f_k == f_q at step 0.
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)

        # Not a buffer (see queue.py); `_apply` moves it, the extra state checkpoints it.
        self.queue = MoCoQueue(feature_dim, queue_size, generator=torch.Generator().manual_seed(queue_seed))

    # ------------------------------------------------------------------ queue plumbing
    def _apply(self, fn, *args, **kwargs):
        """Let .to()/.cuda()/.cpu() move the queue too, but never cast it: a probe tensor
        tells where `fn` sends float32 data, and only that device is taken."""
        super()._apply(fn, *args, **kwargs)
        probe = fn(torch.empty(0, dtype=torch.float32, device=self.queue.device))
        self.queue.to(probe.device)
        return self

    # The queue travels in `state_dict()` as this module's `_extra_state` entry, so
    # checkpoints need no special code, while DDP (which syncs parameters and buffers only)
    # never broadcasts it and `.half()` never touches it.
    def get_extra_state(self) -> dict:
        return self.queue.state_dict()

    def set_extra_state(self, state: dict) -> None:
        self.queue.load_state_dict(state)

    # ------------------------------------------------------------------ MoCo
    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """θ_k ← m·θ_k + (1−m)·θ_q for parameters. Buffers (BN running statistics,
        num_batches_tracked, adjacency) are copied from encoder_q: an average of running
        averages means nothing, and keys are computed in train mode (batch statistics), so
        the copy only keeps encoder_k usable in eval mode."""
        params_q, params_k = list(self.encoder_q.parameters()), list(self.encoder_k.parameters())
        # One fused kernel per list instead of two per tensor (hundreds of small tensors).
        torch._foreach_mul_(params_k, self.momentum)
        torch._foreach_add_(params_k, params_q, alpha=1.0 - self.momentum)
        for buf_q, buf_k in zip(self.encoder_q.buffers(), self.encoder_k.buffers()):
            buf_k.copy_(buf_q)

    def forward(self, x1, x2, x3, conv_q: str, conv_k: str, epoch: int):
        """x1: extreme query view (AimCLR only; may be None for SkeletonCLR), x2: normal
        query view, x3: normal key view. Epochs are 1-based; nearest-neighbour mining
        (AimCLR) from epoch mining_epoch + 1 on. Returns (loss, stats of detached scalars)."""
        extra = ()
        if self.objective == "aimclr" and x1 is None:
            raise ValueError("objective 'aimclr' needs x1, the extremely augmented query view")
        if self.objective == "aimclr" and x1.shape == x2.shape and self.fuses_views():
            z, q_ed = self.encoder_q(torch.cat([x2, x1]), conv_q, drop=True, groups=2)
            q, q_e = z.chunk(2)
            extra = (q_e, q_ed)
        else:
            q = self.encoder_q(x2, conv_q)
            if self.objective == "aimclr":
                extra = self.encoder_q(x1, conv_q, drop=True)  # (q_e, q_ed)

        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self.encoder_k(x3, conv_k)

        # float32 logits even under autocast: 1/τ = 14 and a 32k-wide softmax lose too much in bf16.
        with torch.autocast(q.device.type, enabled=False):
            q, k = _unit(q), _unit(k)
            negatives = self.queue.queue.clone()  # pre-update queue; the clone survives the enqueue below
            logits = _logits(q, k, negatives, self.temperature)
            mine = self.objective == "aimclr" and epoch > self.mining_epoch
            if self.objective == "aimclr":
                logits_e, logits_ed = (_logits(_unit(z), k, negatives, self.temperature) for z in extra)
                pos_mask = _neighbour_mask((logits, logits_e, logits_ed), self.topk) if mine else None
            else:
                pos_mask = None
            loss_info = _info_nce(logits, pos_mask)
            stats = {"loss_info": loss_info}
            loss = loss_info
            if self.objective == "aimclr":
                loss_d3m = _d3m(logits, logits_e, logits_ed)
                loss = loss + loss_d3m
                stats["loss_d3m"] = loss_d3m

        self.queue.enqueue(k)
        with torch.no_grad():
            stats["loss"] = loss
            stats["acc"] = (logits.argmax(dim=1) == 0).float().mean()
            stats["pos_count"] = pos_mask.sum(dim=1).mean() if pos_mask is not None else torch.ones((), device=q.device)
        return loss, {name: value.detach() for name, value in stats.items()}

    def fuses_views(self) -> bool:
        """Whether forward runs AimCLR's x2 and x1 through encoder_q as one batch (see fused_views)."""
        if self.objective != "aimclr":
            return False
        if self.fused_views is not None:
            return self.fused_views
        exact = not self.encoder_q.training or self.encoder_q.dropout == 0
        return exact and self.queue.device.type != "cpu"

    def extra_repr(self) -> str:
        return (
            f"objective={self.objective!r}, conventions={self.conventions}, queue={self.queue}, "
            f"momentum={self.momentum}, temperature={self.temperature}, "
            f"mining_epoch={self.mining_epoch}, topk={self.topk}"
        )


# ---------------------------------------------------------------------- loss pieces
def _unit(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z.float(), dim=1)


def _logits(q: torch.Tensor, k: torch.Tensor, negatives: torch.Tensor, temperature: float) -> torch.Tensor:
    """[q·k, q·M] / τ: column 0 is the positive key, columns 1.. the queue."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ negatives
    return torch.cat([l_pos, l_neg], dim=1) / temperature


def _info_nce(logits: torch.Tensor, pos_mask: torch.Tensor | None) -> torch.Tensor:
    """CE(z, 0); with a positive mask, −mean_{j∈P} log softmax(z)_j per sample."""
    if pos_mask is None:
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels)
    log_p = F.log_softmax(logits, dim=1)
    return (-(log_p * pos_mask).sum(dim=1) / pos_mask.sum(dim=1)).mean()


@torch.no_grad()
def _neighbour_mask(all_logits: Sequence[torch.Tensor], topk: int) -> torch.Tensor:
    """AimCLR nearest-neighbour mining: the key plus the top-k queue entries of each query
    view (q, q_e, q_ed), merged into one mask over [key, queue] (2..3·topk+1 members)."""
    mask = torch.zeros_like(all_logits[0])
    mask[:, 0] = 1.0
    for logits in all_logits:  # logits[:, 1:] = q·M / τ: same order as q·M
        mask[:, 1:].scatter_(1, logits[:, 1:].topk(topk, dim=1).indices, 1.0)
    return mask


def _d3m(logits: torch.Tensor, logits_e: torch.Tensor, logits_ed: torch.Tensor) -> torch.Tensor:
    """Dual distributional divergence minimisation: the normal view's distribution (no
    gradient) supervises the extreme and the extreme-dropped views: ½·(H(p, p_e) + H(p, p_ed))."""
    p = F.softmax(logits, dim=1).detach()
    ce_e = -(p * F.log_softmax(logits_e, dim=1)).sum(dim=1)
    ce_ed = -(p * F.log_softmax(logits_ed, dim=1)).sum(dim=1)
    return 0.5 * (ce_e + ce_ed).mean()
