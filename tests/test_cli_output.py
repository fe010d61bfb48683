"""What `msclr` prints (issue 14): quiet by default, Ray's and MLflow's own logs with -v, and
with --json exactly one JSON line on stdout, everything else on stderr; exit codes in --help."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from msclr_platform import console
from msclr_platform.cli import build_parser
from msclr_platform.commands.quickstart import json_summary

BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[")
# Lines quiet mode keeps off the terminal, and where they came from.
NOISE = (
    "TrainingReport(",  # Ray Train worker: "Reporting training result N: TrainingReport(...)"
    "PreemptionWatcher",  # Ray core, on the Train controller (ray-project/ray#53727)
    "Requesting resources",  # Ray Train controller INFO
    "mlflow.types",  # MLflow UserWarning on inferred integer schemas (log_dataset)
    "dataset source can be interpreted",  # MLflow UserWarning on dataset sources
    "system metrics",  # MLflow's system metrics monitor INFO lines
    "Started a local Ray instance",  # ray.init INFO
    "Token authentication is enabled",  # Ray's auth notice (msclr makes the token itself)
)


def test_verbose_flag_before_or_after_the_command():
    parse = build_parser().parse_args
    assert parse(["conventions"]).verbose is False
    assert parse(["-v", "conventions"]).verbose is True
    assert parse(["conventions", "--verbose"]).verbose is True
    assert parse(["data", "synth", "--out", "x", "-v"]).verbose is True
    assert parse(["pretrain", "c.yaml", "--json"])._json_stdout is True
    assert parse(["config", "show", "c.yaml", "--json"])._json_stdout is False  # prints only JSON anyway


def test_help_documents_exit_codes_and_python_m_works():
    out = subprocess.run([sys.executable, "-m", "msclr_platform.cli", "--help"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for code in ("0 ok", "1 failure", "2 usage", "130 interrupted", "141 stdout closed", "143 terminated"):
        assert code in text, text
    assert "-v, --verbose" in out.stdout and "--json" in text


def test_quickstart_json_is_one_strict_line(capsys):
    out = {"mlflow_uri": "http://127.0.0.1:5000", "experiment": "quickstart", "runs": {"parent": "p"},
           "top1": {"msclr": 0.4, "supervised": None}, "wall_s": 12.5, "collapsed_note": "not in the JSON",
           "rows": [{"model": "msclr", "convention": "ensemble", "linear_top1": 0.4, "knn_top1": math.nan}]}  # fmt: skip
    console.print_json(json_summary(out))
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.endswith("\n")
    doc = json.loads(printed, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["rows"][0]["knn_top1"] is None and doc["runs"] == {"parent": "p"} and "collapsed_note" not in doc


def test_json_session_sends_everything_else_to_stderr():
    """Python prints, a child process's output (fd 1) and the JSON line, in one process."""
    code = (
        "import os, sys\n"
        "from msclr_platform import console\n"
        "with console.session(json_stdout=True):\n"
        "    print('human line')\n"
        "    sys.stdout.flush()\n"
        "    os.system('echo child process line')\n"
        "    console.print_json({'ok': 1})\n"
        "print('after the session: stdout again')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == '{"ok": 1}\nafter the session: stdout again\n'
    assert "human line" in out.stderr and "child process line" in out.stderr


# ---------------------------------------------------------------- real runs (Ray, MLflow)


def _config(tmp_path: Path, name: str, epochs: int = 2) -> Path:
    from msclr_core.data.synth import write_synth_dataset

    data = tmp_path / "synth"
    if not data.exists():
        write_synth_dataset(data, clips=160, seed=3, conventions=["ntu-rgb+d", "smplx_42"])
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"name: {name}\ndata: {{path: {data}}}\nconventions: [ntu-rgb+d, smplx_42]\n"
        "model: {hidden_channels: 8, hidden_dim: 32, num_blocks: 2}\n"
        "method: {feature_dim: 16, queue_size: 64}\n"
        f"optim: {{epochs: {epochs}, batch_size: 32, passes_per_epoch: 1}}\n"
        "eval: {linear_epochs: 2, references: []}\n"
        f"ray: {{storage_path: {tmp_path / 'ray'}, num_workers: 1, cpus_per_worker: 1}}\n"
        "tracking: {experiment: cli-output-tests}\n"
    )
    return cfg


def _msclr(args: list[str], uri: str, home: Path) -> subprocess.CompletedProcess:
    drop = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "MSCLR_VERBOSE", "MSCLR_PROGRESS", "RAY_DEDUP_LOGS_SKIP_REGEX",
            "RAY_DISABLE_WORKER_LOG_PREFIX", "MLFLOW_LOGGING_LEVEL")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(MLFLOW_TRACKING_URI=uri, MSCLR_HOME=str(home))
    return subprocess.run([str(BIN / "msclr"), *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pretrain_json_is_one_line_and_quiet(tmp_path, mlflow_server, msclr_home):
    res = _msclr(["pretrain", str(_config(tmp_path, "cli-quiet")), "--json"], mlflow_server, msclr_home)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 1, res.stdout[-3000:]
    doc = json.loads(lines[0])
    assert doc["name"] == "cli-quiet" and doc["pretrain_run_id"] and doc["eval_run_id"]
    assert not ANSI.search(res.stderr), res.stderr[-3000:]
    low = res.stderr.lower()
    for noise in NOISE:
        assert noise.lower() not in low, (noise, res.stderr[-5000:])
    # The human output is all on stderr: the run, one plain line per epoch, MLflow's links, the table.
    assert f"MLflow run {doc['pretrain_run_id']} (new)" in res.stderr
    assert re.search(r"^\[cli-quiet\] epoch 1/2 loss \S+ lr", res.stderr, re.M), res.stderr[-3000:]
    assert re.search(r"^\[cli-quiet\] epoch 2/2 loss", res.stderr, re.M) and "View run" in res.stderr
    assert "linear_top1" in res.stderr


@pytest.mark.slow
def test_verbose_shows_ray_logs(tmp_path, mlflow_server, msclr_home):
    cfg = _config(tmp_path, "cli-verbose", epochs=1)
    res = _msclr(["-v", "pretrain", str(cfg), "--no-eval"], mlflow_server, msclr_home)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    out = res.stdout + res.stderr
    assert "Started a local Ray instance" in res.stderr, res.stderr[-3000:]
    assert "TrainingReport(" in out and "(RayTrainWorker pid=" in out, out[-3000:]
    assert not ANSI.search(out), out[-3000:]  # verbose, but still no colour off a terminal
