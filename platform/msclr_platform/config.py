"""Experiment configs: YAML files validated into typed dataclasses.

Unknown keys, wrong types and values out of range (validate.py: a rule for every key)
are errors that name the dotted key, the value and where it came from: the file, or
`--set` for a command-line override. `--set a.b=value` overrides are applied before
validation, so a config that loads is good before any Ray or MLflow process starts.
Relative paths are made absolute here, in the driver, because Ray workers chdir
elsewhere: paths written in a config file are relative to that file, paths given with
`--set` to the current directory (where the user typed them), so neither can silently
land somewhere else.
A file may inherit another with `base: OTHER.yaml` plus its own overrides (yaml_files.py,
which also reads YAML safely: configs are untrusted input).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from msclr_core.data.safe_pickle import short_repr
from msclr_core.errors import ConfigError
from msclr_core.pretrain import PretrainSettings
from msclr_core.protocol import EvalSettings, ProbeSettings

from . import validate
from .yaml_files import deep_merge, read_layers, read_yaml  # noqa: F401 - read_yaml: re-exported
from .yaml_files import safe_yaml as _safe_yaml

PATH_KEYS = ("data.path", "ray.storage_path", "tracking.tracking_uri")  # made absolute by _resolve_path
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # scheme://... (s3://, gs://, http://): not a local path
_RELATIVE_SQLITE = re.compile(r"sqlite:///(?!/)(.+)")  # sqlite:///x.db is relative to the cwd, sqlite:////x.db not


@dataclass
class DataConfig:
    path: str = ""  # dataset directory (see docs/DESIGN.md); relative to the config file
    protocol: str = "xsub"
    train_part: str = "train"
    test_part: str = "test"
    val_part: str | None = None  # used for best-on-validation reporting when present
    max_train_samples: int | None = None  # cap for smoke runs (a fixed, seeded subset)
    max_test_samples: int | None = None
    # train although the pretrain-start consistency check finds conventions that disagree
    # (flipped axis, wrong unit, mirrored, time-shifted; msclr_core.consistency)
    allow_inconsistent: bool = False


@dataclass
class EvalConfig:
    enabled: bool = True
    probe: str = "standard"  # standard (z-scored features, lr picked on validation) | paper (raw, linear_lr)
    linear_epochs: int = 100
    linear_lr: float = 3.0  # the paper probe's lr
    linear_lr_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0])  # the standard probe's choices
    linear_milestones: list[int] = field(default_factory=lambda: [80])
    linear_batch_size: int = 128
    knn_k: int = 20
    ensemble: bool = True  # per-convention heads, averaged logits
    references: list[str] = field(default_factory=lambda: ["raw", "random-init"])  # + "supervised" (the ceiling)
    val_fraction: float = 0.2  # of train, for choices, when the dataset has no val split
    batch_size: int = 256  # feature extraction batch
    probe_every: int = 0  # cheap kNN probe every N epochs during pretraining (0 = off)
    probe_samples: int = 512

    def settings(self, seed: int = 0) -> EvalSettings:
        """The core protocol's settings for these keys."""
        probe = ProbeSettings(name=self.probe, epochs=self.linear_epochs, lr=self.linear_lr,
                              lr_grid=list(self.linear_lr_grid), milestones=list(self.linear_milestones),
                              batch_size=self.linear_batch_size)
        return EvalSettings(probe=probe, knn_k=self.knn_k, ensemble=self.ensemble, val_fraction=self.val_fraction,
                            feature_batch=self.batch_size, seed=seed)


REFERENCES = ("raw", "random-init", "supervised")


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
    # Where the workers go: PACK fills a node first, SPREAD / STRICT_SPREAD put them on different nodes.
    placement_strategy: str = "PACK"
    # 0: the resources must be in the cluster now (a fixed cluster fails at once, naming them).
    # > 0: ask the autoscaler for them and wait this long (on by default when the cluster autoscales).
    wait_for_resources_s: float = 0.0


@dataclass
class TrackingConfig:
    experiment: str = "msclr"
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or the local server
    system_metrics: bool = True
    embedding_plot: bool = True
    retry_budget_s: float = 180.0  # how long driver and workers together wait out an MLflow outage (offline.py)


