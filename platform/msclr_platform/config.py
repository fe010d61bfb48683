"""Experiment configs: YAML files validated into typed dataclasses.

Unknown keys and wrong types are errors that name the file and the dotted key.
`--set a.b=value` overrides are applied before validation. Relative paths are resolved
against the config file here, in the driver, because Ray workers chdir elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from msclr_core.augment import AugmentConfig
from msclr_core.errors import ConfigError
from msclr_core.pretrain import MethodSettings, ModelSettings, OptimSettings, PretrainSettings


@dataclass
class DataConfig:
    path: str = ""  # dataset directory (see docs/DESIGN.md); relative to the config file
    protocol: str = "xsub"
    train_part: str = "train"
    test_part: str = "test"
    val_part: str | None = None  # used for best-on-validation reporting when present
    max_train_samples: int | None = None  # cap for smoke runs (a fixed, seeded subset)
    max_test_samples: int | None = None


@dataclass
class EvalConfig:
    enabled: bool = True
    linear_epochs: int = 100
    linear_lr: float = 3.0
    linear_milestones: list[int] = field(default_factory=lambda: [80])
    linear_batch_size: int = 128
    knn_k: int = 20
    ensemble: bool = True  # per-convention heads, averaged logits
    batch_size: int = 256  # feature extraction batch
    probe_every: int = 0  # cheap kNN probe every N epochs during pretraining (0 = off)
    probe_samples: int = 512


@dataclass
class RayConfig:
    address: str | None = None  # None: attach to RAY_ADDRESS or start a local 127.0.0.1 runtime
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 0
    controller_failure_limit: int = 3  # never retry controller errors forever
    worker_start_timeout_s: float = 120.0
    checkpoint_every: int = 1
    num_to_keep: int = 2
    storage_path: str | None = None  # shared storage for multi-node; default <home>/ray


@dataclass
class TrackingConfig:
    experiment: str = "msclr"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or the local server
    system_metrics: bool = True
    embedding_plot: bool = True


@dataclass
class ExperimentConfig:
    name: str = "msclr"
    data: DataConfig = field(default_factory=DataConfig)
    conventions: list[str] = field(default_factory=lambda: ["ntu-rgb+d", "smplx_42"])
    stream: str = "joint"
    model: ModelSettings = field(default_factory=ModelSettings)
    method: MethodSettings = field(default_factory=MethodSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def pretrain_settings(self) -> PretrainSettings:
        return PretrainSettings(
            conventions=list(self.conventions),
            stream=self.stream,
            model=self.model,
            method=self.method,
            optim=self.optim,
            augment=self.augment,
            seed=self.seed,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- dict -> dataclass


def from_dict(cls, data, *, where: str = "", source: str = "<config>"):
    """Build dataclass `cls` from a plain dict, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key {key!r} (known at this level: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key, source)
    return cls(**kwargs)


def _coerce(tp, value, key: str, source: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key, source)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key, source=source)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        return [_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{source}: key {key!r}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


# ---------------------------------------------------------------- YAML + overrides


def parse_overrides(pairs: list[str] | None) -> dict:
    """['optim.lr=0.05', 'conventions=[ntu-rgb+d]'] -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for k, v in override.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)  # safe loading only: configs are untrusted input
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    return data or {}


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path).resolve()
    raw = deep_merge(read_yaml(path), parse_overrides(overrides))
    cfg = from_dict(ExperimentConfig, raw, source=str(path))
    return resolve_paths(cfg, path.parent, source=str(path))


def resolve_paths(cfg: ExperimentConfig, base: Path, source: str = "<config>") -> ExperimentConfig:
    if not cfg.data.path:
        raise ConfigError(f"{source}: key 'data.path' is required (a dataset directory)")
    cfg.data.path = str((base / os.path.expanduser(cfg.data.path)).resolve())
    if cfg.ray.storage_path and "://" not in cfg.ray.storage_path:
        cfg.ray.storage_path = str((base / os.path.expanduser(cfg.ray.storage_path)).resolve())
    for name, value in (("precision", cfg.precision), ("device", cfg.device)):
        allowed = {"precision": ("fp32", "bf16"), "device": ("auto", "cpu", "cuda")}[name]
        if value not in allowed:
            raise ConfigError(f"{source}: key {name!r} must be one of {allowed}, got {value!r}")
    return cfg


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{'a': {'b': 1}} -> {'a.b': 1} (for MLflow params)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
