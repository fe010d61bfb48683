"""Sweep search spaces and schedulers (issue 14): Tune's own spellings, the values load_sweep
preflights for each, errors naming the file and key, and the schedulers refused at load time.
Fast: no Ray runtime (the accepted schedulers run for real in test_sweep_schedulers.py)."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from msclr_core.errors import ConfigError
from msclr_platform.search_space import (DISTRIBUTIONS, REFUSED, SchedulerSpec, candidates, check_distribution,
                                         expected_trials, param_space, scheduler)

REPO = Path(__file__).resolve().parents[1]


def domain(kind, arg):
    return param_space(SimpleNamespace(search={"k": {kind: arg}}))["params"]["k"]


def sampler_chain(d):
    """The sampler's class names, outermost first: Quantized(LogUniform) -> ['Quantized', '_LogUniform']."""
    s, names = d.get_sampler(), []
    while s is not None:
        names.append(type(s).__name__)
        s = getattr(s, "sampler", None)
    return names


@pytest.mark.parametrize("kind, arg, cls, sampler, bounds, q", [
    ("choice", [1, 2], "Categorical", ["_Uniform"], None, None),
    ("uniform", [0.1, 0.5], "Float", ["_Uniform"], (0.1, 0.5), None),
    ("quniform", [0.05, 0.2, 0.05], "Float", ["Quantized", "_Uniform"], (0.05, 0.2), 0.05),
    ("loguniform", [1e-4, 0.1], "Float", ["_LogUniform"], (1e-4, 0.1), None),
    ("qloguniform", [1e-3, 0.1, 1e-3], "Float", ["Quantized", "_LogUniform"], (1e-3, 0.1), 1e-3),
    ("randint", [1, 5], "Integer", ["_Uniform"], (1, 5), None),
    ("lograndint", [16, 1024], "Integer", ["_LogUniform"], (16, 1024), None),
    ("qrandint", [16, 1024, 16], "Integer", ["Quantized", "_Uniform"], (16, 1024), 16),
    ("qlograndint", [16, 1024, 16], "Integer", ["Quantized", "_LogUniform"], (16, 1024), 16),
    ("randn", [0.1, 0.01], "Float", ["_Normal"], None, None),
    ("qrandn", [0.1, 0.01, 0.005], "Float", ["Quantized", "_Normal"], None, 0.005),
])  # fmt: skip
def test_each_spelling_is_the_tune_domain_of_its_name(kind, arg, cls, sampler, bounds, q):
    import numpy as np

    d = domain(kind, arg)
    assert type(d).__name__ == cls and sampler_chain(d) == sampler
    if bounds:
        assert (d.lower, d.upper) == bounds
    if q:
        assert d.get_sampler().q == q
    if kind in ("randn", "qrandn"):
        normal = d.get_sampler() if kind == "randn" else d.get_sampler().sampler
        assert (normal.mean, normal.sd) == (arg[0], arg[1])
        return
    if kind == "choice":
        assert d.categories == arg
    # every value Tune draws lies within what load_sweep preflights (both ends, or every value)
    values = candidates("k", {kind: arg}, "s.yaml")
    drawn = np.asarray(d.sample(size=400, random_state=np.random.default_rng(0)))
    assert min(values) - 1e-9 <= drawn.min() and drawn.max() <= max(values) + 1e-9, (values, drawn.min(), drawn.max())
    if kind in ("randint", "qrandint", "qlograndint"):  # small integer sets are preflighted whole
        assert set(drawn.tolist()) <= set(values)


def test_grid_and_grid_search_are_one_thing():
    assert domain("grid", [1, 2]) == domain("grid_search", [1, 2]) == {"grid_search": [1, 2]}
    spec = SimpleNamespace(num_samples=2, search={"a": {"grid": [1, 2]}, "b": {"grid_search": [1, 2, 3]},
                                                  "c": {"choice": [1, 2]}})
    assert expected_trials(spec) == 12


@pytest.mark.parametrize("kind, arg, want", [
    ("grid_search", [0.1, 0.2], [0.1, 0.2]),
    ("randint", [2, 5], [2, 3, 4]),  # every value of a small integer range
    ("randint", [1, 1000], [1, 999]),  # both ends of a large one
    ("quniform", [0.05, 0.2, 0.05], [0.05, 0.2]),
    ("qloguniform", [0.001, 0.1, 0.001], [0.001, 0.1]),
    ("lograndint", [1, 4], [1, 2, 3]),
    ("qrandint", [2, 9, 2], [2, 4, 6, 8]),  # q > 1: high inclusive, as Tune draws
    ("qrandint", [2, 9, 1], [2, 3, 4, 5, 6, 7, 8]),  # q = 1: high exclusive, as Tune draws
    ("qlograndint", [16, 4096, 16], [16, 4096]),
    ("randn", [0.1, 0.01], [0.07, 0.13]),  # mean +- 3 sd
    ("qrandn", [0.1, 0.01, 0.02], [0.06, 0.14]),
])  # fmt: skip
def test_candidates_are_what_load_sweep_preflights(kind, arg, want):
    assert candidates("k", {kind: arg}, "s.yaml") == pytest.approx(want)


