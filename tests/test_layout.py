"""Project layout guarantees: core purity, no `platform` shadowing, uploads.

The cluster files are checked in tests/test_cluster_files.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_py(code, **kw):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, **kw)


def test_msclr_core_never_imports_ray_or_mlflow():
    mods = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "msclr_core").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods)
    code += "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow'))\nprint(bad)\nassert not bad, bad\n"
    res = run_py(code, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr


def test_platform_folder_does_not_shadow_the_standard_library():
    # Ray puts the working_dir first on PYTHONPATH and makes it the cwd of every worker.
    assert not (REPO / "platform" / "__init__.py").exists()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = run_py("import platform, torch, msclr_platform; print(platform.system())", cwd=REPO, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "Linux", res.stderr


def test_rayignore_and_runtime_env():
    ignored = (REPO / ".rayignore").read_text().split()
    for pattern in ("msclr_runs/", "*.db", "data/", ".venv/"):
        assert pattern in ignored
    env = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())
    assert "MLFLOW_TRACKING_URI" in env["env_vars"]


@pytest.mark.parametrize("argv", [["--help"], ["conventions", "--help"], ["pretrain", "--help"]])
def test_cli_help(argv):
    res = subprocess.run([sys.executable, "-m", "msclr_platform.cli", *argv], capture_output=True, text=True)
    assert res.returncode == 0 and "usage: msclr" in res.stdout
