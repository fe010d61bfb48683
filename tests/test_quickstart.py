"""The README's main job, end to end, as a user runs it (a fresh MSCLR_HOME, no server)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_quickstart_json_runs_and_learning(tmp_path):
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env["MSCLR_HOME"] = str(tmp_path / "home")
    res = subprocess.run(
        [str(BIN / "msclr"), "quickstart", "--json"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
        out = json.loads(res.stdout.strip().splitlines()[-1])
        print(res.stdout[-2500:])
        assert out["mlflow_uri"].startswith("http://127.0.0.1:")
        top1 = out["top1"]
        # Learning bar (issue 4): MS-CLR linear top-1 >= random-init + 15 points.
        assert top1["msclr"] - top1["random_init"] >= 0.15, top1
        client = MlflowClient(out["mlflow_uri"])
        runs = out["runs"]
        for key in ("msclr", "baseline", "random_init_eval"):
            assert client.get_run(runs[key]).data.tags["mlflow.parentRunId"] == runs["parent"]
        assert client.get_run(runs["msclr_eval"]).data.tags["mlflow.parentRunId"] == runs["msclr"]
        assert "linear_top1.ensemble" in client.get_run(runs["msclr_eval"]).data.metrics
    finally:
        info = Path(env["MSCLR_HOME"]) / "mlflow" / "server.json"
        if info.exists():
            try:
                os.killpg(json.loads(info.read_text())["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