@dataclass
class ExperimentConfig(PretrainSettings):
    """What is trained (the core's PretrainSettings: conventions, stream, model, method, optim,
    augment, seed) plus where it runs and how it is evaluated and tracked."""

    name: str = "msclr"
    data: DataConfig = field(default_factory=DataConfig)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def pretrain_settings(self) -> PretrainSettings:
        """The core's view alone: what workers train and checkpoints record (no platform keys)."""
        return PretrainSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(PretrainSettings)})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: d[k] for k in ("name", "data", *d) if k in d}  # name and data first, as the YAML files write them


validate.register_platform(ExperimentConfig, DataConfig, EvalConfig, RayConfig, TrackingConfig, REFERENCES)


# ---------------------------------------------------------------- dict -> dataclass


def source_of(keys, source: str, set_keys=frozenset()) -> str:
    """Where the values of dotted `keys` came from: `--set` when a command-line override set
    the key or a section above it, else `source` (the file)."""
    def overridden(key: str) -> bool:
        parts = re.sub(r"\[\d+\]", "", key).split(".")
        return any(".".join(parts[:i]) in set_keys for i in range(1, len(parts) + 1))

    return " / ".join(dict.fromkeys("--set" if overridden(k) else source for k in keys))


def from_dict(cls, data, *, where: str = "", source: str = "<config>", set_keys=frozenset()):
    """Build dataclass `cls` from a plain dict, checking keys, types and each key's rule
    (validate.py) recursively, then the rules between keys. `set_keys`: the dotted keys a
    `--set` override gave, so their errors name `--set` instead of the file."""
    if not isinstance(data, dict):
        src = source_of([where], source, set_keys) if where else source
        raise ConfigError(f"{src}: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((k for k in data if k not in names), key=short_repr)  # YAML keys may be ints, None...
    if unknown:
        name = unknown[0] if isinstance(unknown[0], str) else short_repr(unknown[0])
        key = f"{where}.{name}" if where else name
        raise ConfigError(f"{source_of([key], source, set_keys)}: unknown key {key!r} "
                          f"(known at this level: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key, source, set_keys)
        wrong = validate.problem(cls, name, kwargs[name])
        if wrong:
            raise ConfigError(f"{source_of([key], source, set_keys)}: key {key!r} {wrong}, got {short_repr(value)}")
    broken = validate.cross_problems(cls, _with_defaults(cls, kwargs))  # before a core __post_init__ runs
    if broken:
        keys = [f"{where}.{k}" if where else k for k in broken[0]]
        given = [key for key, rel in zip(keys, broken[0]) if _given(data, rel)] or keys  # not defaults
        raise ConfigError(f"{source_of(given, source, set_keys)}: keys {' / '.join(map(repr, keys))}: {broken[1]}")
    try:
        return cls(**kwargs)
    except ConfigError as err:  # checks in a core dataclass's __post_init__ name the key but not the file
        raise ConfigError(f"{source}: {err}") from None


def _given(data: dict, key: str) -> bool:
    """Whether dotted `key` was written in `data` (rather than left to its default)."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _with_defaults(cls, kwargs: dict) -> types.SimpleNamespace:
    """Every field of `cls`: the given value, else the field's default."""
    def default(f):
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    return types.SimpleNamespace(**{f.name: kwargs[f.name] if f.name in kwargs else default(f)
                                    for f in dataclasses.fields(cls)})


def _coerce(tp, value, key: str, source: str, set_keys=frozenset()):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key, source, set_keys)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=key, source=source, set_keys=set_keys)
    src = source_of([key], source, set_keys)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: key {key!r}: expected a list, got {short_repr(value)}")
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        return [_coerce(item, v, f"{key}[{i}]", source, set_keys) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: key {key!r}: expected a mapping, got {short_repr(value)}")
        return dict(value)
    if tp is typing.Any:
        return value
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else tp):
        got = f"{type(value).__name__} {short_repr(value)}"
        raise ConfigError(f"{src}: key {key!r}: expected {tp.__name__}, got {got}")
    if tp is float:
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):  # .nan / .inf in YAML, or an int beyond float range
            raise ConfigError(f"{src}: key {key!r}: expected a finite number, got {short_repr(value)}")
    return value


