"""Range and enum rules for every config key, checked while a config is built (issue 13).

`config.from_dict` checks each key's type, then its rule here, then builds the dataclass,
then runs the class's cross-key checks; so a config that loads is known good before any
Ray or MLflow process starts, and every error names the dotted key, the bad value and
where it came from (the YAML file or `--set`).

A rule is a plain function value -> None (fine) or a phrase saying what is wrong
("must be >= 1"). RULES maps each config dataclass to a rule for every one of its
fields (tests/test_validation.py checks that none is missing); CHECKS maps it to
functions obj -> (keys, phrase) | None for rules between keys. sweep.py registers its
own dataclasses with `register`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from msclr_core.augment import AugmentConfig
from msclr_core.builder import OBJECTIVES
from msclr_core.conventions import REGISTRY
from msclr_core.errors import ConfigError
from msclr_core.graph import PARTITIONS
from msclr_core.model import HEADS
from msclr_core.pairing import POLICIES
from msclr_core.pretrain import MethodSettings, ModelSettings, OptimSettings
from msclr_core.protocol import PROBES
from msclr_core.queue import check_queue_size

Rule = Callable[[Any], "str | None"]
Check = Callable[[Any], "tuple[tuple[str, ...], str] | None"]

MAX_EPOCHS = 1_000_000  # beyond any schedule; 1e23 is a typo, not a plan
MAX_COUNT = 2**31 - 1  # batch sizes, queue sizes, widths: what one tensor dimension can hold
MAX_BLOCKS = 64  # model.channel_plan: the ST-GCN plan (10 standard), downsampled twice at any depth
MAX_NAME = 200  # a run name names a directory and an MLflow run

RULES: dict[type, dict[str, Rule]] = {}
CHECKS: dict[type, list[Check]] = {}


def register(cls: type, checks: list[Check] | tuple = (), **rules: Rule) -> None:
    RULES[cls] = rules
    CHECKS[cls] = list(checks)


def problem(cls: type, name: str, value) -> str | None:
    """What is wrong with `value` for field `name` of `cls` (None: fine, or no rule)."""
    rule = RULES.get(cls, {}).get(name)
    return rule(value) if rule is not None else None


def cross_problems(cls: type, obj):
    """(keys relative to obj, phrase) for the first broken rule between the keys of `obj`
    (an instance of `cls`, or a namespace of its field values), or None."""
    for check in CHECKS.get(cls, ()):
        found = check(obj)
        if found:
            return found
    return None


# ---------------------------------------------------------------- rule makers


def ANY(value) -> None:  # noqa: N802 - the type check is the whole rule (bools, free text)
    return None


def number(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    if hi is None:
        want = f"must be {'>' if lo_open else '>='} {lo}"
    elif lo is None:
        want = f"must be {'<' if hi_open else '<='} {hi}"
    else:
        want = f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def rule(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "must be a finite number"
        below = lo is not None and (v <= lo if lo_open else v < lo)
        above = hi is not None and (v >= hi if hi_open else v > hi)
        return want if below or above else None

    return rule


def count(lo: int = 1, hi: int = MAX_COUNT) -> Rule:
    return number(lo, hi)


def odd(lo: int, hi: int) -> Rule:
    inside = number(lo, hi)
    return lambda v: inside(v) or (None if v % 2 else f"must be an odd number in [{lo}, {hi}]")


def one_of(*choices) -> Rule:
    shown = ", ".join(str(c) for c in choices)
    return lambda v: None if v in choices else f"must be one of {shown}"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def items(rule: Rule = ANY, *, min_len: int = 0, unique: bool = False) -> Rule:
    def check(v):
        if len(v) < min_len:
            return f"needs at least {min_len} item{'s' if min_len > 1 else ''}"
        if unique and len(set(map(repr, v))) != len(v):
            return "has duplicate items"
        for i, item in enumerate(v):
            bad = rule(item)
            if bad:
                return f"item [{i}] {bad}"
        return None

    return check


def text(pattern: str = r".+", why: str = "must not be empty", max_len: int = 1000) -> Rule:
    compiled = re.compile(pattern, re.S)
    return lambda v: f"is longer than {max_len} characters" if len(v) > max_len else (
        None if compiled.fullmatch(v) else why)


def digits(allowed: str) -> Rule:
    return lambda v: None if not set(v) - set(allowed) else f"may only hold the digits {allowed}"


def run_name(v: str) -> str | None:
    """A plain run name: it names a run directory, an MLflow run and checkpoint folders."""
    if v in ("", ".", "..") or any(c in v for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in v):
        return "must be a plain run name (no '/', '\\' or control characters; not empty, '.' or '..')"
    return f"is longer than {MAX_NAME} characters" if len(v) > MAX_NAME else None


KNOWN_CONVENTIONS = one_of(*REGISTRY)
FRACTION = number(0, 1, lo_open=True, hi_open=True)
PROBABILITY = number(0, 1)
PROBABILITY_LT1 = number(0, 1, hi_open=True)
POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
EPOCHS = count(1, MAX_EPOCHS)
BATCH = count(1, 2**20)
LR = number(0, 1e4, lo_open=True)  # learning rates and their multipliers
SCALE = number(0, 1e6)  # augmentation magnitudes


# ---------------------------------------------------------------- checks between keys


def _queue_fits_batch(cfg):
    try:
        check_queue_size(cfg.method.queue_size, cfg.optim.batch_size)
    except ConfigError as err:
        return ("method.queue_size", "optim.batch_size"), str(err)
    return None


def _batch_splits_over_workers(cfg):
    if cfg.optim.batch_size % cfg.ray.num_workers:
        return ("optim.batch_size", "ray.num_workers"), (
            f"the global batch {cfg.optim.batch_size} must divide evenly over {cfg.ray.num_workers} workers")
    return None


def _anchor_is_a_convention(cfg):
    anchor = cfg.method.anchor
    if anchor is not None and anchor not in cfg.conventions:
        return ("method.anchor", "conventions"), f"anchor {anchor!r} is not one of the conventions {cfg.conventions}"
    return None


def _topk_within_queue(cfg):
    if cfg.method.topk > cfg.method.queue_size:
        return ("method.topk", "method.queue_size"), (
            f"topk {cfg.method.topk} mines more neighbours than the queue holds ({cfg.method.queue_size})")
    return None


def _nesterov_needs_momentum(optim):
    if optim.nesterov and optim.momentum == 0:
        return ("nesterov", "momentum"), "nesterov needs momentum > 0"
    return None


def _blur_sigmas_ordered(aug):
    if aug.blur_sigma_min > aug.blur_sigma_max:
        return ("blur_sigma_min", "blur_sigma_max"), (
            f"blur_sigma_min {aug.blur_sigma_min} is above blur_sigma_max {aug.blur_sigma_max}")
    return None


# ---------------------------------------------------------------- the core settings the config embeds

register(ModelSettings,
         hidden_channels=count(1, 4096), hidden_dim=count(1, 65536), num_blocks=count(1, MAX_BLOCKS),
         temporal_kernel=odd(1, 99), dropout=PROBABILITY_LT1, partition=one_of(*PARTITIONS),
         head=one_of(*HEADS))
register(MethodSettings,
         objective=one_of(*OBJECTIVES), feature_dim=count(1, 65536), queue_size=count(1),
         momentum=PROBABILITY_LT1, temperature=number(0, 100, lo_open=True), mining_epoch=count(0, MAX_EPOCHS),
         topk=count(1), pairing=one_of(*POLICIES), allow_same=ANY, anchor=optional(KNOWN_CONVENTIONS),
         warmup_epochs=count(0, MAX_EPOCHS))
register(OptimSettings, [_nesterov_needs_momentum],
         epochs=EPOCHS, batch_size=BATCH, lr=LR, lr_scaling=one_of("none", "linear"),
         lr_decay_epochs=items(count(0, MAX_EPOCHS)), lr_decay=LR, momentum=PROBABILITY_LT1,
         weight_decay=number(0, 1e4), nesterov=ANY, passes_per_epoch=optional(count(1, 10_000)),
         convention_lr_mult=LR)
register(AugmentConfig, [_blur_sigmas_ordered],
         padding_ratio=count(0, 10_000), shear_amount=SCALE, aug_method=digits("12345"), flip_p=PROBABILITY,
         rotate_main_max_deg=number(0, 360), rotate_other_max_deg=number(0, 360), noise_std=SCALE,
         noise_p=PROBABILITY, blur_kernel=odd(1, 999), blur_sigma_min=number(0, 1e6, lo_open=True),
         blur_sigma_max=number(0, 1e6, lo_open=True), blur_p=PROBABILITY, blur_normalize=ANY,
         axis_mask_p=PROBABILITY)


def register_platform(experiment, data, evaluation, ray, tracking, references) -> None:
    """The platform's own config dataclasses (called by config.py once they exist)."""
    register(data,
             path=text(why="is required (a dataset directory)"), protocol=text(), train_part=text(),
             test_part=text(), val_part=optional(text()), max_train_samples=optional(count(1)),
             max_test_samples=optional(count(1)), allow_inconsistent=ANY)
    register(evaluation,
             enabled=ANY, probe=one_of(*PROBES), linear_epochs=EPOCHS, linear_lr=LR,
             linear_lr_grid=items(LR, min_len=1), linear_milestones=items(count(1, MAX_EPOCHS)),
             linear_batch_size=BATCH, knn_k=count(1, 100_000), ensemble=ANY,
             references=items(one_of(*references), unique=True), val_fraction=FRACTION, batch_size=BATCH,
             probe_every=count(0, MAX_EPOCHS), probe_samples=count(1))
    register(ray,
             address=optional(text()), num_workers=count(1, 100_000), use_gpu=ANY,
             cpus_per_worker=number(0, 1024, lo_open=True), gpus_per_worker=number(0, 64, lo_open=True),
             max_failures=count(-1, 100_000),  # -1: Ray retries forever
             controller_failure_limit=count(0, 100_000), worker_start_timeout_s=number(0, 86_400, lo_open=True),
             checkpoint_every=EPOCHS, num_to_keep=count(1, 100_000), storage_path=optional(text()),
             placement_strategy=one_of("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
             wait_for_resources_s=number(0, 7 * 86_400))
    register(tracking, experiment=text(max_len=500), tracking_uri=optional(text()), system_metrics=ANY,
             embedding_plot=ANY, retry_budget_s=number(0, 7 * 86_400))  # seconds of MLflow outage waited out
    register(experiment,
             [_queue_fits_batch, _batch_splits_over_workers, _anchor_is_a_convention, _topk_within_queue],
             name=run_name, data=ANY, conventions=items(KNOWN_CONVENTIONS, min_len=1, unique=True),
             stream=one_of("joint", "motion", "bone"), model=ANY, method=ANY, optim=ANY, augment=ANY,
             seed=count(0, 2**63 - 1), device=one_of("auto", "cpu", "cuda"), precision=one_of("fp32", "bf16"),
             eval=ANY, ray=ANY, tracking=ANY)
