"""Evaluation of a frozen encoder: features, linear probe, kNN, multi-skeleton ensemble, fusion.

Protocol (spec section 2), with two deliberate changes:
- Features are extracted ONCE from the frozen encoder (eval mode: frozen BN, no dropout) and
  the linear heads train on that cache. The official code re-encodes every epoch; without
  augmentation and with a frozen eval-mode encoder that gives the same features, only slower.
- The reported accuracy is the LAST epoch's. The official code reports the best test epoch
  (test-set model selection, spec section 6 item 12). With a validation split we also report
  the epoch that is best on validation and the test accuracy at that epoch.

Multi-skeleton ensemble: one Linear head per convention on the shared frozen encoder, trained
with the summed loss sum_conv CE as the official; prediction = mean of per-convention logits.
Since the encoder is frozen and the heads share no parameter, the summed loss gives each head
exactly the gradient it would get alone on the same batch order, so "jointly" and
"independently" are the same thing here.

Everything accepts torch tensors or numpy arrays and returns CPU float32 tensors / Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from msclr_core.errors import ConfigError, DataError
from msclr_core.linear_heads import LinearHeads, probe_lr, stack_features
from msclr_core.streams import STREAMS, to_stream

DEFAULT_STREAM_WEIGHTS = {"joint": 0.6, "bone": 0.6, "motion": 0.4}  # AimCLR / MS-CLR 3s fusion


# ---------------------------------------------------------------------------- input checks


def _feats(name: str, f) -> torch.Tensor:
    f = torch.as_tensor(f)
    if f.dim() != 2 or f.shape[0] == 0:
        raise DataError(f"expected a non-empty N x D feature matrix, got shape {tuple(f.shape)}", field=name)
    if not torch.is_floating_point(f):
        f = f.float()
    return f


def _labels(name: str, y, n: int, num_classes: int | None = None) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != n:
        raise DataError(f"expected {n} labels (one per sample), got shape {tuple(y.shape)}", field=name)
    if torch.is_floating_point(y) or y.dtype == torch.bool:
        raise DataError(f"labels must be integers, got {y.dtype}", field=name)
    y = y.long()
    if num_classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]", field=name)
    return y


def _device_of(module: torch.nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------- features


def extract_features(encoder, x, conv: str, stream: str = "joint", batch_size: int = 256,
                     device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Pooled encoder features (N x D, CPU float32) of x (N x C x T x V x M, numpy/memmap/tensor).

    The encoder runs in eval() mode under no_grad; its previous training flag (and device, when
    `device` differs from where it lives) is restored afterwards. The stream is computed per
    batch with the convention's own bones. dtype=torch.bfloat16 runs the encoder under autocast.
    In eval mode every sample is encoded independently, so the batch size changes nothing.
    """
    if stream not in STREAMS:
        raise ConfigError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    if n == 0:
        raise DataError("no samples to encode", field="x")
    home = _device_of(encoder)
    dev = home if device is None else torch.empty(0, device=device).device  # "cuda" -> cuda:0
    was_training = encoder.training
    encoder.to(dev).eval()
    autocast = torch.autocast(dev.type, dtype=dtype or torch.float32,
                              enabled=dtype is not None and dtype != torch.float32)
    out = []
    try:
        with torch.no_grad(), autocast:
            for i in range(0, n, batch_size):
                if torch.is_tensor(x):
                    xb = x[i:i + batch_size].float()
                else:  # copies only this batch out of a (read-only) memory-mapped file
                    xb = torch.from_numpy(np.array(x[i:i + batch_size], dtype=np.float32))
                xb = to_stream(xb.to(dev, non_blocking=True), conv, stream)
                out.append(encoder.features(xb, conv).float().cpu())
    finally:
        encoder.train(was_training)
        encoder.to(home)
    return torch.cat(out)


# ---------------------------------------------------------------------------- metrics


def topk_accuracy(logits, y, k: int = 1) -> float:
    """Fraction of samples whose label is among the k highest logits (k clipped to #classes)."""
    logits = _feats("logits", logits)
    y = _labels("y", y, logits.shape[0], logits.shape[1]).to(logits.device)
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == y[:, None]).any(dim=1).float().mean().item()


