"""Supervised ceiling: the self-supervised run's encoder and stream, trained WITH labels.

A reference for evaluations, not a method. The encoder is pretraining's UnifiedSTGCN with the
same seed and construction (so the same initial weights as its query encoder), its projection
head dropped (pooled hidden_dim features, as head=None), fed the same stream and trained with
cross-entropy of one Linear classifier on those features. Everything
that sets the training budget is pretraining's: the same number of optimiser steps and batch
sizes (`epoch_order`, whose steps_per_epoch depends on passes_per_epoch), the same lr schedule
(`lr_at`) and SGD settings, the same per-step convention (the QUERY side of the pair schedule,
so every convention of the run is trained) and the same augmentation (the "normal" view:
temporal crop + shear with `settings.augment`). The gap between its linear-probe accuracy and
the self-supervised encoder's is therefore a fair ceiling at an equal budget, not a gap
bought with more steps or different augmentations.

The classifier is discarded: the encoder is returned (eval mode, on the CPU) so the caller
evaluates its frozen features with the same linear probe as the self-supervised encoder.
`encoder.supervised_steps` holds the number of optimiser steps taken (for budget checks).
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .augment import normal_view
from .errors import ConfigError, DataError
from .model import UnifiedSTGCN
from .pretrain import PretrainSettings, _mix, build_optimizer, epoch_order, frozen_encoder, pair_schedule, set_epoch_lr
from .streams import to_stream


def _check_inputs(settings: PretrainSettings, data: dict, labels, num_classes: int) -> torch.Tensor:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not settings.conventions:
        raise ConfigError("conventions: at least one skeleton convention is needed")
    missing = [c for c in settings.conventions if c not in data]
    if missing:
        raise DataError(f"conventions {missing} of the run are missing (data has {sorted(data)})", field="data")
    n = data[settings.conventions[0]].shape[0]
    for c in settings.conventions:
        if data[c].dim() != 5 or data[c].shape[0] != n:
            raise DataError(f"expected N x C x T x V x M with N = {n} (the same clips in every convention), "
                            f"got shape {tuple(data[c].shape)}", field=f"data[{c}]")
    y = torch.as_tensor(labels)
    if y.dim() != 1 or y.shape[0] != n:
        raise DataError(f"expected {n} labels (one per clip), got shape {tuple(y.shape)}", field="labels")
    if torch.is_floating_point(y) or y.dtype == torch.bool:
        raise DataError(f"labels must be integers, got {y.dtype}", field="labels")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]",
                        field="labels")
    if settings.steps_per_epoch(n) < 1:
        raise ConfigError(f"optim.batch_size={settings.optim.batch_size} is larger than one epoch "
                          f"({n} clips x {settings.passes()} passes)")
    return y.long()


def train_supervised(settings: PretrainSettings, data: dict[str, torch.Tensor], labels, num_classes: int, *,
                     device="cpu", log=None) -> UnifiedSTGCN:
    """Train the run's encoder with labels at pretraining's budget; return it (eval, CPU).

    data: {convention: N x C x T x V x M float tensor in metres}, the same N clips in the same
    order for every convention; labels: N ints in [0, num_classes). log(str), if given, gets
    one line per epoch. The returned encoder carries `supervised_steps` (optimiser steps taken).
    """
    y = _check_inputs(settings, data, labels, num_classes)
    device = torch.device(device)
    n = y.shape[0]
    encoder = frozen_encoder(settings).train()  # the initial weights of pretraining's query encoder
    encoder.to(device)
    classifier = torch.nn.Linear(encoder.hidden_dim, int(num_classes)).to(device)
    o = settings.optim
    optimizer = build_optimizer(torch.nn.ModuleList([encoder, classifier]), settings)
    schedule = pair_schedule(settings)
    y_dev = y.to(device)
    encoder.train()
    classifier.train()
    total_steps = 0
    for epoch in range(1, o.epochs + 1):
        set_epoch_lr(optimizer, settings, epoch)
        torch.manual_seed(_mix(settings.seed, epoch, 0, 0x5D))  # dropout masks
        loss_sum = torch.zeros((), device=device)  # on device: no per-step host sync
        correct = torch.zeros((), device=device)
        seen = 0
        for step, idx in enumerate(epoch_order(settings, n, epoch)):
            conv = schedule.pair(epoch, step)[0]  # the query side: pretraining's convention draw
            gen = torch.Generator(device=device).manual_seed(_mix(settings.seed, epoch, step, 0x5C))
            x = data[conv][idx.to(data[conv].device)].to(device, non_blocking=True).float()
            x = to_stream(normal_view(x, conv, gen, settings.augment), conv, settings.stream)
            logits = classifier(encoder.features(x, conv))
            target = y_dev[idx.to(device)]
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == target).sum()
            seen += len(idx)
            total_steps += 1
        mean_loss, train_acc = loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"non-finite supervised loss at epoch {epoch}: {mean_loss}")
        if log is not None:
            log(f"supervised epoch {epoch}/{o.epochs} loss {mean_loss:.3f} acc {train_acc:.3f}")
    encoder = encoder.cpu().eval()
    encoder.supervised_steps = total_steps
    return encoder
