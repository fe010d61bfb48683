"""A sweep's search space and scheduler: what the YAML may say and the Tune objects it makes.

`search:` maps a dotted config key to one distribution, `{kind: args}`, each kind the
`ray.tune` function of the same name (`grid` is `grid_search`): `check_distribution`
checks its shape, `candidates` gives the values load_sweep preflights (every value of a
small finite set, both ends of a range), `param_space` builds Tune's domains.
`scheduler:` picks one of the Tune schedulers that fit a sweep's trials (SCHEDULERS);
the ones that do not (REFUSED) fail at load time saying why and what to use instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msclr_core.errors import ConfigError

from . import validate

SEARCH_ALGS = ("random", "grid", "variant_generator", "ax", "hyperopt", "bayesopt", "bohb", "nevergrad", "optuna",
               "zoopt", "hebo")  # Tune's create_searcher names (each needs its package)

# ---------------------------------------------------------------- distributions

_ENUMERATE = 64  # an integer range up to this many values is preflighted value by value


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return type(v) is int


def _pair(arg, ok, *, n: int = 2) -> bool:
    return isinstance(arg, list) and len(arg) == n and all(ok(v) for v in arg)


def _steps(lo: int, hi: int, q: int) -> list[int]:
    """The multiples of q Tune's quantised integer domains draw from: [lo, hi] (q=1: [lo, hi))."""
    first, last = -(-lo // q), hi // q - (1 if q == 1 else 0)
    n = last - first + 1
    if n <= 0:
        return []
    return [i * q for i in range(first, last + 1)] if n <= _ENUMERATE else [first * q, last * q]


def _multiples(q, *values) -> bool:
    """Tune's quantised float domains need both bounds to be multiples of q (as it checks them)."""
    return q > 0 and all(math.isclose(v / q, round(v / q)) for v in values)


def _ints(lo: int, hi: int) -> list[int]:
    return list(range(lo, hi)) if hi - lo <= _ENUMERATE else [lo, hi - 1]


# kind -> (what its args must be, check(arg) -> bool, candidates(arg) -> list)
# Ranges give both ends; integer ranges every value when small (a queue size or a batch
# that divides differently fails at load time, not in trial 37).
_KINDS = {
    "grid": ("a non-empty list", lambda a: isinstance(a, list) and bool(a), lambda a: a),
    "grid_search": ("a non-empty list", lambda a: isinstance(a, list) and bool(a), lambda a: a),
    "choice": ("a non-empty list", lambda a: isinstance(a, list) and bool(a), lambda a: a),
    "uniform": ("[low, high] with numbers low < high",
                lambda a: _pair(a, _num) and a[0] < a[1], lambda a: a),
    "quniform": ("[low, high, q] with numbers low < high, both multiples of q > 0",
                 lambda a: _pair(a, _num, n=3) and a[0] < a[1] and _multiples(a[2], a[0], a[1]), lambda a: a[:2]),
    "loguniform": ("[low, high] with numbers 0 < low < high",
                   lambda a: _pair(a, _num) and 0 < a[0] < a[1], lambda a: a),
    "qloguniform": ("[low, high, q] with numbers 0 < low < high, both multiples of q > 0",
                    lambda a: _pair(a, _num, n=3) and 0 < a[0] < a[1] and _multiples(a[2], a[0], a[1]),
                    lambda a: a[:2]),
    "randint": ("[low, high) with integers low < high",
                lambda a: _pair(a, _int) and a[0] < a[1], lambda a: _ints(*a)),
    "lograndint": ("[low, high) with integers 0 < low < high",
                   lambda a: _pair(a, _int) and 0 < a[0] < a[1], lambda a: _ints(*a)),
    "qrandint": ("[low, high, q] with integers low < high, q > 0 and a multiple of q in [low, high] "
                 "(q = 1: [low, high), as Tune draws)",
                 lambda a: _pair(a, _int, n=3) and a[0] < a[1] and a[2] > 0 and bool(_steps(*a)),
                 lambda a: _steps(*a)),
    "qlograndint": ("[low, high, q] with integers 0 < low < high, q > 0 and a multiple of q in [low, high] "
                    "(q = 1: [low, high), as Tune draws)",
                    lambda a: _pair(a, _int, n=3) and 0 < a[0] < a[1] and a[2] > 0 and bool(_steps(*a)),
                    lambda a: _steps(*a)),
    # A normal is unbounded: preflight mean +- 3 sd, where 99.7% of draws fall. A key with a
    # hard bound (temperature > 0) that this crosses fails at load time instead of in 1 trial
    # of ~370; narrow the sd or use a bounded distribution.
    "randn": ("[mean, sd] with numbers sd > 0",
              lambda a: _pair(a, _num) and a[1] > 0, lambda a: [a[0] - 3 * a[1], a[0] + 3 * a[1]]),
    "qrandn": ("[mean, sd, q] with numbers sd > 0, q > 0",
               lambda a: _pair(a, _num, n=3) and a[1] > 0 and a[2] > 0,
               lambda a: [round(math.floor((a[0] - 3 * a[1]) / a[2]) * a[2], 12),  # rounded outwards
                          round(math.ceil((a[0] + 3 * a[1]) / a[2]) * a[2], 12)]),
}
DISTRIBUTIONS = tuple(_KINDS)
_LIST_ARG = {"grid", "grid_search", "choice"}  # Tune takes the list itself, the rest spread their args


def check_distribution(key: str, dist, source: str) -> tuple[str, object]:
    """(kind, args) of `search.<key>` once its shape and args are known good."""
    if not (isinstance(dist, dict) and len(dist) == 1 and isinstance(next(iter(dist)), str)
            and next(iter(dist)) in _KINDS):
        raise ConfigError(f"{source}: key 'search.{key}': expected one of {sorted(DISTRIBUTIONS)} with its values")
    (kind, arg), = dist.items()
    want, ok, _ = _KINDS[kind]
    if not ok(arg):
        raise ConfigError(f"{source}: key 'search.{key}.{kind}': expected {want}, got {arg!r}"[:2000])
    return kind, arg


def candidates(key: str, dist, source: str) -> list:
    """The values load_sweep preflights for `search.<key>`: a finite set whole, both ends of a range."""
    kind, arg = check_distribution(key, dist, source)
    return _KINDS[kind][2](arg)


def param_space(spec) -> dict:
    from ray import tune

    def make(kind, arg):
        fn = getattr(tune, "grid_search" if kind == "grid" else kind)
        return fn(arg) if kind in _LIST_ARG else fn(*arg)

    return {"params": {key: make(kind, arg) for key, dist in spec.search.items() for kind, arg in dist.items()}}


def expected_trials(spec) -> int:
    """How many trials the search space makes: num_samples x the product of the grid sizes."""
    n = spec.num_samples
    for dist in spec.search.values():
        for kind in ("grid", "grid_search"):
            if kind in dist:
                n *= len(dist[kind])
    return n


def searcher(spec):
    from ray import tune

    if spec.search_alg in ("random", "grid"):
        return None  # Tune's BasicVariantGenerator: grid entries expand, the rest sample
    try:
        return tune.create_searcher(spec.search_alg, metric=spec.metric, mode=spec.mode)
    except (ImportError, ValueError, AssertionError) as err:  # Tune asserts when the package is missing
        raise ConfigError(
            f"search_alg {spec.search_alg!r} needs its package ({err}); install it or use random/grid"
        ) from None


# ---------------------------------------------------------------- schedulers

SCHEDULERS = ("asha", "fifo", "median")
# Tune schedulers that do not fit a sweep's trials, and why. A trial is a driver that fits its
# own Ray Train run and reports no Tune checkpoint: a scheduler may stop it (asha, median),
# but not pause it to run later, nor copy its state into another trial.
REFUSED = {
    **{name: f"{name.upper()} exploits by copying a Tune checkpoint of a good trial into a worse one, and a "
             "sweep's trials report none (each trains its own Ray Train run, checkpointed by run name), so "
             "Tune would skip every exploit; use asha or median to stop weak trials early, or search "
             "optim.lr / method.temperature with a searcher (search_alg)" for name in ("pbt", "pb2")},
    "hyperband": "HyperBand pauses every trial at each rung and restarts the good ones, and a sweep's trial "
                 "has no Tune checkpoint to pause on (its driver and Train run end; a trial halved while "
                 "paused stays PAUSED in Tune's saved state, so the sweep never finishes); use asha, the "
                 "asynchronous HyperBand: the same rungs, it stops weak trials without pausing any",
}


def _scheduler_type(v) -> str | None:
    if v in REFUSED:
        return f"cannot be {v} ({REFUSED[v]})"
    return validate.one_of(*SCHEDULERS)(v)


@dataclass
class SchedulerSpec:
    type: str = "asha"  # asha | fifo | median (hyperband, pbt, pb2: refused, see REFUSED)
    grace_period: int = 1  # asha, median: epochs before a trial may be stopped
    reduction_factor: int = 2  # asha: keep 1/reduction_factor at each rung
    max_t: int | None = None  # asha; default: the base config's epochs


validate.register(SchedulerSpec,
                  type=_scheduler_type, grace_period=validate.count(1, validate.MAX_EPOCHS),
                  reduction_factor=validate.count(2, 1000),
                  max_t=validate.optional(validate.count(1, validate.MAX_EPOCHS)))


def scheduler(spec, epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = spec.scheduler
    if s.type == "fifo":
        return FIFOScheduler()
    if s.type == "median":
        return _median_rule()(epochs, time_attr="epoch", grace_period=s.grace_period)
    # +1: ASHA stops a trial the moment it reports max_t, which at max_t = epochs would kill
    # the trial driver during its final evaluation (reported after the last epoch).
    return ASHAScheduler(time_attr="epoch", max_t=(s.max_t or epochs) + 1, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def _median_rule():  # built on first use: the module imports without ray
    from ray.tune.schedulers import MedianStoppingRule, TrialScheduler

    class SweepMedian(MedianStoppingRule):
        """MedianStoppingRule as a pure stopping rule for sweep trials: it never pauses one
        (Tune's rule pauses a trial to let pending ones run while it has too few others to
        compare: a sweep trial has no Tune checkpoint to resume from), and it leaves a trial
        alone once it has trained every epoch (the rule has no max_t: a stop then would kill
        the driver during its final evaluation)."""

        def __init__(self, epochs: int, **kwargs):
            super().__init__(**kwargs)
            self._epochs = epochs

        def on_trial_result(self, tune_controller, trial, result):
            if result.get(self._time_attr, 0) < self._epochs:
                return super().on_trial_result(tune_controller, trial, result)
            if self._metric in result and trial not in self._stopped_trials:
                self._results[trial].append(result)  # later trials still compare against it
            return TrialScheduler.CONTINUE

        def _on_insufficient_samples(self, tune_controller, trial, time):
            return TrialScheduler.CONTINUE

    return SweepMedian
