"""The `msclr` command itself, through real subprocesses: --version, `config show`, and a
closed stdout pipe (issue 14)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from msclr_platform.config import load_config

REPO = Path(__file__).resolve().parents[1]
MSCLR = str(Path(sys.executable).with_name("msclr"))
XVIEW_BONE = REPO / "experiments/ntu60/xview_bone.yaml"


def msclr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MSCLR, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def shell(pipeline: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -o pipefail; {pipeline}"], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_version_prints_the_installed_version():
    out = msclr("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"msclr {version('msclr')}"


def test_config_show_prints_the_resolved_yaml_with_overrides():
    out = msclr("config", "show", str(XVIEW_BONE), "--set", "optim.lr=0.05", "--set", "data.path=elsewhere")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    expected = load_config(XVIEW_BONE, ["optim.lr=0.05"]).to_dict()
    expected["data"]["path"] = str(REPO / "elsewhere")  # --set paths: relative to where it was typed
    assert shown == expected
    assert (shown["stream"], shown["data"]["protocol"], shown["optim"]["epochs"]) == ("bone", "xview", 300)  # inherited
    assert "base" not in shown


def test_config_show_json_is_one_document_on_stdout():
    out = msclr("config", "show", str(XVIEW_BONE), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(load_config(XVIEW_BONE).to_dict()))


def test_config_show_refuses_a_bad_key_with_exit_2_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {XVIEW_BONE}\noptim: {{nope: 1}}\n")
    out = msclr("config", "show", str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert "bad.yaml" in out.stderr and "'optim.nope'" in out.stderr and "Traceback" not in out.stderr


def test_a_closed_stdout_pipe_is_not_a_traceback():
    """`msclr conventions | head -1`: the reader leaving early ends msclr quietly."""
    out = shell(f"{shlex.quote(MSCLR)} conventions | head -1")
    assert out.stdout.startswith("name") and "Traceback" not in out.stderr and "Error" not in out.stderr
    out = shell(f"{shlex.quote(MSCLR)} conventions --json | true")  # the reader is gone before msclr writes
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 141  # 128 + SIGPIPE, as for any tool cut off by its reader
