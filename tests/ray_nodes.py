"""A multi-node Ray cluster on one machine, for tests: a head and worker nodes, each a separate
`ray start --block` process in its own process group, with its own ports and temp dir.

Every node runs with token auth (RAY_AUTH_MODE=token, one RAY_AUTH_TOKEN for the cluster and
its submitters) and carries a custom resource and a label `msclr-node=<name>`, so a node id
found through the State API can be mapped back to the node the test started.

All nodes use node IP 127.0.0.1 in normal (multi-node) cluster mode: `ray start --address`
refuses Ray's single-node mode, and with `--node-ip-address=127.0.0.1` given explicitly Ray
keeps it, so every node, the job driver and the workers talk over loopback.

Ports: each node gets its own free ports, and workers bind random ports
(`--min-worker-port=0 --max-worker-port=0`, as ray.cluster_utils does): two raylets on one
host handing out ports from the same default range 10002-19999 would collide.

Temp dirs are short (/tmp/rn-*), because Ray puts unix sockets under them (108-byte limit).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayNode:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path, temp_dir: Path, args: dict):
        self.name, self.proc, self.log, self.temp_dir, self.args = name, proc, log, temp_dir, args
        self.node_id: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL, wait_s: float = 60) -> None:
        """Signal the node's whole process group (ray start, raylet, agents, workers)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)

    def reap_group(self) -> None:
        """SIGKILL whatever of the node's process group is still around (workers that outlive it)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RayNodes:
    """Start with start_head(), add_worker(); always stop() (a fixture finalizer)."""

    def __init__(self, log_dir: Path, python: str, extra_env: dict | None = None, path_dirs: list[str] | None = None,
                 cwd: Path | None = None):
        self.log_dir = Path(log_dir)
        self.cwd = cwd or self.log_dir  # where the nodes and the CLI run (not the repo: its packages are importable there)
        self.python = python  # the interpreter whose `ray` runs the nodes
        self.token = secrets.token_hex(16)
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, **(extra_env or {})}
        if path_dirs:
            env["PATH"] = os.pathsep.join([*path_dirs, env.get("PATH", "")])
        for key in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        self.env = env
        self.nodes: dict[str, RayNode] = {}
        self.gcs_address: str | None = None
        self.dashboard: str | None = None

    # ------------------------------------------------------------ processes

    def _start(self, name: str, args: list[str], num_cpus: int) -> RayNode:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rn-{name}-", dir="/tmp"))
        ports = {
            "node-manager-port": free_port(), "object-manager-port": free_port(),
            "metrics-export-port": free_port(), "dashboard-agent-listen-port": free_port(),
            "dashboard-agent-grpc-port": free_port(), "runtime-env-agent-port": free_port(),
        }  # fmt: skip
        cmd = [
            self.python, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
            "--min-worker-port=0", "--max-worker-port=0",
            f"--resources={json.dumps({f'node_{name}': 1})}", f"--labels=msclr-node={name}",
            *[f"--{k}={v}" for k, v in ports.items()], *args,
        ]  # fmt: skip
        log = self.log_dir / f"ray-{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # fmt: skip
        node = RayNode(name, proc, log, temp_dir, ports)
        self.nodes[name] = node
        return node

    def _start_retrying(self, name: str, args, num_cpus: int, timeout_s: float, tries: int) -> RayNode:
        """Start a node and wait until it is ALIVE. `ray start` gives up when the GCS does not
        confirm its raylet within 30 s (hard-coded in Ray's node.py: "The current node timed out
        during startup"), which happens on an overloaded machine; then the node is started
        again (new ports), up to `tries` times."""
        for attempt in range(1, tries + 1):
            node = self._start(name, args() if callable(args) else args, num_cpus)
            try:
                self.wait_node(node, timeout_s)
                return node
            except RuntimeError:
                if node.alive() or attempt == tries:
                    raise
                node.reap_group()
                shutil.rmtree(node.temp_dir, ignore_errors=True)
        raise AssertionError("unreachable")

    def start_head(self, num_cpus: int = 1, timeout_s: float = 120, tries: int = 3) -> RayNode:
        def args():
            gcs, dash = free_port(), free_port()
            self.gcs_address, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
            return ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true", f"--ray-client-server-port={free_port()}"]  # fmt: skip

        node = self._start_retrying("head", args, num_cpus, timeout_s, tries)
        self.wait_job_agent(timeout_s)
        return node

    def add_worker(self, name: str, num_cpus: int = 1, timeout_s: float = 120, tries: int = 3) -> RayNode:
        assert self.gcs_address, "start_head first"
        return self._start_retrying(name, [f"--address={self.gcs_address}"], num_cpus, timeout_s, tries)

    def stop(self) -> None:
        """Stop every node (workers first, then the head) and remove their temp dirs."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            node = self.nodes[name]
            node.kill(signal.SIGTERM, wait_s=5)  # a head takes > 30 s to stop gracefully: not waited for
            node.reap_group()
            shutil.rmtree(node.temp_dir, ignore_errors=True)

    # ------------------------------------------------------------ state API over HTTP

    def state(self, resource: str, **params) -> list[dict]:
        """GET /api/v0/<resource> (the State API: nodes, actors, workers ...) with the token."""
        query = "&".join(f"{k}={v}" for k, v in {"limit": 10000, "detail": 1, **params}.items())
        req = urllib.request.Request(f"{self.dashboard}/api/v0/{resource}?{query}",
                                     headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.load(resp)
        return body["data"]["result"]["result"]

    def node_names(self) -> dict[str, str]:
        """node id -> the name we gave the node (from its label), for every node ever registered."""
        return {n["node_id"]: n.get("labels", {}).get("msclr-node", "?") for n in self.state("nodes")}

    def node_by_id(self, node_id: str) -> RayNode:
        return next(n for n in self.nodes.values() if n.node_id == node_id)

    def worker_stdout(self, node_id: str, pid: int) -> str:
        """What a worker process (an actor) printed: Ray keeps its stdout in the node's session
        logs as worker-<worker id>-<job id>-<pid>.out."""
        files = {f.resolve() for f in self.node_by_id(node_id).temp_dir.glob(f"session_*/logs/worker-*-{pid}.out")}
        return "".join(f.read_text(errors="replace") for f in sorted(files))  # (session_latest is a link)

    def wait_node(self, node: RayNode, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(f"ray node {node.name} exited:\n{node.log_tail()}")
            if self.dashboard:
                try:
                    for n in self.state("nodes"):
                        if n.get("labels", {}).get("msclr-node") == node.name and n["state"] == "ALIVE":
                            node.node_id = n["node_id"]
                            return
                except OSError:
                    pass  # the dashboard is still coming up
            time.sleep(1)
        raise RuntimeError(f"ray node {node.name} did not register within {timeout_s:.0f} s:\n{node.log_tail()}")

    def wait_job_agent(self, timeout_s: float) -> None:
        """The head's job agent answers (`ray job list` works)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ray_cli("job", "list").returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"job agent did not come up:\n{self.nodes['head'].log_tail()}")

    # ------------------------------------------------------------ jobs

    def ray_cli(self, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
        address = ["--address", self.dashboard] if args[0] == "job" else []
        return subprocess.run([self.python, "-m", "ray.scripts.scripts", *args[:2], *address, *args[2:]],
                              env=self.env, cwd=cwd or self.cwd, capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def submit(self, job_id: str, entrypoint: list[str], *options: str, cwd: Path | None = None,
               timeout_s: float = 180) -> None:  # fmt: skip
        """`ray job submit --no-wait` (run in cwd: relative runtime_env paths resolve there);
        retried while the job agent is not ready yet."""
        deadline = time.monotonic() + timeout_s
        while True:
            res = self.ray_cli("job", "submit", "--no-wait", "--submission-id", job_id, *options, "--", *entrypoint,
                               cwd=cwd)  # fmt: skip
            if res.returncode == 0:
                return
            if "No available agent" not in res.stdout + res.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"ray job submit failed:\n{res.stdout}\n{res.stderr}")
            time.sleep(5)

    def job_status(self, job_id: str) -> str:
        """SUCCEEDED, FAILED, STOPPED, RUNNING, PENDING (from the Jobs REST API)."""
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["status"]

    def job_logs(self, job_id: str) -> str:
        req = urllib.request.Request(f"{self.dashboard}/api/jobs/{job_id}/logs",
                                     headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)["logs"]
        except OSError as err:
            return f"(no job logs: {err})"

    def wait_job(self, job_id: str, timeout_s: float, on_poll=None) -> str:
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            status = self.job_status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            if on_poll is not None:
                on_poll()
            time.sleep(1)
        return status
