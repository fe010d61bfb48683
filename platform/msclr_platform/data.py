"""Dataset access for experiments: check a config against its dataset, load splits.

dataset_for is how training, evaluation and sweeps open a dataset: it checks the config
against the manifest, that the split parts used are not empty, that the arrays of the
configured conventions hold no NaN/inf (msclr_core.data.finite: chunked, once per array
file version per process), and that those conventions agree with each other
(`require_consistent`: msclr_core.consistency on 64 clips of the training part, once per
file version per process), so bad data fails before Ray or MLflow start, naming the file,
the sample or the conventions, instead of as a FloatingPointError an epoch later or as an
encoder that silently learns nothing from disagreeing positives. `msclr data check` runs
the full consistency report (commands/data_check.py)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msclr_core.consistency import ConsistencyReport, check_consistency
from msclr_core.data.dataset import Dataset, load_dataset
from msclr_core.data.finite import require_finite
from msclr_core.errors import ConfigError, DataError

from .config import ExperimentConfig

PRETRAIN_CHECK_SAMPLE = 64  # clips of the training part compared per convention pair when training starts
_CONSISTENCY: dict[tuple, ConsistencyReport] = {}  # file versions + what was compared -> report (this process)
_WARNED: set[tuple] = set()


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
    require_consistent(cfg, ds)
    return ds


def _version(path: Path) -> tuple:
    st = os.stat(path)
    return str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def training_consistency(cfg: ExperimentConfig, ds: Dataset) -> ConsistencyReport | None:
    """The cheap consistency check of training: cfg.conventions only, PRETRAIN_CHECK_SAMPLE
    seeded clips of the protocol's training part. None with fewer than two conventions.
    Cached per process by the versions of the manifest and the arrays compared, so Ray
    workers and repeated opens pay one stat per file."""
    convs = list(cfg.conventions)
    if len(convs) < 2:
        return None
    files = [ds.root / "manifest.json"] + [ds.root / ds.conventions[c].file for c in convs]
    key = (tuple(_version(p) for p in files), tuple(convs), cfg.data.protocol, cfg.data.train_part)
    if key not in _CONSISTENCY:
        _CONSISTENCY[key] = check_consistency(
            {c: ds.array(c) for c in convs}, {c: ds.conventions[c].unit for c in convs},
            sample=PRETRAIN_CHECK_SAMPLE, seed=0, indices=ds.split_indices(cfg.data.protocol, cfg.data.train_part),
            source=str(ds.root / "manifest.json"))
    return _CONSISTENCY[key]


def consistency_status(cfg: ExperimentConfig, ds: Dataset | None = None) -> str:
    """"ok" (every pair of cfg.conventions agrees), "overridden" (some disagree and
    data.allow_inconsistent lets training go on) or "skipped" (fewer than two conventions,
    or no pair comparable, e.g. 2-D ones). Raises the DataError of `require_consistent`
    when they disagree without the override. Costs nothing after dataset_for(cfg): the
    report is cached. For the MLflow tag `msclr.consistency`."""
    ds = ds or load_dataset(cfg.data.path)
    rep = training_consistency(cfg, ds)
    if rep is None or all(p.status == "skipped" for p in rep.pairs):
        return "skipped"
    if rep.ok:
        return "ok"
    if not cfg.data.allow_inconsistent:
        raise DataError(f"conventions disagree: {'; '.join(rep.messages())}. Training on them teaches the encoder "
                        f"nothing from cross-convention positives: fix the data (`msclr data check {ds.root}` "
                        "prints the full report) or set data.allow_inconsistent: true to train anyway",
                        path=ds.root / "manifest.json", field="conventions")
    return "overridden"


def require_consistent(cfg: ExperimentConfig, ds: Dataset) -> str:
    """Refuse (DataError) conventions that disagree unless data.allow_inconsistent; with the
    override, warn once per process. Returns consistency_status."""
    status = consistency_status(cfg, ds)
    key = (str(ds.root), tuple(cfg.conventions))
    if status == "overridden" and key not in _WARNED:
        _WARNED.add(key)
        rep = training_consistency(cfg, ds)
        print(f"warning: {ds.root}: conventions disagree, training anyway (data.allow_inconsistent): "
              f"{'; '.join(rep.messages())}", file=sys.stderr, flush=True)
    return status


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