# ---------------------------------------------------------------- YAML + overrides


def parse_overrides(pairs: list[str] | None, base: Path | None = None) -> dict:
    """['optim.lr=0.05', 'conventions=[ntu-rgb+d]'] -> nested dict (values parsed as YAML).

    Paths (PATH_KEYS) are made absolute against `base`, by default the current directory:
    `--set data.path=data/ntu60` means ./data/ntu60 where the command was typed, not a
    directory beside the config file."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, raw = pair.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {pair!r}: empty part in key {key.strip()!r}")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {'.'.join(parts[:i + 1])!r} is already set to a value")
        node[parts[-1]] = _safe_yaml(raw, f"--set {key.strip()}")
    return absolutize_paths(out, Path.cwd() if base is None else base, "--set")


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    try:
        path = Path(path).resolve()
    except (OSError, ValueError, RuntimeError) as err:  # NUL byte, symlink loop
        raise ConfigError(f"{short_repr(str(path))}: not a usable config path ({err})") from None
    raw, source = resolved_raw(path)
    override = parse_overrides(overrides)
    set_keys = frozenset(flatten(override))  # their errors name --set, not the file
    cfg = from_dict(ExperimentConfig, deep_merge(raw, override), source=source, set_keys=set_keys)
    return resolve_paths(cfg, path.parent, source=source)


def resolved_raw(path: Path) -> tuple[dict, str]:
    """The raw settings of config file `path` (resolved) with its chain of `base:` files
    merged in, each file's paths made absolute against that file's directory; and the
    source to name in errors: the file, followed by its bases."""
    raw: dict = {}
    layers = read_layers(path)
    for file, data in layers:
        raw = deep_merge(raw, absolutize_paths(data, file.parent, str(file)))
    bases = [str(file) for file, _ in layers[-2::-1]]
    return raw, str(path) + (f" (base: {' <- '.join(bases)})" if bases else "")


def _resolve_path(key: str, value: str, base: Path, source: str) -> str:
    """One PATH_KEYS value made absolute against `base` (URIs other than relative sqlite kept)."""
    if "\x00" in value:
        raise ConfigError(f"{source}: key {key!r}: a path cannot contain a NUL byte")
    try:
        if key == "tracking.tracking_uri":  # a relative sqlite file would be created in each worker's cwd
            m = _RELATIVE_SQLITE.fullmatch(value)
            return f"sqlite:///{(base / m.group(1)).resolve()}" if m else value
        if key == "ray.storage_path" and _URI.match(value):
            return value
        return str((base / os.path.expanduser(value)).resolve())
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
        raise ConfigError(f"{source}: key {key!r}: cannot resolve {short_repr(value)} ({err})") from None


def absolutize_paths(raw: dict, base: Path, source: str) -> dict:
    """Make the PATH_KEYS of a raw (unvalidated) config dict absolute against `base`.
    Values of the wrong type are left for from_dict to report."""
    out = raw
    for key in PATH_KEYS:
        section, name = key.split(".")
        node = raw.get(section) if isinstance(raw, dict) else None
        if isinstance(node, dict) and isinstance(node.get(name), str) and node[name]:
            out = deep_merge(out, {section: {name: _resolve_path(key, node[name], base, source)}})
    return out


def resolve_paths(cfg: ExperimentConfig, base: Path, source: str = "<config>") -> ExperimentConfig:
    """Make cfg's paths absolute against `base` (ranges and enums were checked by from_dict)."""
    if not cfg.data.path:
        raise ConfigError(f"{source}: key 'data.path' is required (a dataset directory)")
    cfg.data.path = _resolve_path("data.path", cfg.data.path, base, source)
    if cfg.ray.storage_path:
        cfg.ray.storage_path = _resolve_path("ray.storage_path", cfg.ray.storage_path, base, source)
    if cfg.tracking.tracking_uri:
        cfg.tracking.tracking_uri = _resolve_path("tracking.tracking_uri", cfg.tracking.tracking_uri, base, source)
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
