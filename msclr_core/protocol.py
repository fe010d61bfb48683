"""The evaluation protocol: one entry point that says whether a representation is any good.

    report = evaluate_encoder(encoder, data, labels, num_classes, EvalSettings(), label="msclr")
    report.rows += evaluate_references(data, labels, num_classes, settings, random_encoder=...).rows

An accuracy means little alone, so every evaluation can carry, on the same split and probe:
- `raw`: a linear classifier on the preprocessed input clip itself (flattened), the floor a
  representation must beat. The floor is not under-read: it is the better, ON VALIDATION, of
  the encoders' probe and a closed-form ridge classifier whose l2 is chosen on validation.
- `random-init`: the encoder at initialisation. Its raw features are tiny and badly scaled,
  so an unstandardised probe at the paper's lr collapses to one class; the default probe
  standardises features with training statistics and picks its lr on validation, so a
  random encoder gets a fair read (kNN, scale-free, agrees).
- `supervised` (msclr_core.supervised): the same encoder trained with labels, the ceiling.

Two probes (ProbeSettings):
- "standard" (default): features z-scored with training statistics, lr picked on a validation
  split from a small grid, then refit on the whole training split. Robust to feature scale,
  which differs by orders of magnitude between encoders, training lengths and raw input.
- "paper": the official probe (raw features, SGD lr 3.0, 100 epochs, step at 80), for
  comparisons with published numbers.

Choices are made on a validation split: the dataset's own `val` part when it has one,
otherwise a seeded, class-stratified `val_fraction` of the training split (used only to
choose; the reported probe is refit on the full training split). Reported numbers: the last
epoch (honest, default), the test accuracy at the best validation epoch (only with a real
val split), and the best test epoch, labelled `test_selected` (test-set model selection, what
the paper reports). A probe that predicts one class for (almost) everything is flagged
`collapsed` instead of passing for an accuracy.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from . import evaluation as E
from .errors import ConfigError

PROBES = ("standard", "paper")


@dataclass
class ProbeSettings:
    name: str = "standard"
    epochs: int = 100
    lr: float = 3.0  # the paper probe's lr; "standard" picks one from lr_grid on validation
    lr_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])
    milestones: list[int] = field(default_factory=lambda: [80])
    batch_size: int = 128

    def __post_init__(self):
        if self.name not in PROBES:
            raise ConfigError(f"probe must be one of {PROBES}, got {self.name!r}")
        if not self.lr_grid or any(lr <= 0 for lr in self.lr_grid) or self.lr <= 0:
            raise ConfigError(f"probe learning rates must be > 0, got lr={self.lr}, lr_grid={self.lr_grid}")

    @property
    def standardize(self) -> bool:
        return self.name == "standard"


PAPER_PROBE = ProbeSettings(name="paper", epochs=100, lr=3.0, milestones=[80])


@dataclass
class EvalSettings:
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    knn_k: int = 20
    ensemble: bool = True  # per-convention heads, averaged logits
    val_fraction: float = 0.2  # held out of train for choices when there is no val split
    ridge_l2: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])  # x mean diag(XX^T)
    raw_max_train: int = 4000  # ridge on raw clips is O(n^2 d): a seeded subset beyond this
    feature_batch: int = 256
    seed: int = 0


# ---------------------------------------------------------------------------- helpers


def holdout(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified (fit, val) index split of range(len(labels)); val has >= 1 per class
    with >= 2 members. Seeded: the same split for every model compared."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        if len(members) >= 2:
            val.extend(members[: max(1, int(round(fraction * len(members))))])
    val = np.sort(np.asarray(val, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), val), val


def collapsed(logits, min_share: float = 0.9) -> bool:
    """True when one class takes >= min_share of all predictions (a probe that learned a
    constant). Only meaningful when the test labels are not that concentrated."""
    pred = torch.as_tensor(logits).argmax(1)
    return pred.bincount().max().item() >= min_share * len(pred)


def flatten_clips(x) -> torch.Tensor:
    """N x C x T x V x M clips -> N x (C*T*V*M) float32: the raw-input 'features'."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return x.reshape(len(x), -1)


