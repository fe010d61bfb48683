"""Experiment configs: typed validation, overrides, path resolution, shipped YAMLs."""

from pathlib import Path

import pytest

from msclr_core.errors import ConfigError
from msclr_platform.config import ExperimentConfig, flatten, load_config, parse_overrides
from msclr_platform.yaml_files import read_layers

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


PAPER_CONFIGS = sorted((REPO / "experiments/ntu60").glob("*.yaml")) + sorted((REPO / "experiments/ntu120").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_paper_configs_use_the_official_protocol(path):
    """Issue 16: the reference configs reproduce the paper: official blur, fp32, paper probe."""
    cfg = load_config(path)
    assert cfg.augment.blur_normalize is False and cfg.precision == "fp32"
    assert cfg.conventions == ["ntu-rgb+d", "smplx_42"] and cfg.model.partition == "official"
    assert cfg.eval.probe == "paper" and cfg.eval.ensemble
    assert (cfg.method.objective, cfg.method.pairing, cfg.optim.epochs, cfg.optim.lr_decay_epochs) == (
        "aimclr", "full_random", 300, [250])
    assert cfg.name == f"{path.parent.name}-{path.stem.replace('_', '-')}"  # names follow the files
    stating = [file for file, raw in read_layers(path.resolve()) if "path" in raw.get("data", {})][-1]
    assert f"--benchmark {path.parent.name}" in stating.read_text()  # the data recipe matches the set


def test_ntu120_configs_cover_both_protocols_and_three_streams():
    from msclr_core.data.ntu import BENCHMARKS

    cfgs = [load_config(p) for p in (REPO / "experiments/ntu120").glob("*.yaml")]
    assert sorted((c.data.protocol, c.stream) for c in cfgs) == sorted(
        (p, s) for p in ("xsub120", "xset120") for s in ("joint", "motion", "bone"))
    assert {c.data.protocol for c in cfgs} == set(BENCHMARKS["ntu120"][2])  # the split code's protocol names
    assert all(c.data.path.endswith("data/ntu120") for c in cfgs)


# ---------------------------------------------------------------- `base:` inheritance (issue 14)

NTU60 = REPO / "experiments/ntu60"
# each shipped config: its stated differences from ntu60/xsub_joint.yaml (the base)
SHRUNK = {
    f"{bench}/{proto}_{stream}.yaml": {"name": f"{bench}-{proto}-{stream}", "stream": stream, "data.protocol": proto,
                                       "data.path": str((REPO / "data" / bench).resolve()),
                                       "tracking.experiment": f"{bench}-msclr"}
    for bench, protos in (("ntu60", ("xsub", "xview")), ("ntu120", ("xsub120", "xset120")))
    for proto in protos for stream in ("joint", "bone", "motion")
}


@pytest.mark.parametrize("rel", sorted(SHRUNK))
def test_shipped_configs_are_the_base_plus_their_differences(rel):
    """Each shrunk YAML resolves to exactly the base with the keys it states changed."""
    expected = flatten(load_config(NTU60 / "xsub_joint.yaml").to_dict()) | SHRUNK[rel]
    assert flatten(load_config(REPO / "experiments" / rel).to_dict()) == expected
    if rel != "ntu60/xsub_joint.yaml":
        text = (REPO / "experiments" / rel).read_text()
        assert "\nbase: " in text and len(text.splitlines()) <= 12  # inherits, states only what differs


def test_base_merges_nested_keys_replaces_lists_and_chains(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", "name: root\ndata: {path: ../ds, protocol: xview}\noptim: {lr: 0.5, lr_decay_epochs: [5, 8]}\n"
          "conventions: [ntu-rgb+d, smplx_42]\n", "root.yaml")
    write(tmp_path / "b", "base: ../a/root.yaml\noptim: {epochs: 9, lr_decay_epochs: [7]}\n", "mid.yaml")
    leaf = write(tmp_path, "base: b/mid.yaml\nname: leaf\nconventions: [ntu-rgb+d]\ndata: {protocol: xsub}\n", "leaf.yaml")
    cfg = load_config(leaf)
    assert cfg.name == "leaf" and cfg.conventions == ["ntu-rgb+d"]  # scalars and lists replace
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.lr_decay_epochs) == (0.5, 9, [7])  # mappings merge key by key
    assert cfg.data.protocol == "xsub"
    assert cfg.data.path == str((tmp_path / "ds").resolve())  # relative to the file that states it (a/)
    assert "base" not in cfg.to_dict()


