"""Evaluation of a pretrained encoder: linear probe, kNN, multi-skeleton ensemble.

Features are extracted once from the frozen encoder (eval mode) and cached; the linear
heads train on the cache. The reported number is the LAST epoch's test accuracy; when a
validation split exists, the test accuracy at the best validation epoch is reported too.
Test accuracy is never used to pick an epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from msclr_core import evaluation as E
from msclr_core.model import UnifiedSTGCN

from .config import ExperimentConfig
from .data import dataset_for, load_split


@dataclass
class EvalReport:
    rows: list[dict]  # one per convention + "ensemble": linear_top1, linear_top5, knn_top1
    protocol: dict
    test_labels: np.ndarray
    test_logits: dict[str, np.ndarray] = field(default_factory=dict)  # per convention + ensemble
    class_names: list[str] = field(default_factory=list)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("convention")

    def top1(self, which: str | None = None) -> float:
        row = self.rows[-1] if which is None else next(r for r in self.rows if r["convention"] == which)
        return row["linear_top1"]


def encoder_from_state(cfg: ExperimentConfig, state: dict | None) -> UnifiedSTGCN:
    """The frozen query encoder without its projection head (random init when state is None)."""
    torch.manual_seed(cfg.seed)
    encoder = UnifiedSTGCN(cfg.conventions, head=None, **asdict(cfg.model))
    if state is not None:
        prefix = "encoder_q."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        own = encoder.state_dict()
        weights = {k: v for k, v in weights.items() if k in own}  # drops the MLP head
        missing = sorted(set(own) - set(weights))
        if missing:
            raise KeyError(f"checkpoint lacks encoder weights: {missing[:5]}")
        encoder.load_state_dict(weights)
    return encoder.eval()


def evaluate_encoder(cfg: ExperimentConfig, state: dict | None, device: str | torch.device = "cpu") -> EvalReport:
    ds = dataset_for(cfg)
    encoder = encoder_from_state(cfg, state).to(device)
    parts = {"train": cfg.data.train_part, "test": cfg.data.test_part}
    if cfg.data.val_part and cfg.data.val_part in ds.splits[cfg.data.protocol]:
        parts["val"] = cfg.data.val_part
    splits = {name: load_split(cfg, part, ds=ds) for name, part in parts.items()}
    feats = {
        name: {c: E.extract_features(encoder, s.arrays[c], c, cfg.stream, cfg.eval.batch_size, device) for c in cfg.conventions}
        for name, s in splits.items()
    }  # fmt: skip
    y = {name: torch.as_tensor(s.labels) for name, s in splits.items()}
    k = splits["train"].num_classes
    probe = dict(
        epochs=cfg.eval.linear_epochs, lr=cfg.eval.linear_lr, milestones=tuple(cfg.eval.linear_milestones),
        batch_size=cfg.eval.linear_batch_size, seed=cfg.seed,
    )  # fmt: skip
    rows, logits = [], {}
    for c in cfg.conventions:
        val = (feats["val"][c], y["val"]) if "val" in feats else None
        res = E.linear_probe(feats["train"][c], y["train"], feats["test"][c], y["test"], k, val=val, **probe)
        knn = E.knn_accuracy(feats["train"][c], y["train"], feats["test"][c], y["test"], k=cfg.eval.knn_k, num_classes=k)
        rows.append(_row(c, res, knn))
        logits[c] = res.test_logits.numpy()
    if cfg.eval.ensemble and len(cfg.conventions) > 1:
        ens = E.ensemble_probe(feats["train"], y["train"], feats["test"], y["test"], k, **probe)
        rows.append({"convention": "ensemble", "linear_top1": ens.top1, "linear_top5": ens.top5, "knn_top1": float("nan")})
        logits["ensemble"] = ens.test_logits.numpy()
    protocol = {
        "frozen": True, "features_cached": True, "reported_epoch": "last",
        "best_on_validation": "val" in feats, "stream": cfg.stream, **{f"linear_{k_}": v for k_, v in probe.items()},
        "knn_k": cfg.eval.knn_k, "train_samples": len(y["train"]), "test_samples": len(y["test"]),
    }  # fmt: skip
    return EvalReport(rows, protocol, splits["test"].labels, logits, list(ds.classes))


def _row(conv: str, res, knn: float) -> dict:
    row = {"convention": conv, "linear_top1": res.top1, "linear_top5": res.top5, "knn_top1": knn}
    if res.best_val_epoch is not None:
        row.update(best_val_epoch=res.best_val_epoch, test_top1_at_best_val=res.test_top1_at_best_val)
    return row