def _ridge_logits(train, train_y, others: list, num_classes: int, l2s: list[float]) -> list[list[torch.Tensor]]:
    """Closed-form ridge classifier (one-vs-all on +-1 targets, like scikit-learn's
    RidgeClassifier) on z-scored features, solved in the dual with one eigendecomposition for
    every l2 (relative to the mean of diag(XX^T)). Returns, per l2, the logits of each of `others`."""
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    xs = ((train - mean) / std).double()
    targets = torch.full((len(xs), num_classes), -1.0, dtype=torch.float64)
    targets[torch.arange(len(xs)), torch.as_tensor(train_y)] = 1.0
    offset = targets.mean(0)
    evals, evecs = torch.linalg.eigh(xs @ xs.T)
    proj = evecs.T @ (targets - offset)
    cross = [((o - mean) / std).double() @ xs.T @ evecs for o in others]  # n_other x n in the eigenbasis
    scale = float(evals.clamp_min(0).sum()) / len(xs)
    return [[(c @ (proj / (evals.clamp_min(0) + l2 * scale)[:, None]) + offset).float() for c in cross] for l2 in l2s]


# ---------------------------------------------------------------------------- probing


def fit_probe(train, train_y, test, test_y, num_classes: int, probe: ProbeSettings, *, val=None, choose=None,
              seed: int = 0, device=None, score_fixed: bool = False) -> E.ProbeResult:
    """Linear probe(s) on cached features under `probe`.

    train/test (and val[0]) are N x D tensors, or dicts convention -> N x D for an ensemble.
    val=(feats, y) is a real validation split (best-on-val reporting). choose=(fit_idx, val_idx)
    are rows of train used only for choices when there is no val split. The result's
    protocol["val_top1"] is the validation accuracy of the probe that is reported (None for a
    fixed-lr probe without a val split unless score_fixed).
    """
    ensemble = isinstance(train, dict)
    run = E.ensemble_probe if ensemble else E.linear_probe
    common = dict(epochs=probe.epochs, milestones=tuple(probe.milestones), batch_size=probe.batch_size,
                  standardize=probe.standardize, seed=seed, device=device)
    if probe.name == "standard" and val is not None:
        # A real val split: each candidate trains on all of train, so the best one is the result.
        runs = {lr: run(train, train_y, test, test_y, num_classes, lr=lr, val=val, **common) for lr in probe.lr_grid}
        scores = {lr: r.history[-1]["val_top1"] for lr, r in runs.items()}
        res = runs[max(probe.lr_grid, key=lambda c: (scores[c], -c))]  # ties: the smaller lr
    else:
        scores = {}
        if val is None and (probe.name == "standard" or score_fixed):  # choose (or score) on held-out train rows
            fit, held = choose
            take = (lambda f, i: {k: v[i] for k, v in f.items()}) if ensemble else (lambda f, i: f[i])
            for cand in probe.lr_grid if probe.name == "standard" else [probe.lr]:
                out = run(take(train, fit), train_y[fit], take(train, held), train_y[held], num_classes, lr=cand,
                          **common)
                scores[cand] = E.topk_accuracy(out.test_logits, train_y[held], 1)
        lr = max(scores, key=lambda c: (scores[c], -c)) if probe.name == "standard" else probe.lr
        res = run(train, train_y, test, test_y, num_classes, lr=lr, val=val, **common)  # refit on all of train
    lr = res.protocol["lr"]
    val_top1 = res.history[-1]["val_top1"] if val is not None else scores.get(lr)
    res.protocol.update(probe=probe.name, lr_chosen_on="validation" if probe.name == "standard" else "fixed",
                        lr_scores={str(k): round(v, 4) for k, v in scores.items()}, val_top1=val_top1)
    return res


