"""`ray job submit` against a local head node on 127.0.0.1, as a user would run it."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the ray CLI colours its output when it thinks a terminal is attached


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node(tmp_path):
    """`ray start --head --block` in its own process group; killing the group stops it."""
    gcs, dash = free_port(), free_port()
    # Token authentication, as on a real cluster: the head and every submitter share it.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_GCS_SERVER_PORT", None)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
        "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
        # Other Ray runtimes may be up on this machine (the test session's own): never
        # share their default agent/metrics ports, or the job agent cannot bind.
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    log = open(tmp_path / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ok = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True)
        if ok.returncode == 0:
            break
        assert proc.poll() is None, (tmp_path / "head.log").read_text()
        time.sleep(2)
    else:
        pytest.fail("head node did not come up:\n" + (tmp_path / "head.log").read_text()[-3000:])
    yield address, env
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_ray_job_submit_runs_pretraining_and_logs_to_mlflow(tmp_path, head_node, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_core.data.synth import write_synth_dataset

    address, env = head_node
    data = tmp_path / "synth"
    write_synth_dataset(data, clips=160, seed=3, conventions=["ntu-rgb+d", "smplx_42"])
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"name: job-submit-test\ndata: {{path: {data}}}\nconventions: [ntu-rgb+d, smplx_42]\n"
        "model: {hidden_channels: 8, hidden_dim: 32, num_blocks: 2}\n"
        "method: {feature_dim: 16, queue_size: 64}\noptim: {epochs: 1, batch_size: 32, passes_per_epoch: 1}\n"
        f"ray: {{storage_path: {tmp_path / 'ray'}}}\ntracking: {{experiment: job-tests, system_metrics: false}}\n"
    )
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server, "MSCLR_HOME": str(msclr_home)}}
    job_id = f"msclr-test-{secrets.token_hex(4)}"  # our own id: no parsing of coloured CLI output
    # Right after start the dashboard may answer while its job agent is still coming up:
    # Ray says "No available agent to submit job, please try again later", so we do.
    deadline = time.monotonic() + 180
    while True:
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait", "--working-dir", str(REPO),
             "--submission-id", job_id,
             "--runtime-env-json", json.dumps(runtime_env), "--", "msclr", "pretrain", str(cfg), "--no-eval"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if submit.returncode == 0 or "No available agent" not in submit.stdout + submit.stderr or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    deadline = time.monotonic() + 600
    status = ""
    while time.monotonic() < deadline:
        res = subprocess.run(
            [str(BIN / "ray"), "job", "status", "--address", address, job_id], env=env, capture_output=True, text=True
        )
        # The CLI logs "Job '<id>' succeeded" (or failed/stopped) to stderr.
        status = ANSI.sub("", res.stdout + res.stderr).lower()
        if any(f"' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id], env=env, capture_output=True, text=True).stdout
    assert "' succeeded" in status, status + logs[-4000:]
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("job-tests")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`msclr.run_name` = 'job-submit-test'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1]
