"""What msclr's local services really listen on, and what they leave on disk.

A real local Ray runtime (started by msclr's own `init_ray`, in a subprocess so it does
not meet the session's `ray_local` runtime, with a 2-worker Ray Train run in flight)
and a real MLflow server (`start_server`); the listening sockets are read from the
kernel (psutil, i.e. /proc/net/tcp{,6}) for every process of each, never from the
arguments msclr passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from msclr_platform.localhost import is_loopback, port_open

REPO = Path(__file__).resolve().parents[1]
MSCLR = str(Path(sys.executable).with_name("msclr"))

# Sockets Ray 2.60 + PyTorch open on other addresses that msclr cannot bind to loopback.
# Keyed by process label; the value says which socket and why. Anything else fails.
ALLOWED_NON_LOOPBACK = {
    # torch.distributed's c10d TCPStore (the rendezvous store that rank 0 hosts on
    # MASTER_PORT for init_process_group) listens on "::" whatever MASTER_ADDR is:
    # torch 2.x has no bind-address option for it. It lives only while the run's
    # process group exists; it is the one socket of a run that Ray's token does not guard.
    "ray::RayTrainWorker": "rank 0's c10d TCPStore on MASTER_PORT",
}

# The process kinds of a local runtime with a Train run that must be seen listening.
# The autoscaler monitor (monitor.py) is checked when it listens but not required: its
# metrics port is a fixed default (44217) that another runtime on the machine may hold.
RAY_KINDS = {
    "driver", "gcs_server", "raylet", "dashboard.py", "ray::DashboardAgent",
    "ray::RuntimeEnvAgent", "ray::TrainController", "ray::RayTrainWorker",
}  # fmt: skip

RAY_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from msclr_platform.config import ExperimentConfig
    from msclr_platform.train import init_ray

    work = Path(sys.argv[1])
    init_ray(ExperimentConfig(), num_cpus=2)
    info = {"gcs": os.environ["RAY_ADDRESS"], "dashboard": ray._private.worker.get_dashboard_url(),
            "node_ip": ray.util.get_node_ip_address()}
    (work / "runtime.json").write_text(json.dumps(info))

    def loop(config):
        import torch.distributed as dist
        import ray.train

        dist.barrier()
        if ray.train.get_context().get_world_rank() == 0:
            (Path(config["work"]) / "ready.json").write_text(
                json.dumps({"pid": os.getpid(), "master_port": int(os.environ["MASTER_PORT"])}))
        while not (Path(config["work"]) / "release").exists():
            time.sleep(0.2)
        dist.barrier()

    TorchTrainer(loop, train_loop_config={"work": str(work)}, scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name="loopback", storage_path=str(work / "results"))).fit()
    ray.shutdown()
    """
)


def _label(proc: psutil.Process, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "driver"
    cmd = proc.cmdline() or [proc.name()]
    if cmd[0].startswith("ray::"):  # an actor's title: ray::Class, or ray::Class.method while in one
        return cmd[0].split()[0].split(".")[0]
    for part in cmd[:3]:
        base = os.path.basename(part)
        if base in ("gcs_server", "raylet") or base.endswith(".py"):
            return base
    return os.path.basename(cmd[0])


def listening(procs, root_pid: int) -> list[tuple[str, int, str, int]]:
    """(process label, pid, address, port) of every listening TCP socket of `procs`."""
    rows = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            label = _label(proc, root_pid)
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    rows.append((label, proc.pid, conn.laddr.ip, conn.laddr.port))
    return rows


def wait_for(predicate, timeout: float, what):
    """predicate()'s first truthy value; `what` (a string or a callable giving one) names it on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")


def _clean_env(**extra) -> dict:
    """The environment of a fresh msclr process: none of this session's Ray/MLflow settings."""
    drop = ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
            "MLFLOW_TRACKING_URI")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "platform"), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def _dashboard_status(url: str, token: str | None) -> int:
    request = urllib.request.Request(f"http://{url.removeprefix('http://')}/api/jobs/")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def _gcs_status(address: str) -> str:
    """The gRPC status of a token-less GetClusterId call to the GCS."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10)
        except grpc.RpcError as err:
            return err.code().name
    return "OK"


@pytest.mark.slow
def test_local_ray_runtime_listens_on_loopback_only(tmp_path):
    """Every socket of the runtime (and of a Train run on it) is on 127.0.0.1, but the allow-list."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-c", RAY_DRIVER, str(work)], env=_clean_env(HOME=str(home)), cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        ready = wait_for(lambda: (work / "ready.json").exists() or driver.poll() is not None, 300, "the Train run")
        assert ready and driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        run = json.loads((work / "ready.json").read_text())
        runtime = json.loads((work / "runtime.json").read_text())
        root = psutil.Process(driver.pid)

        rows: set[tuple[str, int, str, int]] = set()  # every listener seen while polling

        def all_kinds_listening():
            rows.update(listening([root, *root.children(recursive=True)], driver.pid))
            return RAY_KINDS <= {r[0] for r in rows}

        def missing():
            return f"sockets of {sorted(RAY_KINDS - {r[0] for r in rows})} (seen: {sorted(rows)})"

        wait_for(all_kinds_listening, 60, missing)
        table = "\n".join(f"{label:24} pid {pid:>7}  {ip}:{port}" for label, pid, ip, port in sorted(rows))
        allowed = {("ray::RayTrainWorker", run["pid"], run["master_port"])}
        outside = {(label, pid, port) for label, pid, ip, port in rows if not is_loopback(ip)}
        assert outside <= allowed, f"non-loopback sockets beyond the allow-list:\n{table}"
        assert {label for label, *_ in outside} <= set(ALLOWED_NON_LOOPBACK)
        assert runtime["node_ip"] == "127.0.0.1" and runtime["gcs"].startswith("127.0.0.1:")

        # Token auth is on, with the token msclr wrote (0600 in a 0700 directory).
        token_file = home / ".ray" / "auth_token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
        token = token_file.read_text().strip()
        assert _dashboard_status(runtime["dashboard"], None) == 401
        assert _dashboard_status(runtime["dashboard"], token) == 200
        assert _gcs_status(runtime["gcs"]) == "UNAUTHENTICATED"
    finally:
        (work / "release").touch()  # the Train run ends, the driver shuts its runtime down
        with contextlib.suppress(subprocess.TimeoutExpired):
            driver.wait(timeout=120)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)