def _row(label: str, conv: str, res: E.ProbeResult, knn: float) -> dict:
    row = {"model": label, "convention": conv, "linear_top1": res.top1, "linear_top5": res.top5, "knn_top1": knn,
           "collapsed": collapsed(res.test_logits), "probe": res.protocol["probe"], "probe_lr": res.protocol["lr"],
           "test_selected_top1": max(h["test_top1"] for h in res.history), "val_top1": res.protocol["val_top1"]}
    if res.best_val_epoch is not None:
        row.update(best_val_epoch=res.best_val_epoch, test_top1_at_best_val=res.test_top1_at_best_val)
    if row["collapsed"]:
        warnings.warn(f"{label} / {conv}: the linear probe predicts one class for >= 90% of the test clips "
                      f"(collapsed); its accuracy {res.top1:.3f} is not a measurement of the features", stacklevel=3)
    return row


@dataclass
class EvalReport:
    rows: list[dict]  # model, convention (or "ensemble"), linear_top1/top5, knn_top1, collapsed, probe...
    protocol: dict
    test_labels: np.ndarray
    test_logits: dict[str, np.ndarray] = field(default_factory=dict)  # "<model>/<convention>" -> N x classes
    selected_logits: dict[str, np.ndarray] = field(default_factory=dict)  # same keys, best TEST epoch (labelled)

    def row(self, model: str, convention: str) -> dict:
        return next(r for r in self.rows if r["model"] == model and r["convention"] == convention)

    def extend(self, other: "EvalReport") -> "EvalReport":
        self.rows += other.rows
        self.test_logits.update(other.test_logits)
        self.selected_logits.update(other.selected_logits)
        return self


def evaluate_features(feats: dict, labels: dict, num_classes: int, settings: EvalSettings, label: str, *,
                      device=None, score_fixed: bool = False) -> EvalReport:
    """Probe + kNN per convention, and the ensemble, on cached features.

    feats: part ("train", "test", optional "val") -> convention -> N x D; labels: part -> N.
    """
    s = settings
    y = {part: torch.as_tensor(np.asarray(v)).long() for part, v in labels.items()}
    val = "val" in feats
    choose = None if val else holdout(y["train"].numpy(), s.val_fraction, s.seed)
    convs = list(feats["train"])
    rows, logits, selected = [], {}, {}

    def probe(pick, score):  # pick(part) -> the features of one convention, or the dict of all
        return fit_probe(pick("train"), y["train"], pick("test"), y["test"], num_classes, s.probe,
                         val=(pick("val"), y["val"]) if val else None, choose=choose, seed=s.seed, device=device,
                         score_fixed=score)

    for c in convs:
        res = probe(lambda part: feats[part][c], score_fixed)
        knn = E.knn_accuracy(feats["train"][c], y["train"], feats["test"][c], y["test"], k=s.knn_k,
                             num_classes=num_classes)
        rows.append(_row(label, c, res, knn))
        logits[f"{label}/{c}"] = res.test_logits.numpy()
        selected[f"{label}/{c}"] = res.test_selected_logits.numpy()
    if s.ensemble and len(convs) > 1:
        res = probe(lambda part: feats[part], False)
        rows.append(_row(label, "ensemble", res, float("nan")))
        logits[f"{label}/ensemble"] = res.test_logits.numpy()
        selected[f"{label}/ensemble"] = res.test_selected_logits.numpy()
    protocol = {"probe": asdict(s.probe), "knn_k": s.knn_k, "choices_on": "val split" if val else
                f"{s.val_fraction:.0%} of train (stratified, seed {s.seed}), refit on all of train",
                "reported_epoch": "last", "also_reported": ["test_selected_top1 (best test epoch: test-set selection)"]
                + (["test_top1_at_best_val"] if val else []), "standardized": s.probe.standardize,
                "train_samples": len(y["train"]), "test_samples": len(y["test"])}
    return EvalReport(rows, protocol, y["test"].numpy(), logits, selected)