def test_a_path_stated_in_the_child_is_relative_to_the_child(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    write(tmp_path, "name: root\ndata: {path: ds}\nray: {storage_path: runs}\n", "root.yaml")
    child = write(tmp_path / "deep" / "er", "base: ../../root.yaml\ndata: {path: mine}\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.data.path == str(tmp_path / "deep" / "er" / "mine")
    assert cfg.ray.storage_path == str(tmp_path / "runs")


def test_a_cycle_of_bases_is_a_config_error_naming_the_files(tmp_path):
    a = write(tmp_path, "base: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "base: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"cycle") as err:
        load_config(a)
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)
    with pytest.raises(ConfigError, match=r"self.yaml: key 'base'.*cycle"):
        load_config(write(tmp_path, "base: self.yaml\n", "self.yaml"))


@pytest.mark.parametrize("text, message", [
    ("base: missing.yaml\n", r"exp.yaml: key 'base': 'missing.yaml' is not a file"),
    ("base: [a.yaml]\n", r"exp.yaml: key 'base': expected the path of an experiment YAML"),
    ("base: ''\n", r"exp.yaml: key 'base': expected the path"),
])
def test_a_bad_base_is_a_config_error_naming_file_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_an_error_in_a_base_names_the_chain(tmp_path):
    write(tmp_path, "name: root\ndata: {path: ds}\noptim: {nope: 1}\n", "root.yaml")
    child = write(tmp_path, "base: root.yaml\nname: c\n", "child.yaml")
    with pytest.raises(ConfigError, match=r"child.yaml \(base: .*root.yaml\): unknown key 'optim.nope'"):
        load_config(child)


def test_set_overrides_apply_over_the_inherited_config():
    cfg = load_config(NTU60 / "xview_bone.yaml", ["optim.lr=0.05", "data.protocol=xsub"])
    assert (cfg.optim.lr, cfg.data.protocol, cfg.stream, cfg.optim.epochs) == (0.05, "xsub", "bone", 300)


# ---------------------------------------------------------------- paths and hostile YAML (issue 7)


def test_set_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    """`msclr pretrain experiments/x.yaml --set data.path=data/ntu60` means ./data/ntu60."""
    conf = tmp_path / "experiments" / "ntu60"
    conf.mkdir(parents=True)
    p = write(conf, "name: t\ndata: {path: ../../data/default}\nray: {storage_path: runs}\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(p, ["data.path=data/ntu60", "ray.storage_path=out"])
    assert cfg.data.path == str(work / "data/ntu60") and cfg.ray.storage_path == str(work / "out")
    assert load_config(p).data.path == str(tmp_path / "data/default")  # file paths: beside the file


def test_uris_and_sqlite_paths(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\nray: {storage_path: 'runs/a://b'}\n"
                        "tracking: {tracking_uri: 'sqlite:///mlflow.db'}\n")
    cfg = load_config(p)
    assert cfg.ray.storage_path == str(tmp_path / "runs/a:/b")  # not a URI scheme: a path beside the file
    assert cfg.tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # not each worker's cwd
    cfg = load_config(p, ["ray.storage_path=s3://bucket/runs", "tracking.tracking_uri=sqlite:////abs/m.db"])
    assert cfg.ray.storage_path == "s3://bucket/runs" and cfg.tracking.tracking_uri == "sqlite:////abs/m.db"


@pytest.mark.parametrize("body, key", [
    ("name: ../../elsewhere", "name"),
    ("name: a/b", "name"),
    ('data: {path: "a\\0b"}', "data.path"),
    ("optim: {lr: .nan}", "optim.lr"),
    ("optim: {lr: 1.0e+999}", "optim.lr"),
    ("augment: {flip_p: 2}", "augment.flip_p"),
    ("1: x", "1"),
])
def test_bad_values_name_file_and_key(tmp_path, body, key):
    p = write(tmp_path, f"name: t\ndata: {{path: x}}\n{body}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and key in str(e.value)


@pytest.mark.parametrize("text, where", [
    ("- a\n- b\n", "top level"),
    ("name: " + "[" * 1200 + "\n", "top level"),
    ("name: " + "1" * 5000 + "\n", "line 1"),
    ("name: t\nx: \x01\n", "line 2"),
    ("name: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in
                                                           zip("abcde", "bcdef")) + "]\ndata: {path: x}\n", "'name'"),
])
def test_hostile_yaml_is_a_config_error(tmp_path, text, where):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:  # the alias bomb's 9**6 leaves are never printed
        load_config(p)
    assert str(p) in str(e.value) and where in str(e.value) and len(str(e.value)) < 2000


def test_non_utf8_config(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes(b"name: t\ndata: {path: caf\xe9}\n")
    with pytest.raises(ConfigError, match="not UTF-8") as e:
        load_config(p)
    assert str(p) in str(e.value)


def test_set_overrides_that_do_not_fit(tmp_path):
    p = write(tmp_path, "name: t\ndata: {path: x}\n")
    with pytest.raises(ConfigError, match="already set"):
        parse_overrides(["optim=1", "optim.lr=2"])
    with pytest.raises(ConfigError, match="empty part"):
        parse_overrides(["optim..lr=2"])
    with pytest.raises(ConfigError, match="--set optim.lr: invalid YAML"):
        load_config(p, ["optim.lr=[1"])