def test_ray_token_file_is_created_and_kept_owner_only(tmp_path, monkeypatch):
    from msclr_platform.local_ray import ensure_token

    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    made = ensure_token()
    assert made == tmp_path / ".ray" / "auth_token" and len(made.read_text()) == 64
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and stat.S_IMODE(made.parent.stat().st_mode) == 0o700

    old = tmp_path / "old_token"  # a token Ray wrote world-readable: kept, tightened
    old.write_text("abc")
    old.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(old))
    assert ensure_token() == old and old.read_text() == "abc" and stat.S_IMODE(old.stat().st_mode) == 0o600

    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 64)  # the token lives in the environment: no file
    assert ensure_token() is None
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's explicit choice is respected
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert ensure_token() is None


# ---------------------------------------------------------------- MLflow server


def _group(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    procs = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                procs.append(proc)
    return procs


def _msclr(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MSCLR, *args], env=_clean_env(MSCLR_HOME=str(home)),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.mark.slow
def test_mlflow_server_listens_on_loopback_only_and_keeps_files_private(tmp_path):
    from msclr_platform.tracking import start_server, stop_server

    old_umask = os.umask(0o022)  # the usual umask: without msclr's care everything would be 0644/0755
    try:
        info = start_server(tmp_path / "mlflow")
    finally:
        os.umask(old_umask)
    try:
        rows = listening(_group(info["pid"]), info["pid"])
        assert rows and any(port == info["port"] for *_, port in rows), rows
        assert all(is_loopback(ip) for _, _, ip, _ in rows), rows
        root = tmp_path / "mlflow"
        for path, mode in [(root, 0o700), (root / "artifacts", 0o700), (root / "mlflow.db", 0o600),
                           (root / "server.log", 0o600), (root / "server.json", 0o600)]:  # fmt: skip
            assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
    finally:
        stop_server(tmp_path / "mlflow")


@pytest.mark.slow
def test_one_mlflow_server_per_home_reused_and_stopped_by_ui_stop(tmp_path, monkeypatch):
    from msclr_platform.mlflow_server import ensure_tracking_uri, read_state

    home = tmp_path / "home"
    monkeypatch.setenv("MSCLR_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = ensure_tracking_uri(quiet=True)
    state = read_state(home / "mlflow")
    try:
        assert ensure_tracking_uri(quiet=True) == first  # a second start in the same home reuses it
        shown = _msclr("ui", home=home)  # ... as does another process
        assert shown.returncode == 0 and first in shown.stdout, shown.stderr
        assert read_state(home / "mlflow")["pid"] == state["pid"]
        assert len([p for p in _group(state["pid"]) if "mlflow" in " ".join(p.cmdline())]) >= 1

        stopped = _msclr("ui", "--stop", home=home)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not port_open(state["port"]) and not _group(state["pid"])
        again = _msclr("ui", "--stop", home=home)
        assert again.returncode == 0 and "no MLflow server" in again.stdout

        # The next start serves the same address (the port is remembered) from a new process.
        assert ensure_tracking_uri(quiet=True) == first
        second = read_state(home / "mlflow")
        assert second["pid"] != state["pid"]

        # A recorded server that died is health-checked, not reused: a new one takes its place.
        os.killpg(second["pid"], signal.SIGKILL)
        wait_for(lambda: not port_open(second["port"]), 30, "the killed server's port to close")
        assert ensure_tracking_uri(quiet=True) == first
        assert read_state(home / "mlflow")["pid"] not in (state["pid"], second["pid"])
    finally:
        _msclr("ui", "--stop", home=home)


def test_ui_stop_never_kills_a_process_that_is_not_the_server(tmp_path):
    """A stale state file whose pid now belongs to another process: that process survives."""
    from msclr_platform.tracking import stop_server

    root = tmp_path / "mlflow"
    root.mkdir()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        (root / "server.json").write_text(json.dumps({"uri": "http://127.0.0.1:1", "pid": bystander.pid, "port": 1}))
        assert stop_server(root) is None
        assert bystander.poll() is None
        assert json.loads((root / "server.json").read_text()) == {"port": 1, "root": str(root.resolve())}
    finally:
        bystander.kill()
        bystander.wait()
