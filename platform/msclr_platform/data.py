"""Dataset access for experiments: check a config against its dataset, load splits.

dataset_for is how training, evaluation and sweeps open a dataset: it checks the config
against the manifest, that the split parts used are not empty, and that the arrays of the
configured conventions hold no NaN/inf (msclr_core.data.finite: chunked, once per array
file version per process), so bad data fails before Ray or MLflow start, naming the file,
the sample and the convention, instead of as a FloatingPointError an epoch later."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msclr_core.data.dataset import Dataset, load_dataset
from msclr_core.data.finite import require_finite
from msclr_core.errors import ConfigError, DataError

from .config import ExperimentConfig


@dataclass
class Split:
    arrays: dict[str, np.ndarray]  # convention -> N×C×T×V×M float32, metres
    labels: np.ndarray
    indices: np.ndarray  # rows of the dataset
    num_classes: int


def dataset_for(cfg: ExperimentConfig) -> Dataset:
    ds = load_dataset(cfg.data.path)
    missing = [c for c in cfg.conventions if c not in ds.conventions]
    if missing:
        raise ConfigError(
            f"conventions: {missing} not in dataset {cfg.data.path} (it has {sorted(ds.conventions)})"
        )
    if cfg.data.protocol not in ds.splits:
        raise ConfigError(f"data.protocol: {cfg.data.protocol!r} not in dataset {cfg.data.path} (it has {sorted(ds.splits)})")
    parts = ds.splits[cfg.data.protocol]
    for key in ("train_part", "test_part"):
        part = getattr(cfg.data, key)
        if part not in parts:
            raise ConfigError(f"data.{key}: {part!r} not in split {cfg.data.protocol!r} (it has {sorted(parts)})")
        if not len(parts[part]):
            raise DataError(f"data.{key}: split part {part!r} is empty (no samples)", path=ds.root / "manifest.json",
                            field=f"splits.{cfg.data.protocol}.{part}")
    require_finite(ds, cfg.conventions)
    return ds


def split_indices(cfg: ExperimentConfig, ds: Dataset, part: str) -> np.ndarray:
    idx = np.asarray(ds.split_indices(cfg.data.protocol, part))
    cap = cfg.data.max_train_samples if part == cfg.data.train_part else cfg.data.max_test_samples
    if cap and len(idx) > cap:  # a fixed, seeded subset (same on every worker and resume)
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, cap, replace=False))
    return idx


def load_split(cfg: ExperimentConfig, part: str, conventions=None, ds: Dataset | None = None) -> Split:
    ds = ds or dataset_for(cfg)
    idx = split_indices(cfg, ds, part)
    arrays = {c: np.ascontiguousarray(ds.load(c, idx, unit="m"), dtype=np.float32) for c in conventions or cfg.conventions}
    return Split(arrays=arrays, labels=np.asarray(ds.labels)[idx], indices=idx, num_classes=len(ds.classes))
