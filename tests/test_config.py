"""Experiment configs: typed validation, overrides, path resolution, shipped YAMLs."""

from pathlib import Path

import pytest

from msclr_core.errors import ConfigError
from msclr_platform.config import ExperimentConfig, flatten, load_config, parse_overrides

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="exp.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_config_resolves_relative_paths_against_the_file(tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    p = write(sub, "name: t\ndata: {path: ../ds}\noptim: {lr: 1}\nray: {storage_path: runs}\n")
    cfg = load_config(p)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.path == str((tmp_path / "ds").resolve())
    assert cfg.ray.storage_path == str((sub / "runs").resolve())
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # int accepted for float


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\noptim: {lrr: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "optim.lrr" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize(
    "body, key",
    [
        ("optim: {epochs: ten}", "optim.epochs"),
        ("conventions: ntu-rgb+d", "conventions"),
        ("method: {allow_same: 3}", "method.allow_same"),
        ("optim: {batch_size: true}", "optim.batch_size"),
        ("precision: fp8", "precision"),
    ],
)
def test_wrong_types_name_the_key(tmp_path, body, key):
    p = write(tmp_path, f"name: t\ndata: {{path: x}}\n{body}\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_missing_data_path_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        load_config(write(tmp_path, "name: t\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, "name: [t\n", "bad.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    p = write(tmp_path, "name: !!python/object/apply:os.system ['touch pwned']\ndata: {path: x}\n")
    with pytest.raises(ConfigError):
        load_config(p)
    assert not (tmp_path / "pwned").exists()


def test_set_overrides_are_typed_and_validated(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\n")
    cfg = load_config(p, ["optim.epochs=7", "conventions=[ntu-rgb+d, smpl_24]", "method.temperature=0.2"])
    assert cfg.optim.epochs == 7 and cfg.conventions == ["ntu-rgb+d", "smpl_24"] and cfg.method.temperature == 0.2
    with pytest.raises(ConfigError, match="optim.nope"):
        load_config(p, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["optim.epochs"])


def test_flatten_for_mlflow_params():
    flat = flatten(ExperimentConfig().to_dict())
    assert flat["optim.lr"] == 0.1 and flat["method.queue_size"] == 32768 and "model.hidden_channels" in flat


@pytest.mark.parametrize("path", sorted((REPO / "experiments").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_configs_validate(path):
    if "sweeps" in path.parts:
        pytest.skip("sweep files are validated by the sweep tests")
    cfg = load_config(path)
    assert cfg.name and cfg.conventions
    settings = cfg.pretrain_settings()
    assert settings.method.queue_size % settings.optim.batch_size == 0


def test_ntu60_configs_match_the_paper():
    cfg = load_config(REPO / "experiments/ntu60/xsub_joint.yaml")
    assert cfg.conventions == ["ntu-rgb+d", "smplx_42"]
    assert (cfg.method.objective, cfg.method.queue_size, cfg.method.temperature, cfg.method.mining_epoch) == ("aimclr", 32768, 0.07, 150)
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.lr_decay_epochs) == (300, 128, 0.1, [250])
    assert (cfg.eval.linear_epochs, cfg.eval.linear_lr, cfg.eval.linear_milestones) == (100, 3.0, [80])
    streams = {load_config(p).stream for p in (REPO / "experiments/ntu60").glob("*.yaml")}
    assert streams == {"joint", "motion", "bone"}
