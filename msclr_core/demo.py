"""Core-only demo and learning check: MS-CLR on the synthetic benchmark, one process.

Pretrains a small unified ST-GCN on two skeleton conventions for a few epochs, then
compares the frozen encoder's linear-probe accuracy with a randomly initialised one.
Used by `msclr demo` and by tests/test_learning.py (no Ray, no MLflow).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import protocol as P
from .data.dataset import load_dataset
from .data.synth import write_synth_dataset
from .pretrain import MethodSettings, ModelSettings, OptimSettings, PretrainSettings, build_model, build_optimizer, train_epoch, validate


@dataclass
class DemoSettings:
    clips: int = 1200
    seed: int = 0
    protocol: str = "xsub"
    pretrain: PretrainSettings = field(
        default_factory=lambda: PretrainSettings(
            conventions=["ntu-rgb+d", "smplx_42"],
            model=ModelSettings(hidden_channels=8, hidden_dim=64, num_blocks=4, dropout=0.1, head="mlp_bn"),
            # a CPU-sized run is ~100 steps: the key encoder must follow within tens of steps
            method=MethodSettings(feature_dim=64, queue_size=1024, temperature=0.1, mining_epoch=1000, momentum=0.99),
            optim=OptimSettings(epochs=5, batch_size=64, lr=0.05, lr_decay_epochs=[1000], passes_per_epoch=2),
        )
    )
    probe_epochs: int = 60


def probe_accuracy(encoder, ds, protocol: str, conv: str, stream: str, epochs: int, seed: int) -> float:
    """Linear top-1 of the frozen encoder on the test split under the evaluation protocol's
    standard probe (msclr_core.protocol: standardised features, lr chosen on validation)."""
    parts = {p: ds.split_indices(protocol, p) for p in ("train", "test")}
    data = {p: {conv: ds.load(conv, idx, unit="m")} for p, idx in parts.items()}
    labels = {p: ds.labels[idx] for p, idx in parts.items()}
    settings = P.EvalSettings(probe=P.ProbeSettings(epochs=epochs, milestones=[int(epochs * 0.75)]), seed=seed)
    report = P.evaluate_encoder(encoder, data, labels, len(ds.classes), settings, label="demo", stream=stream)
    return report.row("demo", conv)["linear_top1"]


def run_demo(settings: DemoSettings | None = None, data_dir: str | Path | None = None, log=print) -> dict:
    s = settings or DemoSettings()
    p = s.pretrain
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(data_dir or Path(tmp) / "synth")
        if not (root / "manifest.json").exists():
            write_synth_dataset(root, clips=s.clips, seed=s.seed, conventions=p.conventions)
        ds = load_dataset(root)
        train_idx = ds.split_indices(s.protocol, "train")
        data = {c: torch.from_numpy(ds.load(c, train_idx, unit="m")) for c in p.conventions}
        validate(p, len(train_idx))
        model = build_model(p)
        conv = p.conventions[0]
        random_top1 = probe_accuracy(model.encoder_q, ds, s.protocol, conv, p.stream, s.probe_epochs, s.seed)
        optimizer = build_optimizer(model, p)
        t0 = time.perf_counter()
        for epoch in range(1, p.optim.epochs + 1):
            stats = train_epoch(model, optimizer, data, p, epoch)
            log(f"epoch {epoch}/{p.optim.epochs} loss {stats['loss']:.3f} {stats['samples_per_s']:.0f} samples/s")
        train_s = time.perf_counter() - t0
        trained_top1 = probe_accuracy(model.encoder_q, ds, s.protocol, conv, p.stream, s.probe_epochs, s.seed)
    return {"random_init_top1": random_top1, "pretrained_top1": trained_top1,
            "gain": trained_top1 - random_top1, "train_seconds": train_s}  # fmt: skip
