"""Paper reproduction kit (issue 16, part B): the consistency report of `msclr data check`,
the consistency check of `msclr pretrain` and its override, the CLI options of the recipe
and the README's "Reproducing the paper" commands. Real files, real subprocesses."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MSCLR = str(Path(sys.executable).with_name("msclr"))
ROOT = Path(__file__).resolve().parents[1]
CONVS = ["ntu-rgb+d", "smplx_42"]


def _msclr(*args, env=None, timeout=120):
    return subprocess.run([MSCLR, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def consistent(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("paper-kit") / "synth"
    write_synth_dataset(root, clips=96, seed=3, conventions=CONVS)
    return root


def flipped_copy(src: Path, dst: Path, conv: str = "smplx_42", axis: int = 1) -> Path:
    """A copy of dataset `src` with one axis of one convention negated (a new file, as a rewrite makes)."""
    shutil.copytree(src, dst)
    arr = np.load(dst / f"{conv}.npy")
    arr[:, axis] *= -1
    np.save(dst / f".{conv}.new.npy", arr)
    os.replace(dst / f".{conv}.new.npy", dst / f"{conv}.npy")
    return dst


# ----------------------------------------------------------------------------- msclr data check

def test_data_check_reports_consistency_of_a_consistent_dataset(consistent):
    out = _msclr("data", "check", consistent, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    cons = report["consistency"]
    assert cons["ok"] and cons["sample"] == 96 and [(p["a"], p["b"], p["status"]) for p in cons["pairs"]] == [
        ("ntu-rgb+d", "smplx_42", "ok")]
    assert min(cons["pairs"][0]["corr"].values()) > 0.9
    text = _msclr("data", "check", consistent, "--consistency-sample", 32)
    assert text.returncode == 0 and "ntu-rgb+d vs smplx_42: consistent (corr x +" in text.stdout, text.stdout
    assert "consistency (32 clips per pair" in text.stdout


def test_data_check_fails_on_a_flipped_convention_naming_both(tmp_path, consistent):
    root = flipped_copy(consistent, tmp_path / "flipped")
    out = _msclr("data", "check", root)
    assert out.returncode == 1
    problem = next(line for line in out.stdout.splitlines() if "PROBLEM" in line)
    assert "ntu-rgb+d vs smplx_42: y axis flipped (corr -" in problem, out.stdout
    report = json.loads(_msclr("data", "check", root, "--json").stdout)
    assert not report["ok"] and not report["consistency"]["ok"]
    assert report["consistency"]["pairs"][0]["flipped"] == ["y"]
    assert any("y axis flipped" in p for p in report["problems"])
    skipped = _msclr("data", "check", root, "--no-consistency", "--json")
    assert skipped.returncode == 0 and json.loads(skipped.stdout)["consistency"] is None
    bad = _msclr("data", "check", root, "--consistency-sample", 0)
    assert bad.returncode == 2 and "--consistency-sample" in bad.stderr


# ----------------------------------------------------------------------------- training start

def _config(tmp_path: Path, data: Path, conventions=CONVS, allow=False):
    from msclr_platform.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(f"name: kit\ndata: {{path: {data}, protocol: xsub, allow_inconsistent: {str(allow).lower()}}}\n"
                    f"conventions: [{', '.join(conventions)}]\noptim: {{epochs: 1, batch_size: 8}}\n"
                    "eval: {enabled: false}\n")
    return load_config(path)


def test_training_refuses_disagreeing_conventions_unless_allowed(tmp_path, consistent, capfd):
    from msclr_core.errors import DataError
    from msclr_platform import data as D

    assert D.consistency_status(_config(tmp_path, consistent)) == "ok"
    assert D.consistency_status(_config(tmp_path, consistent, conventions=["smplx_42"])) == "skipped"
    root = shutil.copytree(consistent, tmp_path / "ds")
    cfg = _config(tmp_path, root)
    D.dataset_for(cfg)  # consistent: opens
    flipped_copy(consistent, tmp_path / "flipped")
    os.replace(tmp_path / "flipped" / "smplx_42.npy", root / "smplx_42.npy")  # rewritten after a passing check
    with pytest.raises(DataError) as err:
        D.dataset_for(cfg)  # a new file version: checked again, not served from the cache
    msg = str(err.value)
    assert err.value.field == "conventions" and str(root / "manifest.json") in msg
    assert "ntu-rgb+d vs smplx_42: y axis flipped" in msg and "data.allow_inconsistent" in msg
    allowed = _config(tmp_path, root, allow=True)
    capfd.readouterr()
    assert D.dataset_for(allowed).root == root and D.consistency_status(allowed) == "overridden"
    D.dataset_for(allowed)
    warned = capfd.readouterr().err
    assert warned.count("conventions disagree, training anyway") == 1 and "y axis flipped" in warned


def test_pretrain_refuses_a_flipped_dataset_before_training(tmp_path, consistent, mlflow_server, msclr_home):
    root = flipped_copy(consistent, tmp_path / "flipped")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MSCLR_HOME": str(msclr_home)}
    sets = [f"data.path={root}", "optim.epochs=1", "optim.batch_size=8",
            "method.queue_size=64", "model.num_blocks=2", "model.hidden_channels=4", "model.hidden_dim=8",
            "name=kit-flipped"]
    out = _msclr("pretrain", ROOT / "experiments" / "quickstart.yaml", "--no-eval",
                 *[a for s in sets for a in ("--set", s)], env=env, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "ntu-rgb+d vs smplx_42: y axis flipped" in out.stderr and "allow_inconsistent" in out.stderr
    assert "Traceback" not in out.stderr and "MLflow run" not in out.stdout  # refused before any run opened


# ----------------------------------------------------------------------------- recipe options

def _option(command: list[str], flag: str):
    from msclr_platform.cli import build_parser

    parser = build_parser()
    for word in command:
        parser = next(a for a in parser._actions if a.dest and a.dest.endswith("command")).choices[word]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_cli_choices_are_the_core_tables():
    from msclr_core.data.ntu import BODY_SELECTIONS
    from msclr_core.data.poses import DEFAULT_FRAME, FRAMES

    bodies, frame = _option(["data", "ntu"], "--bodies"), _option(["data", "import"], "--frame")
    assert tuple(bodies.choices) == BODY_SELECTIONS and bodies.default == "most-active"
    assert list(frame.choices) == list(FRAMES) and frame.default == DEFAULT_FRAME == "camera-ydown"


def test_readme_recipe_commands_parse():
    """Every `msclr ...` line of the README's "Reproducing the paper" section is a real command."""
    from msclr_platform.cli import build_parser

    text = (ROOT / "README.md").read_text()
    section = text.split("## Reproducing the paper", 1)[1].split("\n## ", 1)[0]
    lines = [ln.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for ln in block.replace("\\\n", " ").splitlines()]
    commands = [ln.split()[1:] for ln in lines if ln.startswith("msclr ")]
    assert len(commands) >= 8, commands
    for argv in commands:
        build_parser().parse_args(argv)  # SystemExit on an unknown command or option
    for must in ("--bodies official", "--frame camera-ydown", "msclr data check", "--fuse"):
        assert must in section, must
    for number in ("80.9", "86.7", "88.0", "94.2"):
        assert number in section