def confusion_matrix(pred, y, num_classes: int) -> np.ndarray:
    """num_classes x num_classes int64 counts; row = true label, column = prediction."""
    pred, y = np.asarray(pred).astype(np.int64).ravel(), np.asarray(y).astype(np.int64).ravel()
    if pred.shape != y.shape:
        raise DataError(f"{pred.size} predictions for {y.size} labels", field="pred")
    for name, a in (("pred", pred), ("y", y)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise DataError(f"values must lie in [0, {num_classes})", field=name)
    return np.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def knn_accuracy(train_feats, train_y, test_feats, test_y, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, batch_size: int = 1024) -> float:
    """Top-1 of a cosine-similarity weighted kNN (InstDisc): each of the k nearest training
    samples votes for its class with weight exp(sim / temperature). Chunked over test samples."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"knn needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    train = F.normalize(_feats("train_feats", train_feats).float(), dim=1)
    test = F.normalize(_feats("test_feats", test_feats).float(), dim=1).to(train.device)
    if train.shape[1] != test.shape[1]:
        raise DataError(f"train has D={train.shape[1]}, test has D={test.shape[1]}", field="test_feats")
    train_y = _labels("train_y", train_y, train.shape[0], num_classes).to(train.device)
    num_classes = num_classes or int(train_y.max()) + 1
    test_y = _labels("test_y", test_y, test.shape[0]).to(train.device)
    k = min(k, train.shape[0])
    correct = 0
    for i in range(0, test.shape[0], batch_size):
        sim, idx = (test[i:i + batch_size] @ train.T).topk(k, dim=1)
        weight = ((sim - 1) / temperature).exp()  # shifting by the max similarity (1) keeps exp finite
        votes = torch.zeros(sim.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_y[idx], weight)
        correct += (votes.argmax(1) == test_y[i:i + batch_size]).sum().item()
    return correct / test.shape[0]


# ---------------------------------------------------------------------------- logits fusion


def ensemble_logits(logits: dict) -> torch.Tensor:
    """Soft voting: the mean of per-convention logits (all N x num_classes)."""
    if not logits:
        raise ConfigError("ensemble_logits needs at least one convention's logits")
    ts = [torch.as_tensor(v).float() for v in logits.values()]
    if any(t.shape != ts[0].shape for t in ts):
        raise DataError(f"logits shapes differ: { {k: tuple(t.shape) for k, t in zip(logits, ts)} }", field="logits")
    return torch.stack(ts).mean(0)


def fuse_streams(logits: dict, weights: dict | None = None) -> torch.Tensor:
    """Weighted sum of per-stream logits (default 0.6 joint + 0.6 bone + 0.4 motion, as AimCLR).

    Any subset of streams may be given; weights of absent streams are ignored (not renormalised:
    argmax, hence accuracy, is unaffected by a common scale).
    """
    weights = DEFAULT_STREAM_WEIGHTS if weights is None else weights
    if not logits:
        raise ConfigError("fuse_streams needs at least one stream's logits")
    for name in [*logits, *weights]:
        if name not in STREAMS:
            raise ConfigError(f"unknown stream {name!r}; expected one of {STREAMS}")
    missing = [s for s in logits if s not in weights]
    if missing:
        raise ConfigError(f"no fusion weight for stream(s) {missing}")
    ts = {s: torch.as_tensor(v).float() for s, v in logits.items()}
    shape = next(iter(ts.values())).shape
    if any(t.shape != shape for t in ts.values()):
        raise DataError("per-stream logits have different shapes", field="logits")
    return sum(float(weights[s]) * t for s, t in ts.items())


# ---------------------------------------------------------------------------- linear probe


@dataclass
class ProbeResult:
    top1: float  # test top-1 at the LAST epoch
    top5: float
    test_logits: torch.Tensor  # N_test x num_classes at the last epoch (CPU)
    history: list[dict]  # per evaluation: epoch, train_loss, test_top1, val_top1 (None w/o val)
    protocol: dict
    best_val_epoch: int | None = None  # only with val=...: the evaluation with the best val top-1
    best_val_top1: float | None = None
    test_top1_at_best_val: float | None = None
    # logits of the evaluation with the best TEST top-1 (earliest wins ties): test-set selection,
    # what the paper's numbers and its 3-stream fusion use; labelled wherever it is reported
    test_selected_logits: torch.Tensor | None = None


@dataclass
class EnsembleResult(ProbeResult):
    """ProbeResult of the ensemble (mean logits) plus each convention's own head."""

    per_convention: dict[str, dict[str, float]] = field(default_factory=dict)  # conv -> top1, top5
    convention_logits: dict[str, torch.Tensor] = field(default_factory=dict)


def _standardize(train: dict, others: list[dict]) -> tuple[dict, list[dict]]:
    """z-score every feature dimension with the TRAINING split's mean/std."""
    stats = {k: (f.mean(0), f.std(0).clamp_min(1e-6)) for k, f in train.items()}
    z = lambda d: {k: (f - stats[k][0]) / stats[k][1] for k, f in d.items()}  # noqa: E731
    return z(train), [z(d) for d in others]


def _probe(train: dict, train_y, test: dict, test_y, num_classes: int, *, val, epochs: int, lr: float,
           milestones, momentum: float, weight_decay: float, batch_size: int, eval_every: int,
           seed: int, device, standardize: bool, protocol_extra: dict) -> tuple[ProbeResult, dict]:
    """Train one Linear head per key of `train` (summed CE) and evaluate their mean logits.

    Returns the ProbeResult of the mean logits and the per-key last-epoch test logits.
    """
    if num_classes < 2 or epochs < 1 or batch_size < 1 or eval_every < 1 or lr <= 0:
        raise ConfigError(f"linear probe needs num_classes >= 2, epochs, batch_size, eval_every >= 1 and lr > 0; "
                          f"got {num_classes}, {epochs}, {batch_size}, {eval_every}, lr={lr}")
    keys = list(train)
    if set(test) != set(keys) or (val is not None and set(val[0]) != set(keys)):
        raise ConfigError(f"train/test/val features must cover the same conventions, got {keys} and {list(test)}")
    dev = torch.empty(0, device=device).device if device is not None else torch.device("cpu")
    train = {k: _feats(f"train_feats[{k}]", f).float().to(dev) for k, f in train.items()}
    test = {k: _feats(f"test_feats[{k}]", f).float().to(dev) for k, f in test.items()}
    val_feats = {} if val is None else {k: _feats(f"val_feats[{k}]", f).float().to(dev) for k, f in val[0].items()}
    n = next(iter(train.values())).shape[0]
    for split, d in (("train", train), ("test", test), ("val", val_feats)):
        for k, f in d.items():
            if f.shape[0] != next(iter(d.values())).shape[0] or f.shape[1] != train[k].shape[1]:
                raise DataError(f"{split} features of {k!r} have shape {tuple(f.shape)}", field=f"{split}_feats")
    train_y = _labels("train_y", train_y, n, num_classes).to(dev)
    test_y = _labels("test_y", test_y, next(iter(test.values())).shape[0], num_classes)
    val_y = None if val is None else _labels("val_y", val[1], next(iter(val_feats.values())).shape[0], num_classes)
    if standardize:
        train, (test, val_feats) = _standardize(train, [test, val_feats])

    # Seeded CPU generators (one for the head inits, one for the batch order) make results
    # independent of the global RNG and the device, and give an ensemble's first head the same
    # run as linear_probe alone.
    init_gen, order_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    heads = LinearHeads([train[k].shape[1] for k in keys], num_classes, momentum=momentum,
                        weight_decay=weight_decay, generator=init_gen, device=dev)
    x_train = stack_features([train[k] for k in keys])  # [K, N, D]
    x_test = stack_features([test[k] for k in keys])
    x_val = stack_features([val_feats[k] for k in keys]) if val is not None else None
    del train, test, val_feats  # the loop uses the stacked copies; free any cast or standardised ones
    onehot = torch.eye(num_classes, device=dev)[train_y]

    def per_key(x):
        return dict(zip(keys, heads.logits(x)))

    history, best, selected = [], None, None
    for epoch in range(epochs):
        epoch_lr = probe_lr(lr, milestones, epoch)
        perm = torch.randperm(n, generator=order_gen).to(dev)
        total = torch.zeros((), device=dev)  # summed on device: no host sync per batch
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            total += heads.step(x_train[:, idx], onehot[idx], epoch_lr)
        if (epoch + 1) % eval_every and epoch + 1 != epochs:
            continue
        test_logits = {k: v.cpu() for k, v in per_key(x_test).items()}
        row = {"epoch": epoch + 1, "train_loss": total.item() / n,
               "test_top1": topk_accuracy(ensemble_logits(test_logits), test_y, 1), "val_top1": None}
        if val is not None:
            row["val_top1"] = topk_accuracy(ensemble_logits(per_key(x_val)).cpu(), val_y, 1)
            if best is None or row["val_top1"] > best["val_top1"]:  # earliest best wins ties
                best = row
        history.append(row)
        if selected is None or row["test_top1"] > selected[0]:
            selected = (row["test_top1"], ensemble_logits(test_logits))

    logits = ensemble_logits(test_logits)
    protocol = {"frozen": True, "features_cached": True, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "milestones": list(milestones), "momentum": momentum, "weight_decay": weight_decay,
                "eval_every": eval_every, "standardize": standardize, "seed": seed, "reported_epoch": "last",
                "best_on_validation": val is not None, **protocol_extra}
    result = ProbeResult(top1=topk_accuracy(logits, test_y, 1), top5=topk_accuracy(logits, test_y, 5),
                         test_logits=logits, history=history, protocol=protocol, test_selected_logits=selected[1])
    if best is not None:
        result.best_val_epoch, result.best_val_top1 = best["epoch"], best["val_top1"]
        result.test_top1_at_best_val = best["test_top1"]
    return result, test_logits


def linear_probe(train_feats, train_y, test_feats, test_y, num_classes: int, epochs: int = 100, lr: float = 3.0,
                 milestones=(80,), momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 128,
                 val=None, eval_every: int = 5, seed: int = 0, device=None, standardize: bool = False) -> ProbeResult:
    """Train Linear(D, num_classes) on cached frozen features with SGD; report the LAST epoch.

    val=(val_feats, val_y) adds best_val_epoch / best_val_top1 / test_top1_at_best_val.
    standardize=True z-scores features with the training split's statistics; the default (False)
    feeds raw features as the official protocol does (its lr=3.0 is tuned for raw ST-GCN features).
    """
    val = None if val is None else ({"x": val[0]}, val[1])
    result, _ = _probe({"x": train_feats}, train_y, {"x": test_feats}, test_y, num_classes, val=val, epochs=epochs,
                       lr=lr, milestones=milestones, momentum=momentum, weight_decay=weight_decay,
                       batch_size=batch_size, eval_every=eval_every, seed=seed, device=device,
                       standardize=standardize, protocol_extra={})
    return result


def ensemble_probe(train_feats: dict, train_y, test_feats: dict, test_y, num_classes: int, **probe_kwargs) -> EnsembleResult:
    """Multi-skeleton ensemble: one head per convention (same samples in every convention, same
    order), trained with sum_conv CE; prediction = mean of the per-convention logits.

    probe_kwargs are linear_probe's; val=(dict[conv -> val_feats], val_y) picks the best-val
    epoch of the ensemble.
    """
    settings = dict(epochs=100, lr=3.0, milestones=(80,), momentum=0.9, weight_decay=0.0, batch_size=128,
                    val=None, eval_every=5, seed=0, device=None, standardize=False)
    unknown = set(probe_kwargs) - set(settings)
    if unknown:
        raise ConfigError(f"unknown ensemble_probe option(s) {sorted(unknown)}")
    settings.update(probe_kwargs)
    if not isinstance(train_feats, dict) or not isinstance(test_feats, dict) or not train_feats:
        raise ConfigError("ensemble_probe needs dicts convention -> features (at least one convention)")
    if settings["val"] is not None and not isinstance(settings["val"][0], dict):
        raise ConfigError("ensemble_probe: val must be (dict convention -> val features, val labels)")
    res, conv_logits = _probe(dict(train_feats), train_y, dict(test_feats), test_y, num_classes, **settings,
                              protocol_extra={"ensemble": "mean of per-convention logits",
                                              "loss": "sum of per-convention CE", "conventions": list(train_feats)})
    y = torch.as_tensor(test_y)
    per_conv = {c: {"top1": topk_accuracy(v, y, 1), "top5": topk_accuracy(v, y, 5)} for c, v in conv_logits.items()}
    return EnsembleResult(**vars(res), per_convention=per_conv, convention_logits=conv_logits)
