"""MS-CLR pretraining loop, one process (the Ray layer runs the same functions per worker).

One obvious path: settings -> build_model -> build_optimizer -> train_epoch per epoch.
Everything random is derived from (seed, epoch, step, rank), so a run resumed at an
epoch boundary replays exactly the batches, augmentations, convention pairs and dropout
masks of an uninterrupted run: the only state to checkpoint is model, optimizer, queue
and the epoch number.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .augment import AugmentConfig, aimclr_views
from .builder import MSCLR
from .errors import ConfigError
from .pairing import PairSchedule
from .queue import check_queue_size
from .streams import to_stream

REFERENCE_BATCH = 128  # the official lr 0.1 was tuned for a batch of 128


@dataclass
class ModelSettings:
    hidden_channels: int = 16
    hidden_dim: int = 256
    num_blocks: int = 10
    temporal_kernel: int = 9
    dropout: float = 0.5
    partition: str = "official"  # "official" (max_hop=1 quirk, reproduces the paper) or "hop"
    # Projection head: "mlp" (official: Linear-ReLU-Linear) or "mlp_bn" (BatchNorm after each
    # Linear). At initialisation the official head maps every clip to nearly one direction
    # (mean cosine 0.98 between different clips); with momentum 0.999 the key encoder keeps
    # that for the first ~1000 steps, so every key and queue entry looks alike and short runs
    # collapse. BN centres the projections over the batch, so keys differ from the first step.
    head: str = "mlp"


@dataclass
class MethodSettings:
    objective: str = "aimclr"  # "aimclr" or "skeletonclr"
    feature_dim: int = 128
    queue_size: int = 32768
    momentum: float = 0.999  # key-encoder EMA
    temperature: float = 0.07
    mining_epoch: int = 150  # nearest-neighbour mining from the next epoch on (AimCLR)
    topk: int = 1
    pairing: str = "full_random"  # full_random | half_random | all_pairs
    allow_same: bool = True  # official full_random allows q == k
    anchor: str | None = None  # half_random anchor convention (default: the first)
    warmup_epochs: int = 0  # epochs of same-convention pairs before the policy's cross-convention pairs


@dataclass
class OptimSettings:
    epochs: int = 300
    batch_size: int = 128  # global batch (all workers together)
    lr: float = 0.1
    lr_scaling: str = "none"  # "none" or "linear" (lr * batch_size / 128)
    lr_decay_epochs: list[int] = field(default_factory=lambda: [250])
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    # The official loader visits every clip once per convention per epoch ("extended"
    # epochs). None keeps that; an explicit number makes the iteration budget explicit.
    passes_per_epoch: int | None = None
    # lr multiplier for the per-convention parameters (data-BN and edge importance). Each
    # convention's own parameters get gradients only on the steps that draw that convention,
    # so with several conventions they see fewer updates than the shared blocks.
    convention_lr_mult: float = 1.0


@dataclass
class PretrainSettings:
    conventions: list[str] = field(default_factory=lambda: ["ntu-rgb+d", "smplx_42"])
    stream: str = "joint"
    model: ModelSettings = field(default_factory=ModelSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0

    def passes(self) -> int:
        return self.optim.passes_per_epoch or len(self.conventions)

    def steps_per_epoch(self, num_samples: int) -> int:
        return (num_samples * self.passes()) // self.optim.batch_size  # drop_last

    def base_lr(self) -> float:
        if self.optim.lr_scaling == "linear":
            return self.optim.lr * self.optim.batch_size / REFERENCE_BATCH
        if self.optim.lr_scaling != "none":
            raise ConfigError(f"optim.lr_scaling must be 'none' or 'linear', got {self.optim.lr_scaling!r}")
        return self.optim.lr

    def to_dict(self) -> dict:
        return asdict(self)


def validate(settings: PretrainSettings, num_samples: int, world_size: int = 1) -> None:
    """Check what can be checked before any compute; raise ConfigError naming the field."""
    if not settings.conventions:
        raise ConfigError("conventions: at least one skeleton convention is needed")
    gb = settings.optim.batch_size
    if gb % world_size:
        raise ConfigError(f"optim.batch_size={gb} is not divisible by num_workers={world_size}")
    check_queue_size(settings.method.queue_size, gb)
    if settings.steps_per_epoch(num_samples) < 1:
        raise ConfigError(
            f"optim.batch_size={gb} is larger than one epoch ({num_samples} clips x {settings.passes()} passes)"
        )
    if settings.stream not in ("joint", "motion", "bone"):
        raise ConfigError(f"stream must be joint, motion or bone, got {settings.stream!r}")


def build_model(settings: PretrainSettings) -> MSCLR:
    torch.manual_seed(settings.seed)  # identical initial weights on every rank
    m = settings.method
    return MSCLR(
        settings.conventions,
        objective=m.objective,
        feature_dim=m.feature_dim,
        queue_size=m.queue_size,
        momentum=m.momentum,
        temperature=m.temperature,
        mining_epoch=m.mining_epoch,
        topk=m.topk,
        queue_seed=settings.seed,
        **asdict(settings.model),
    )


def frozen_encoder(settings: PretrainSettings, state: dict | None = None):
    """The query encoder of an MSCLR state_dict (None: the exact initial weights of a run with
    these settings), without its projection head, in eval mode: what evaluation probes."""
    model = build_model(settings)
    if state is not None:
        model.load_state_dict(state)  # strict: a checkpoint of another model fails naming the keys
    encoder = model.encoder_q
    encoder.fc, encoder.out_dim = torch.nn.Identity(), encoder.hidden_dim  # pooled features only
    return encoder.eval()


def build_optimizer(model: torch.nn.Module, settings: PretrainSettings) -> torch.optim.Optimizer:
    o = settings.optim
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named], "lr_mult": 1.0}]
    if o.convention_lr_mult != 1.0:  # one group otherwise: checkpoints keep their layout
        own = [("data_bn." in n or "edge_importance." in n) for n, _ in named]
        groups = [{"params": [p for (_, p), o_ in zip(named, own) if not o_], "lr_mult": 1.0},
                  {"params": [p for (_, p), o_ in zip(named, own) if o_], "lr_mult": o.convention_lr_mult}]
    return torch.optim.SGD(
        groups, lr=settings.base_lr(), momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov
    )


def lr_at(settings: PretrainSettings, epoch: int) -> float:
    """Step schedule, epochs 1-based: lr * decay^(number of decay epochs already passed)."""
    passed = sum(1 for e in settings.optim.lr_decay_epochs if epoch > e)
    return settings.base_lr() * settings.optim.lr_decay**passed


def set_epoch_lr(optimizer: torch.optim.Optimizer, settings: PretrainSettings, epoch: int) -> float:
    """Apply the epoch's lr to every group (times the group's lr_mult); return the base lr."""
    lr = lr_at(settings, epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


def pair_schedule(settings: PretrainSettings) -> PairSchedule:
    m = settings.method
    return PairSchedule(settings.conventions, policy=m.pairing, allow_same=m.allow_same, anchor=m.anchor,
                        seed=settings.seed, warmup_epochs=m.warmup_epochs)


def epoch_order(settings: PretrainSettings, num_samples: int, epoch: int, rank: int = 0, world_size: int = 1):
    """This rank's sample indices for an epoch, as a list of per-step index tensors.

    A seeded permutation of `passes` copies of the sample list (a DistributedSampler
    with drop_last, derived from (seed, epoch) so every rank agrees without talking).
    """
    g = torch.Generator().manual_seed(_mix(settings.seed, epoch, 0x5A))
    order = torch.randperm(num_samples * settings.passes(), generator=g) % num_samples
    local = settings.optim.batch_size // world_size
    steps = settings.steps_per_epoch(num_samples)
    order = order[: steps * settings.optim.batch_size].view(steps, world_size, local)
    return [order[s, rank] for s in range(steps)]


def _mix(*xs: int) -> int:
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: dict[str, torch.Tensor],
    settings: PretrainSettings,
    epoch: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    on_step=None,
) -> dict[str, float]:
    """One epoch over `data` ({convention: N×C×T×V×M tensor in metres}).

    `model` may be the DDP wrapper of an MSCLR; its forward returns (loss, stats).
    Returns epoch means of the step stats plus lr, samples_per_s and steps.
    """
    device = torch.device(device)
    num_samples = next(iter(data.values())).shape[0]
    lr = set_epoch_lr(optimizer, settings, epoch)
    torch.manual_seed(_mix(settings.seed, epoch, rank, 0xD0))  # dropout masks
    schedule = pair_schedule(settings)
    model.train()
    sums: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    steps = epoch_order(settings, num_samples, epoch, rank, world_size)
    for step, idx in enumerate(steps):
        conv_q, conv_k = schedule.pair(epoch, step)
        gen = torch.Generator(device=device).manual_seed(_mix(settings.seed, epoch, step, rank))
        x_q = data[conv_q][idx.to(data[conv_q].device)].to(device, non_blocking=True)
        x_k = data[conv_k][idx.to(data[conv_k].device)].to(device, non_blocking=True)
        views = aimclr_views(x_q, x_k, conv_q, conv_k, gen, settings.augment)
        x1, x2, x3 = (to_stream(v, c, settings.stream) for v, c in zip(views, (conv_q, conv_q, conv_k)))
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss, stats = model(x1, x2, x3, conv_q, conv_k, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in stats.items():  # accumulate on device: no per-step host sync
            sums[key] = sums.get(key, 0) + value.detach().float()
        if on_step is not None:
            on_step(step, len(steps))
    elapsed = time.perf_counter() - start
    out = {k: float(v) / max(len(steps), 1) for k, v in sums.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite training statistics at epoch {epoch}: {out}")
    out.update(lr=lr, steps=len(steps), samples_per_s=len(steps) * settings.optim.batch_size / max(elapsed, 1e-9))
    return out
