"""The learning study: where does MS-CLR start to work? (`msclr bench learning`)

For each seed, MS-CLR (the config's conventions) and the single-skeleton baseline (its first
convention) are pretrained with the SAME number of optimiser steps (the config's fixed
`optim.passes_per_epoch`), in this process with the core loop (no Ray: the study is about the
method, not the platform), and evaluated with the core protocol at every budget. With a
constant learning rate (the quickstart schedule) the E-epoch model is exactly the first E
epochs of the longest run, since every random draw of training is keyed by (seed, epoch,
step): one run per (model, seed) gives the whole curve. The references are the same probe
on the raw input, on the random-init encoder (per seed) and on the supervised encoder at
the largest budget (per seed). Each point is the mean over seeds (pretraining and probe
seed) with its standard deviation; two curves differ only where the gap exceeds the sum of
their spreads. Representation health and the BN-statistics mismatch per convention (msclr_core.diagnostics)
are recorded at every budget.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from msclr_core import protocol as P
from msclr_core.diagnostics import bn_mismatch, representation_health
from msclr_core.pretrain import build_model, build_optimizer, frozen_encoder, train_epoch
from msclr_core.streams import to_stream
from msclr_core.supervised import train_supervised

from .config import ExperimentConfig


def _point(report: P.EvalReport, label: str, convs: list[str]) -> dict:
    out = {}
    for c in [*convs, "ensemble"]:
        row = next((r for r in report.rows if r["model"] == label and r["convention"] == c), None)
        if row is not None:
            out[f"linear_top1.{c}"], out[f"knn_top1.{c}"] = row["linear_top1"], row["knn_top1"]
            out[f"collapsed.{c}"] = row["collapsed"]
    return out


def run_study(cfg: ExperimentConfig, data: dict, labels: dict, num_classes: int, *, budgets: list[int],
              seeds: list[int], models: tuple[str, ...] = ("msclr", "single"), references: bool = True,
              log=print, on_point=None) -> dict:
    """data/labels as msclr_platform.evaluate.load_eval_data gives them. Returns the raw points
    (one per model, seed and budget), the references and the per-budget summary. For an A/B of
    one setting, `models=("msclr",), references=False` trains only what the A/B changes."""
    budgets = sorted(set(budgets))
    if budgets[0] < 0:
        raise ValueError(f"budgets are epochs >= 0, got {budgets[0]}")
    if cfg.optim.lr_decay_epochs and min(cfg.optim.lr_decay_epochs) < budgets[-1]:
        raise ValueError("the study reads budgets off one run: use a constant learning rate "
                         f"(optim.lr_decay_epochs beyond {budgets[-1]})")
    settings_eval = cfg.eval.settings()
    models = {m: {"msclr": list(cfg.conventions), "single": list(cfg.conventions[:1])}[m] for m in models}
    train = {c: torch.from_numpy(x) for c, x in data["train"].items()}
    points, refs = [], {"raw": [], "random-init": [], "supervised": []}
    if references:
        raw = P.evaluate_raw(data, labels, num_classes, settings_eval)
        refs["raw"].append(raw.row("raw", cfg.conventions[0])["linear_top1"])
    for seed in seeds:
        ev = dataclasses.replace(settings_eval, seed=seed)
        base = dataclasses.replace(cfg, seed=seed, optim=dataclasses.replace(cfg.optim, epochs=budgets[-1]))
        if references:
            _seed_references(refs, base, data, labels, num_classes, ev, train)
        for model, convs in models.items():
            s = dataclasses.replace(base, conventions=convs).pretrain_settings()
            net = build_model(s)
            opt = build_optimizer(net, s)
            t0 = time.perf_counter()
            stats = {"steps": 0, "loss": None, "acc": None}  # budget 0: the initial encoder
            for epoch in range(0 if 0 in budgets else 1, budgets[-1] + 1):
                if epoch:
                    stats = train_epoch(net, opt, {c: train[c] for c in convs}, s, epoch)
                if epoch not in budgets:
                    continue
                sub = {part: {c: arrays[c] for c in convs} for part, arrays in data.items()}
                encoder = frozen_encoder(s, net.state_dict())
                feats = P.encode(encoder, sub, cfg.stream, ev)  # once: probe and health
                rep = P.evaluate_features(feats, labels, num_classes, ev, model)
                bn = {k: v for c in convs for k, v in bn_mismatch(
                    encoder, to_stream(torch.as_tensor(data["test"][c][:256]), c, cfg.stream), c).items()}
                point = {"model": model, "seed": seed, "epochs": epoch, "steps": stats["steps"] * epoch,
                         "loss": stats["loss"], "instance_acc": stats["acc"], "train_s": time.perf_counter() - t0,
                         **_point(rep, model, convs), **representation_health(feats["test"]), **bn}
                points.append(point)
                log(f"learning: {model} seed {seed} epoch {epoch}: linear top-1 "
                    f"{point[f'linear_top1.{convs[0]}']:.3f}, loss {stats['loss']}")
                if on_point is not None:
                    on_point(point)
    return {"points": points, "references": refs, "summary": summarize(points, refs, cfg.conventions[0]),
            "budgets": budgets, "seeds": seeds, "conventions": list(cfg.conventions)}


def select_on_val(cfg: ExperimentConfig) -> ExperimentConfig:
    """The study for choosing settings: protocol P becomes P_val (train minus the held-out
    subjects), and its `val` part is evaluated in place of the test part, which no step of
    the study then reads. Settings chosen this way are reported on the test part afterwards."""
    protocol = cfg.data.protocol if cfg.data.protocol.endswith("_val") else f"{cfg.data.protocol}_val"
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, protocol=protocol, test_part="val", val_part=None))


def _seed_references(refs: dict, base: ExperimentConfig, data, labels, num_classes, ev, train) -> None:
    """The random-init and supervised references of one seed (same split and probe)."""
    conv, stream = base.conventions[0], base.stream
    rand = P.evaluate_encoder(frozen_encoder(base.pretrain_settings()), data, labels, num_classes, ev,
                              label="random-init", stream=stream)
    refs["random-init"].append(rand.row("random-init", conv)["linear_top1"])
    sup = train_supervised(base.pretrain_settings(), train, labels["train"], num_classes)
    report = P.evaluate_encoder(sup, data, labels, num_classes, ev, label="supervised", stream=stream)
    refs["supervised"].append(report.row("supervised", conv)["linear_top1"])


def _stat(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(points: list[dict], refs: dict, conv: str) -> list[dict]:
    """Per budget: mean/std over seeds of each model's linear top-1 on `conv` (and MS-CLR's
    ensemble), and whether MS-CLR and the single-skeleton model differ beyond their spread."""
    rows = []
    for epochs in sorted({p["epochs"] for p in points}):
        at = [p for p in points if p["epochs"] == epochs]
        row = {"epochs": epochs, "steps": at[0]["steps"]}
        for model, key in (("msclr", f"linear_top1.{conv}"), ("msclr_ensemble", "linear_top1.ensemble"),
                           ("single", f"linear_top1.{conv}")):
            vals = [p[key] for p in at if p["model"] == model.split("_")[0] and key in p]
            if vals:
                row[model] = _stat(vals)
        if "msclr" in row and "single" in row:
            gap = row["msclr"]["mean"] - row["single"]["mean"]
            row["msclr_minus_single"] = gap
            row["verdict"] = ("no difference" if abs(gap) <= row["msclr"]["std"] + row["single"]["std"]
                              else "MS-CLR better" if gap > 0 else "single skeleton better")
        rows.append(row)
    for name, vals in refs.items():
        for row in rows:
            row[name] = _stat(vals) if vals else None
    return rows