@pytest.mark.parametrize("dist", [
    {"grid_search": []}, {"grid_search": 3}, {"choice": []},
    {"uniform": [0.5, 0.1]}, {"uniform": [True, 2]}, {"uniform": [0, float("inf")]},
    {"quniform": [0.1, 0.5]}, {"quniform": [0.1, 0.5, 0]}, {"quniform": [0.03, 0.2, 0.05]},  # Tune: bounds must be multiples of q
    {"loguniform": [0, 1]}, {"qloguniform": [0.001, 0.1, -1]}, {"qloguniform": [0.001, 0.1, 0.003]},
    {"randint": [1.5, 3]}, {"lograndint": [0, 8]}, {"lograndint": [1, 8, 2]},
    {"qrandint": [1, 3, 5]}, {"qrandint": [1, 8]}, {"qlograndint": [0, 64, 8]},
    {"randn": [0.1, 0]}, {"randn": [0.1]}, {"qrandn": [0.1, 0.1, 0]},
])  # fmt: skip
def test_bad_args_name_file_key_and_kind(dist):
    (kind, _), = dist.items()
    with pytest.raises(ConfigError, match=rf"^s\.yaml: key 'search\.optim\.lr\.{kind}': expected "):
        candidates("optim.lr", dist, "s.yaml")


@pytest.mark.parametrize("dist", [{"normal": [0, 1]}, {"grid": [1], "choice": [1]}, [1, 2], {}, {1: [1]}])
def test_unknown_shapes_list_the_spellings(dist):
    with pytest.raises(ConfigError, match=r"^s\.yaml: key 'search\.optim\.lr': expected one of .*grid_search.*quniform"):
        check_distribution("optim.lr", dist, "s.yaml")
    assert {"grid_search", "quniform", "qloguniform", "lograndint", "randn"} <= set(DISTRIBUTIONS)


# ---------------------------------------------------------------- schedulers


@pytest.mark.parametrize("kind, why", [("pbt", "Tune checkpoint"), ("pb2", "Tune checkpoint"),
                                       ("hyperband", "pauses"), ("bohb", "one of asha, fifo, median")])
def test_refused_schedulers_fail_at_load_time_saying_why(tmp_path, kind, why):
    from msclr_platform.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: nowhere.yaml\nsearch:\n  optim.lr: {{grid_search: [0.1]}}\nscheduler: {{type: {kind}}}\n")
    with pytest.raises(ConfigError, match="scheduler.type") as err:
        load_sweep(path)
    assert str(path) in str(err.value) and why in str(err.value)
    if kind in REFUSED:
        assert "use asha" in str(err.value)


@pytest.mark.parametrize("kind, cls", [("asha", "AsyncHyperBandScheduler"), ("fifo", "FIFOScheduler"),
                                       ("median", "SweepMedian")])
def test_accepted_schedulers(kind, cls):
    s = scheduler(SimpleNamespace(scheduler=SchedulerSpec(type=kind)), epochs=4)
    assert type(s).__name__ == cls


class FakeTrial:  # what the rule reads of a trial: hashable, with an id
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_median_rule_stops_below_median_never_pauses_and_spares_the_last_epoch():
    from ray.tune.schedulers import TrialScheduler

    rule = scheduler(SimpleNamespace(scheduler=SchedulerSpec(type="median", grace_period=1)), epochs=3)
    rule.set_search_properties("probe_knn_top1", "max")
    others = [FakeTrial(f"o{i}") for i in range(3)]
    for t, acc in zip(others, (0.5, 0.6, 0.7)):
        for epoch in (1, 2, 3):
            rule.on_trial_result(None, t, {"epoch": epoch, "probe_knn_top1": acc})
    lone, weak, late = FakeTrial("lone"), FakeTrial("weak"), FakeTrial("late")
    fresh = scheduler(SimpleNamespace(scheduler=SchedulerSpec(type="median")), epochs=3)
    fresh.set_search_properties("probe_knn_top1", "max")
    # too few others to compare: Tune's rule would PAUSE it while trials are pending; ours continues
    assert fresh.on_trial_result(None, lone, {"epoch": 1, "probe_knn_top1": 0.1}) == TrialScheduler.CONTINUE
    assert rule.on_trial_result(None, weak, {"epoch": 1, "probe_knn_top1": 0.1}) == TrialScheduler.STOP
    assert rule.on_trial_result(None, late, {"epoch": 2, "probe_knn_top1": 0.9}) == TrialScheduler.CONTINUE
    # trained every epoch: the result that precedes the final evaluation never stops it
    assert rule.on_trial_result(None, late, {"epoch": 3, "probe_knn_top1": 0.0}) == TrialScheduler.CONTINUE


# ---------------------------------------------------------------- load_sweep with the new spellings


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("searchspace") / "synth"
    write_synth_dataset(root, clips=120, seed=2, conventions=["ntu-rgb+d", "smplx_42"])
    return root


def test_load_sweep_preflights_the_new_spellings(tmp_path, small_dataset, msclr_home):
    from msclr_platform.sweep import load_sweep

    def sweep(search):
        path = tmp_path / "s.yaml"
        path.write_text(f"name: s\nbase: {REPO / 'experiments/quickstart.yaml'}\nsearch:\n{search}\n")
        return load_sweep(path, [f"data.path={small_dataset}"]), path

    ok, _ = sweep("  optim.lr: {grid_search: [0.05, 0.01]}\n  method.temperature: {quniform: [0.05, 0.2, 0.05]}\n"
                  "  method.queue_size: {qrandint: [512, 1024, 512]}\n  optim.weight_decay: {qloguniform: [1e-5, 1e-3, 1e-5]}\n"
                  "  method.momentum: {randn: [0.99, 0.002]}\n  model.num_blocks: {lograndint: [1, 4]}")
    assert expected_trials(ok.spec) == 2
    with pytest.raises(ConfigError, match="search.method.temperature") as err:  # 0.1 - 3 x 0.05 < 0
        sweep("  method.temperature: {randn: [0.1, 0.05]}")
    assert "temperature" in str(err.value)
    with pytest.raises(ConfigError, match="search.method.queue_size"):  # 96 is not a multiple of the batch 64
        sweep("  method.queue_size: {qrandint: [64, 256, 32]}")
