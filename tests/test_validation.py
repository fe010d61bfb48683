"""Issue 13: settings validated before anything starts (a rule for every key, errors naming
the key, the value and the file or `--set`), YAML 1.2 floats, any run name safe in MLflow
filters, a sweep's best trial in its `mode`, and a refused checkpoint as a typed error."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fault_report import fault_case

from msclr_core.errors import ConfigError, MsclrError
from msclr_platform import validate
from msclr_platform.config import ExperimentConfig, _safe_yaml, load_config
from msclr_platform.sweep import SweepSpec

REPO = Path(__file__).resolve().parents[1]
MSCLR = str(Path(sys.executable).with_name("msclr"))


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def nested(dotted: str, value) -> dict:
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


# ---------------------------------------------------------------- a rule for every key


def config_classes(cls, seen: set | None = None) -> set:
    """`cls` and every dataclass reachable through its fields' types."""
    seen = set() if seen is None else seen
    seen.add(cls)
    for tp in typing.get_type_hints(cls).values():
        for t in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(t) and t not in seen:
                config_classes(t, seen)
    return seen


def test_every_config_key_has_a_rule():
    classes = config_classes(ExperimentConfig) | config_classes(SweepSpec)
    assert len(classes) >= 11  # experiment, data, model, method, optim, augment, eval, ray, tracking, sweep, scheduler
    for cls in classes:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(validate.RULES.get(cls, {})) == fields, f"{cls.__name__}: rules and fields differ"


# (key, a bad value, a good value), written as `--set` would take them
CASES = [
    ("optim.epochs", "0", "1"), ("optim.epochs", "-3", "300"), ("optim.epochs", "1e23", "1000000"),
    ("optim.lr", "-1", "1e-4"), ("optim.lr", "0", "0.5"), ("method.temperature", "0", "0.07"),
    ("method.momentum", "2", "0.99"), ("method.momentum", "1", "0"), ("method.objective", "foo", "skeletonclr"),
    ("model.num_blocks", "0", "1"), ("model.num_blocks", "65", "64"), ("ray.num_workers", "0", "2"),
    ("ray.checkpoint_every", "0", "5"), ("optim.batch_size", "0", "64"), ("method.queue_size", "0", "256"),
    ("method.queue_size", "1000", "1024"), ("conventions", "[]", "[smpl_24]"),
    ("conventions", "[ntu-rgb+d, ntu-rgb+d]", "[ntu-rgb+d]"), ("conventions", "[nope]", "[h36m_17, coco_17]"),
    ("model.temporal_kernel", "4", "3"), ("model.dropout", "1", "0.9"), ("model.head", "big", "linear"),
    ("model.partition", "x", "hop"), ("model.hidden_channels", "0", "4"), ("method.pairing", "x", "all_pairs"),
    ("method.topk", "0", "2"), ("method.feature_dim", "0", "16"), ("method.anchor", "smpl_24", "smplx_42"),
    ("method.warmup_epochs", "-1", "2"), ("optim.lr_scaling", "x", "linear"), ("optim.momentum", "1", "0.5"),
    ("optim.weight_decay", "-1", "0"), ("optim.passes_per_epoch", "0", "3"), ("optim.lr_decay", "0", "0.5"),
    ("optim.lr_decay_epochs", "[-1]", "[10, 20]"), ("eval.knn_k", "0", "5"), ("eval.val_fraction", "1", "0.5"),
    ("eval.references", "[raw, nope]", "[raw, supervised]"), ("eval.probe", "x", "paper"),
    ("eval.linear_lr_grid", "[]", "[0.5]"), ("eval.linear_epochs", "0", "10"), ("eval.probe_every", "-1", "2"),
    ("ray.cpus_per_worker", "0", "0.5"), ("ray.num_to_keep", "0", "1"), ("ray.max_failures", "-2", "-1"),
    ("ray.worker_start_timeout_s", "0", "10"), ("seed", "-1", "7"), ("stream", "x", "bone"),
    ("device", "tpu", "cpu"), ("precision", "fp16", "bf16"), ("name", "a/b", "o'brien"), ("name", "..", "a.b"),
    ("augment.flip_p", "2", "1"), ("augment.blur_kernel", "4", "5"), ("augment.aug_method", "'129'", "'12'"),
    ("augment.blur_sigma_min", "5", "1"), ("data.max_train_samples", "0", "10"), ("data.protocol", "''", "xview"),
    ("tracking.experiment", "''", "e"),
]