def encode(encoder, data: dict, stream: str, settings: EvalSettings, device=None) -> dict:
    """part -> convention -> frozen pooled features (eval mode, extracted once)."""
    return {part: {c: E.extract_features(encoder, x, c, stream, settings.feature_batch, device)
                   for c, x in arrays.items()} for part, arrays in data.items()}


def evaluate_encoder(encoder, data: dict, labels: dict, num_classes: int, settings: EvalSettings | None = None, *,
                     label: str = "pretrained", stream: str = "joint", device=None) -> EvalReport:
    """The protocol on a frozen encoder. data: part -> convention -> N x C x T x V x M (metres)."""
    settings = settings or EvalSettings()
    return evaluate_features(encode(encoder, data, stream, settings, device), labels, num_classes, settings, label,
                             device=device)


def evaluate_raw(data: dict, labels: dict, num_classes: int, settings: EvalSettings, device=None) -> EvalReport:
    """The `raw` reference: the input clip itself, per convention (no ensemble row).

    Two linear readers compete on validation (never on test): the encoders' probe on the
    flattened clip, and a ridge classifier with l2 from settings.ridge_l2. The row reports the
    test accuracy of the one that is better on validation, and names it in `probe`."""
    s = replace(settings, ensemble=False)
    y = {part: np.asarray(v) for part, v in labels.items()}
    keep = np.arange(len(y["train"]))
    if len(keep) > s.raw_max_train:
        keep = np.sort(np.random.default_rng(s.seed).choice(keep, s.raw_max_train, replace=False))
    y["train"] = y["train"][keep]
    flat = {part: {c: flatten_clips(x if part != "train" else np.asarray(x)[keep]) for c, x in arrays.items()}
            for part, arrays in data.items()}
    report = evaluate_features(flat, y, num_classes, s, "raw", device=device, score_fixed=True)
    val = "val" in flat
    fit, held = (None, None) if val else holdout(y["train"], s.val_fraction, s.seed)
    for row in report.rows:
        c = row["convention"]
        tr, ty = flat["train"][c], torch.as_tensor(y["train"])
        if val:  # l2 chosen on the val split; the same solve gives the test logits
            outs = _ridge_logits(tr, ty, [flat["val"][c], flat["test"][c]], num_classes, s.ridge_l2)
            val_y = torch.as_tensor(y["val"])
        else:
            outs = _ridge_logits(tr[fit], ty[fit], [tr[held]], num_classes, s.ridge_l2)
            val_y = ty[held]
        val_acc = [E.topk_accuracy(out[0], val_y, 1) for out in outs]
        best = int(np.argmax(val_acc))
        probe_val = row["val_top1"]
        if val_acc[best] > probe_val:
            test_logits = (outs[best][1] if val else  # refit on all of train with the chosen l2
                           _ridge_logits(tr, ty, [flat["test"][c]], num_classes, [s.ridge_l2[best]])[0][0])
            yt = torch.as_tensor(y["test"])
            row.update(linear_top1=E.topk_accuracy(test_logits, yt, 1), linear_top5=E.topk_accuracy(test_logits, yt, 5),
                       probe=f"ridge(l2={s.ridge_l2[best]:g})", probe_lr=None, collapsed=collapsed(test_logits),
                       test_selected_top1=None, val_top1=val_acc[best])
            for key in ("best_val_epoch", "test_top1_at_best_val"):  # epochs of the probe, not the ridge
                row.pop(key, None)
            report.test_logits[f"raw/{c}"] = test_logits.numpy()
            report.selected_logits.pop(f"raw/{c}", None)  # a closed-form solve has no epochs to select
        row["raw_val_scores"] = {"probe": round(probe_val, 4), "ridge": round(val_acc[best], 4)}
    report.protocol["raw_train_samples"] = len(keep)
    return report

