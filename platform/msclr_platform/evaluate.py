"""Evaluation of a pretrained run: the core protocol (msclr_core.protocol) on the run's data.

This module only loads what the protocol needs (splits, the frozen encoder, the references
the config asks for); the probe, kNN, ensemble, collapse detection and every choice made on
validation live in the core. Test accuracy is never used to pick anything; the best test
epoch is reported only as the labelled `test_selected_top1` (what the paper's numbers are).
"""

from __future__ import annotations

import numpy as np
import torch

from msclr_core import protocol as P
from msclr_core.pretrain import frozen_encoder
from msclr_core.supervised import train_supervised

from .config import ExperimentConfig
from .data import dataset_for, load_split


def encoder_from_state(cfg: ExperimentConfig, state: dict | None):
    """The frozen query encoder of an MSCLR state_dict (None: the run's initial weights)."""
    return frozen_encoder(cfg.pretrain_settings(), state)


def load_eval_data(cfg: ExperimentConfig, ds=None) -> tuple[dict, dict, int]:
    """(part -> convention -> clips, part -> labels, number of classes); parts train, test, [val]."""
    ds = ds or dataset_for(cfg)
    parts = {"train": cfg.data.train_part, "test": cfg.data.test_part}
    if cfg.data.val_part and cfg.data.val_part in ds.splits[cfg.data.protocol]:
        parts["val"] = cfg.data.val_part
    splits = {name: load_split(cfg, part, ds=ds) for name, part in parts.items()}
    return ({n: s.arrays for n, s in splits.items()}, {n: s.labels for n, s in splits.items()},
            splits["train"].num_classes)


def evaluate_run(cfg: ExperimentConfig, state: dict | None, *, label: str = "pretrained", references=None,
                 device: str | torch.device = "cpu", log=print, ds=None) -> P.EvalReport:
    """The protocol on the run's encoder plus the references (default: cfg.eval.references).
    `ds`: the run's Dataset when the caller has it open."""
    data, labels, k = load_eval_data(cfg, ds)
    settings = cfg.eval.settings(cfg.seed)
    args = dict(stream=cfg.stream, device=device)
    report = P.evaluate_encoder(encoder_from_state(cfg, state), data, labels, k, settings, label=label, **args)
    refs = cfg.eval.references if references is None else references
    if "raw" in refs:
        report.extend(P.evaluate_raw(data, labels, k, settings, device=device))
    if "random-init" in refs:
        report.extend(P.evaluate_encoder(encoder_from_state(cfg, None), data, labels, k, settings,
                                         label="random-init", **args))
    if "supervised" in refs:
        train = {c: torch.from_numpy(x) for c, x in data["train"].items()}
        encoder = train_supervised(cfg.pretrain_settings(), train, labels["train"], k, device=device, log=log)
        report.extend(P.evaluate_encoder(encoder, data, labels, k, settings, label="supervised", **args))
    report.protocol.update(stream=cfg.stream, references=list(refs))
    return report


def collapsed_rows(report: P.EvalReport) -> list[str]:
    return [f"{r['model']}/{r['convention']}" for r in report.rows if r["collapsed"]]


def results_table(report: P.EvalReport):
    import pandas as pd

    return pd.DataFrame(report.rows).set_index(["model", "convention"])


def primary_logits(report: P.EvalReport, label: str) -> tuple[str, np.ndarray]:
    """The pretrained model's ensemble logits when there is one, else its first convention's."""
    keys = [k for k in report.test_logits if k.startswith(f"{label}/")]
    key = f"{label}/ensemble" if f"{label}/ensemble" in keys else keys[0]
    return key, report.test_logits[key]


def primary_top1(report, label: str = "pretrained") -> float:
    """The evaluated encoder's headline number: its ensemble when it has one, else its first convention."""
    rows = [r for r in report.rows if r["model"] == label]
    return next((r for r in rows if r["convention"] == "ensemble"), rows[0])["linear_top1"]
