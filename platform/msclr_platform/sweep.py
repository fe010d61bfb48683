"""Ray Tune sweeps from YAML: `msclr sweep FILE [--resume]`.

A sweep file names a base experiment config, fixed overrides and a search space over
any config key (dotted). Every trial is a small driver function that fits its own Ray
Train run (Train V2: no Tuner(TorchTrainer)), forwarding per-epoch metrics to Tune with
TuneReportCallback so ASHA can stop bad trials on the cheap kNN probe. MLflow: one parent
run per sweep, one child per trial (found again by name on resume: no duplicates).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from msclr_core.errors import ConfigError

from .config import ExperimentConfig, deep_merge, from_dict, read_yaml, resolve_paths

DISTRIBUTIONS = {"grid", "choice", "uniform", "loguniform", "randint"}


@dataclass
class SchedulerSpec:
    type: str = "asha"  # asha | fifo
    grace_period: int = 1
    reduction_factor: int = 2
    max_t: int | None = None  # default: the base config's epochs


@dataclass
class SweepSpec:
    name: str = "sweep"
    base: str = ""  # experiment YAML, relative to the sweep file
    overrides: dict = field(default_factory=dict)  # fixed dotted-key overrides for every trial
    search: dict = field(default_factory=dict)  # dotted key -> {grid|choice|uniform|loguniform|randint: ...}
    metric: str = "probe_knn_top1"
    mode: str = "max"
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    search_alg: str = "random"  # random | grid | optuna | hyperopt (if installed)
    num_samples: int = 1
    max_concurrent_trials: int = 2
    trial_cpus: float = 0.0  # the trial driver itself; Train workers have their own resources
    time_budget_s: float | None = None
    final_eval: bool = True


@dataclass
class Sweep:
    spec: SweepSpec
    path: Path
    base: dict  # the base experiment config as a dict (paths resolved)


def _nest(dotted: dict) -> dict:
    out: dict = {}
    for key, value in dotted.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def trial_config(sweep: Sweep, params: dict) -> ExperimentConfig:
    """The experiment config of one trial: base + fixed overrides + sampled params."""
    raw = deep_merge(deep_merge(copy.deepcopy(sweep.base), _nest(sweep.spec.overrides)), _nest(params))
    return from_dict(ExperimentConfig, raw, source=str(sweep.path))


def _candidates(key: str, dist: dict, source: str) -> list | None:
    """The finite values a distribution can take (None for continuous ones)."""
    (kind, arg), = dist.items()
    if kind in ("grid", "choice"):
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{source}: key 'search.{key}.{kind}': expected a non-empty list")
        return arg
    if kind == "randint":
        lo, hi = arg
        return list(range(lo, hi)) if hi - lo <= 64 else [lo, hi - 1]
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)):
        raise ConfigError(f"{source}: key 'search.{key}.{kind}': expected [low, high]")
    return arg  # check both ends


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file before anything starts."""
    from .config import load_config
    from .data import dataset_for
    from .train import preflight

    path = Path(path).resolve()
    source = str(path)
    spec = from_dict(SweepSpec, read_yaml(path), source=source)
    if not spec.base:
        raise ConfigError(f"{source}: key 'base' is required (an experiment YAML)")
    base_cfg = load_config(path.parent / spec.base)
    base = base_cfg.to_dict()
    if spec.mode not in ("max", "min"):
        raise ConfigError(f"{source}: key 'mode' must be max or min, got {spec.mode!r}")
    if spec.scheduler.type not in ("asha", "fifo"):
        raise ConfigError(f"{source}: key 'scheduler.type' must be asha or fifo, got {spec.scheduler.type!r}")
    for key, dist in spec.search.items():
        if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
            raise ConfigError(f"{source}: key 'search.{key}': expected one of {sorted(DISTRIBUTIONS)} with its values")
    sweep = Sweep(spec, path, base)
    # Every combination of the finite candidates (and both ends of ranges) must give a
    # valid experiment: unknown keys, wrong types, queue sizes vs the global batch and
    # conventions missing from the dataset fail here, naming the sweep file and key.
    values = {k: _candidates(k, d, source) for k, d in spec.search.items()}
    dataset_for(base_cfg)  # the dataset must exist before trials start
    for combo in itertools.islice(itertools.product(*values.values()), 256):
        params = dict(zip(values, combo))
        try:
            cfg = resolve_paths(trial_config(sweep, params), path.parent, source)
            preflight(cfg)
        except ConfigError as err:
            raise ConfigError(f"{source}: search {params}: {err}") from None
    if spec.metric.startswith("probe_"):
        sweep.base["eval"]["probe_every"] = max(1, sweep.base["eval"].get("probe_every") or 1)
    return sweep


def param_space(spec: SweepSpec) -> dict:
    from ray import tune

    make = {
        "grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a),
    }  # fmt: skip
    return {"params": {key: make[kind](arg) for key, dist in spec.search.items() for kind, arg in dist.items()}}


def searcher(spec: SweepSpec):
    from ray import tune

    if spec.search_alg in ("random", "grid"):
        return None  # Tune's BasicVariantGenerator: grid entries expand, the rest sample
    try:
        return tune.create_searcher(spec.search_alg, metric=spec.metric, mode=spec.mode)
    except (ImportError, ValueError) as err:
        raise ConfigError(
            f"search_alg {spec.search_alg!r} needs its package ({err}); install it or use random/grid"
        ) from None


def scheduler(spec: SweepSpec, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch", max_t=spec.scheduler.max_t or epochs,
        grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
    )  # fmt: skip


def dataclass_replace_name(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    return dataclasses.replace(cfg, name=name)