@pytest.mark.parametrize("key, bad, good", CASES, ids=[f"{k}={b}" for k, b, _ in CASES])
def test_each_rule_refuses_bad_and_keeps_good_values(tmp_path, key, bad, good):
    p = write(tmp_path, "name: t\ndata: {path: x}\n")
    with pytest.raises(ConfigError) as e:  # from --set: the message names --set, not the file
        load_config(p, [f"{key}={bad}"])
    msg = str(e.value)
    assert msg.startswith("--set") and key in msg and str(p) not in msg, msg
    raw = {"name": "t", "data": {"path": "x"}} | nested(key, _safe_yaml(bad, "test"))
    f = write(tmp_path, yaml.safe_dump(raw), "file.yaml")
    with pytest.raises(ConfigError) as e:  # from the file: the message names the file, not --set
        load_config(f)
    assert str(f) in str(e.value) and key in str(e.value) and "--set" not in str(e.value), str(e.value)
    cfg = load_config(p, [f"{key}={good}"])  # the rule is not just "refuse"
    value = cfg.to_dict()
    for part in key.split("."):
        value = value[part]
    assert value == _safe_yaml(good, "test")


def test_rules_between_keys_name_both_keys(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\noptim: {batch_size: 100}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "method.queue_size" in str(e.value) and "optim.batch_size" in str(e.value) and str(p) in str(e.value)
    with pytest.raises(ConfigError, match="optim.batch_size.*ray.num_workers"):
        load_config(p, ["optim.batch_size=128", "ray.num_workers=3"])
    with pytest.raises(ConfigError, match=r"^--set: keys 'optim.nesterov' / 'optim.momentum'"):
        load_config(p, ["optim.batch_size=128", "optim.nesterov=true", "optim.momentum=0"])


@pytest.mark.faults
def test_issue_table_rows_fail_at_load_naming_the_key(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\n")

    def refused(*overrides):
        with pytest.raises(ConfigError) as e:
            load_config(p, list(overrides))
        key = overrides[-1].split("=")[0]
        assert key in str(e.value) and "--set" in str(e.value), str(e.value)
        return str(e.value)

    with fault_case("optim.epochs=0: refused at load naming the key") as case:
        case["detail"] = refused("optim.epochs=0")
    with fault_case("ray.num_workers=0 / ray.checkpoint_every=0: refused at load") as case:
        case["detail"] = " | ".join([refused("ray.num_workers=0"), refused("ray.checkpoint_every=0")])
    with fault_case("epochs=-3, 1e23, lr=-1, temperature=0, momentum=2, objective=foo, num_blocks=0: refused") as case:
        for o in ("optim.epochs=-3", "optim.epochs=1e23", "optim.lr=-1", "method.temperature=0", "method.momentum=2",
                  "method.objective=foo", "model.num_blocks=0"):
            refused(o)
        case["detail"] = "7 of 7 refused, each naming its key and --set"


# ---------------------------------------------------------------- before anything starts (a real `msclr`)


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (what the CLI started inherits it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:  # gone, or not ours
                pass
    return found


@pytest.mark.faults
def test_cli_refuses_bad_settings_before_ray_or_mlflow_start(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    marker = f"msclr-validation-{os.getpid()}-{tmp_path.name}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(MSCLR_HOME=str(home), MSCLR_VALIDATION_MARKER=marker, PYTHONPROFILEIMPORTTIME="1")
    with fault_case("msclr pretrain --set optim.epochs=0: exit 2 before any Ray or MLflow process") as case:
        p = subprocess.run(
            [MSCLR, "pretrain", str(REPO / "experiments/quickstart.yaml"), "--set", "optim.lr=1e-3",
             "--set", "optim.epochs=0", "--set", f"data.path={tmp_path / 'no-data'}"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        errors = [line for line in p.stderr.splitlines() if not line.startswith("import time:")]
        assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
        assert "msclr: error: --set: key 'optim.epochs' must be in [1, 1000000], got 0" in errors, errors
        assert not any("Traceback" in line or "optim.lr" in line for line in errors), errors  # 1e-3: a float
        imported = {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w.]+)$", p.stderr, re.M)}
        assert not {m for m in imported if m.split(".")[0] == "ray"}, "ray was imported"
        assert list(home.iterdir()) == [], "something was started or written under MSCLR_HOME"
        assert processes_with(marker) == [], "a process the CLI started is still alive"
        case["detail"] = "exit 2 naming --set optim.epochs; ray never imported, MSCLR_HOME empty, no process left"


# ---------------------------------------------------------------- YAML 1.2 floats


@pytest.mark.faults
def test_yaml_12_floats_in_files_and_set(tmp_path):
    with fault_case("lr: 1e-4 in a YAML file and --set optim.lr=1e-3: floats") as case:
        p = write(tmp_path, "name: t\ndata: {path: x}\noptim: {lr: 1e-4, lr_decay: 5E-1}\n"
                            "method: {temperature: .7e-1}\n")
        cfg = load_config(p)
        assert (cfg.optim.lr, cfg.optim.lr_decay, cfg.method.temperature) == (1e-4, 0.5, 0.07)
        assert load_config(p, ["optim.lr=1e-3"]).optim.lr == 1e-3
        assert load_config(p, ["optim.lr=-1e+2", "optim.lr=2.5e1"]).optim.lr == 25.0
        case["detail"] = "1e-4, 5E-1, .7e-1, --set 1e-3 all floats"
    assert [_safe_yaml(t, "t") for t in ("1", "1.5", "1e", "e5", "1e5x", "0x10")] == [1, 1.5, "1e", "e5", "1e5x", 16]
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own SafeLoader is left alone
    with pytest.raises(ConfigError) as e:  # a wrong type from --set names --set, not the file
        load_config(p, ["optim.lr=abc"])
    assert str(e.value) == "--set: key 'optim.lr': expected float, got str 'abc'"
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "name: t\ndata: {path: x}\noptim: {lr: abc}\n"))
    assert str(e.value).startswith(str(tmp_path / "exp.yaml")) and "--set" not in str(e.value)
    tag = write(tmp_path, "name: !!python/object/apply:os.system ['true']\ndata: {path: x}\n", "tag.yaml")
    with pytest.raises(ConfigError, match="tag.yaml"):  # tags are still refused
        load_config(tag)


# ---------------------------------------------------------------- run names in MLflow filters

NAMES = ["o'brien", 'a"b', "back\\slash", "`tick`", "50%_x", "both'\"quotes", "end\\", "x\\'y"]
DECOYS = ["obrien", "o_brien", "50%ax", "50ab_x", "5000_x", "bothXXquotes", "both__quotes", "end"]


@pytest.mark.faults
def test_any_run_name_is_found_exactly(mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import RUN_NAME_TAG, find_runs_by_name, get_or_create_run

    client = MlflowClient(mlflow_server)
    with fault_case("name=o'brien (and \", \\, `, %, _): found again by name, nothing else matched") as case:
        ids = {}
        for name in DECOYS + NAMES:
            ids[name], resumed = get_or_create_run(client, "names", name)
            assert not resumed, f"{name!r} matched another run"
        exp = client.get_experiment_by_name("names").experiment_id
        for name in NAMES + DECOYS:
            assert get_or_create_run(client, "names", name) == (ids[name], True), name
            runs = find_runs_by_name(client, [exp], name)
            assert [r.info.run_id for r in runs] == [ids[name]], name
            assert runs[0].data.tags[RUN_NAME_TAG] == name
        assert find_runs_by_name(client, [exp], "o'bri") == [] and find_runs_by_name(client, [exp], "%") == []
        case["detail"] = f"{len(NAMES)} hostile names and {len(DECOYS)} look-alikes, each found exactly once"


def test_pretrain_run_id_of_a_quoted_name(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform.runs import pretrain_run_id
    from msclr_platform.tracking import get_or_create_run

    cfg = load_config(write(tmp_path, "name: \"o'brien \\\"x\\\"\"\ndata: {path: x}\ntracking: {experiment: quoted}\n"),
                      [f"tracking.tracking_uri={mlflow_server}"])
    assert cfg.name == "o'brien \"x\""
    assert pretrain_run_id(cfg) is None
    run_id, _ = get_or_create_run(MlflowClient(mlflow_server), "quoted", cfg.name)
    assert pretrain_run_id(cfg) == run_id


# ---------------------------------------------------------------- sweeps: the best trial in `mode`


def sweep_table() -> pd.DataFrame:
    """A results_table as run_sweep builds it: two finished trials, one stopped early, one failed."""
    rows = [("t1", 0.1, 3, "TERMINATED", False, 0.5, 0.30), ("t2", 0.2, 3, "TERMINATED", False, 0.2, 0.50),
            ("t3", 0.3, 3, "TERMINATED", False, 0.9, 0.70), ("t4", 0.4, 1, "TERMINATED", True, 0.01, None),
            ("t5", 0.5, 2, "ERROR", False, 0.0, None), ("t6", 0.6, 3, "TERMINATED", False, float("nan"), 0.9)]
    return pd.DataFrame(rows, columns=["trial_id", "optim.lr", "epochs_done", "status", "stopped_early", "loss",
                                       "final_linear_top1"])


def test_best_trial_follows_metric_and_mode():
    from msclr_platform.sweep import best_trial

    table = sweep_table()
    assert best_trial(table, "loss", "min") == "t2"  # not t4 (stopped early), t5 (failed) or t6 (no value)
    assert best_trial(table, "loss", "max") == "t3"
    assert best_trial(table, "final_linear_top1", "max") == "t6"
    assert best_trial(table, "final_linear_top1", "min") == "t1"
    assert best_trial(table.iloc[3:5], "loss", "min") is None
    assert best_trial(table, "not_reported", "max") is None


@pytest.mark.faults
@pytest.mark.parametrize("mode, best", [("min", "t2"), ("max", "t3")])
def test_sweep_logs_the_best_trial_of_its_mode(mlflow_server, mode, best, tmp_path):
    from mlflow.tracking import MlflowClient

    from msclr_platform.config import ExperimentConfig, RayConfig

    from msclr_platform.search_space import SchedulerSpec
    from msclr_platform.sweep import _log_sweep_results
    from msclr_platform.tracking import get_or_create_run

    client = MlflowClient(mlflow_server)
    spec = SweepSpec(name=f"mode-{mode}", metric="loss", mode=mode, search={"optim.lr": {"grid": [0.1]}},
                     scheduler=SchedulerSpec())
    parent, _ = get_or_create_run(client, "sweep-modes", f"sweep-{spec.name}")
    children = {t: get_or_create_run(client, "sweep-modes", f"{spec.name}-{t}", parent_run_id=parent)[0]
                for t in sweep_table()["trial_id"]}
    with fault_case(f"mode: {mode} in a sweep: the best trial is the {'lowest' if mode == 'min' else 'highest'} loss"):
        base = ExperimentConfig(ray=RayConfig(storage_path=str(tmp_path)))  # no trial checkpoints to sync
        assert _log_sweep_results(client, parent, spec, sweep_table(), base) == best
        assert client.get_run(parent).data.tags["best_trial"] == best
        tagged = [t for t, run_id in children.items() if client.get_run(run_id).data.tags.get("msclr.best_trial")]
        assert tagged == [best]
        assert client.get_run(children["t4"]).info.status == "KILLED"  # stopped early, closed


# ---------------------------------------------------------------- a refused checkpoint


class _Payload:
    """Pickles as a call to os.system: what a tampered checkpoint would hold."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return os.system, (f"touch {self.canary}",)


@pytest.mark.faults
def test_malicious_checkpoint_is_a_typed_error_naming_the_file(tmp_path):
    from msclr_platform.train import CKPT_FILE, CheckpointReadError, load_state

    canary = tmp_path / "pwned"
    ckpt = tmp_path / "runs" / "evil" / "epoch-00001" / CKPT_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "model": {"w": torch.zeros(2)}, "history": [_Payload(canary)]}, ckpt)
    with fault_case("a malicious state.pt: typed error naming the file, never weights_only=False") as case:
        with pytest.raises(CheckpointReadError) as e:
            load_state(ckpt)
        assert isinstance(e.value, MsclrError) and str(ckpt) in str(e.value) and "system" in str(e.value)
        assert "weights_only" not in str(e.value) and not canary.exists()
        cfg_path = write(tmp_path, f"name: evil\ndata: {{path: x}}\nray: {{storage_path: {tmp_path / 'runs'}}}\n")
        p = subprocess.run([MSCLR, "evaluate", str(cfg_path)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MSCLR_HOME": str(tmp_path / "home")})
        assert p.returncode == 2 and str(ckpt) in p.stderr, (p.returncode, p.stderr[-3000:])
        assert "Traceback" not in p.stderr and "weights_only" not in p.stderr and not canary.exists()
        case["detail"] = p.stderr.strip().splitlines()[-1][:160]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(CheckpointReadError, match=re.escape(str(truncated))):
        load_state(truncated)
