"""Multi-node Ray on one machine: a head and worker nodes as separate `ray start` processes
(tests/ray_nodes.py), jobs submitted with `ray job submit`, a real MLflow server.

1. Two Train workers land on two different nodes (STRICT_SPREAD) and the job's pretraining
   and evaluation end in MLflow.
2. A worker node dies mid-epoch: Ray Train restarts the worker group from the last
   checkpoint on a replacement node, and MLflow shows every epoch exactly once.
3. The nodes run from a Python environment without msclr: the code travels with the job
   through cluster/runtime_env.yaml.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from ray_nodes import RayNodes

pytestmark = [pytest.mark.multinode, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENT = "multinode-tests"
# Train V2 records each run's attempts and their workers (node ids) in a state actor that the
# dashboard serves at /api/train/v2/runs/v1; off unless the driver has this set.
TRAIN_STATE = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}

CONFIG = """
name: {name}
data: {{path: {data}}}
conventions: [ntu-rgb+d, smplx_42]
model: {{hidden_channels: 8, hidden_dim: 32, num_blocks: 2, dropout: 0.0}}
method: {{feature_dim: 16, queue_size: 64, mining_epoch: 1000}}
optim: {{epochs: {epochs}, batch_size: 32, lr: 0.05, passes_per_epoch: {passes}}}
eval: {{linear_epochs: 5, linear_milestones: [4], linear_lr_grid: [1.0], knn_k: 5, references: []}}
ray: {{num_workers: 2, placement_strategy: STRICT_SPREAD, storage_path: {storage}, max_failures: {max_failures},
       checkpoint_every: 1, worker_start_timeout_s: 120}}
tracking: {{experiment: {experiment}, system_metrics: false, embedding_plot: false}}
"""


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("mn-data") / "synth"
    write_synth_dataset(root, clips=160, seed=3, conventions=["ntu-rgb+d", "smplx_42"])
    return root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and one worker node run by this venv's Ray (msclr installed), shared by the tests
    of this module that use it; stopped at the end whatever happens. 2 logical CPUs per node:
    room for both Train workers on one node, so only STRICT_SPREAD puts them on two."""
    nodes = RayNodes(tmp_path_factory.mktemp("mn-nodes"), sys.executable, path_dirs=[str(BIN)])
    try:
        t0 = time.monotonic()
        nodes.start_head(num_cpus=2)
        nodes.add_worker("w1", num_cpus=2)
        print(f"\nhead + 1 worker node up in {time.monotonic() - t0:.0f} s", flush=True)
        yield nodes
    finally:
        nodes.stop()


def write_config(tmp_path: Path, data: Path, name: str, *, epochs=2, passes=1, max_failures=0) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(CONFIG.format(name=name, data=data, epochs=epochs, passes=passes, storage=tmp_path / "ray",
                                 max_failures=max_failures, experiment=EXPERIMENT))  # fmt: skip
    return cfg


def job_env(nodes: RayNodes, mlflow_server: str, msclr_home: Path) -> dict:
    # No RAY_ADDRESS here: msclr's driver passes the cluster's address to Ray's own actors
    # (Train V2's PlacementGroupCleaner and TrainStateActor call the State API without one, and
    # on a machine with several clusters they would wait for a GCS until they time out).
    # OMP_WAIT_POLICY is a key msclr's driver also sets in its ray.init runtime env: the job's
    # value must win instead of Ray refusing to merge the two (ray-project/ray#39208).
    return {**TRAIN_STATE, "OMP_WAIT_POLICY": "PASSIVE", "MLFLOW_TRACKING_URI": mlflow_server,
            "MSCLR_HOME": str(msclr_home)}  # fmt: skip


def submit_pretrain(nodes: RayNodes, cfg: Path, mlflow_server: str, msclr_home: Path, *extra: str) -> str:
    job_id = f"msclr-mn-{secrets.token_hex(4)}"
    runtime_env = {"env_vars": job_env(nodes, mlflow_server, msclr_home)}
    nodes.submit(job_id, ["msclr", "pretrain", str(cfg), *extra], "--working-dir", str(REPO),
                 "--runtime-env-json", json.dumps(runtime_env))  # fmt: skip
    return job_id


def finish_job(nodes: RayNodes, job_id: str, tmp_path: Path, timeout_s: float = 400, on_poll=None) -> str:
    status = nodes.wait_job(job_id, timeout_s, on_poll=on_poll)
    logs = nodes.job_logs(job_id)
    (tmp_path / f"{job_id}.log").write_text(logs)
    assert status == "SUCCEEDED", f"job {job_id}: {status}\n" + logs[-6000:]
    return logs


def train_attempts(nodes: RayNodes, name: str) -> list[dict]:
    """The Train V2 run's attempts, oldest first, each with its workers (world_rank, node_id,
    pid) and status, from the head's Train state API (the dashboard's Train page)."""
    import urllib.request

    req = urllib.request.Request(f"{nodes.dashboard}/api/train/v2/runs/v1",
                                 headers={"Authorization": f"Bearer {nodes.token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as resp:
        runs = [r for r in json.load(resp)["train_runs"] if r["name"] == name]
    assert len(runs) == 1, [r["name"] for r in runs]
    return sorted(runs[0]["attempts"], key=lambda a: a["start_time_ns"])


def placement(attempt: dict, nodes: RayNodes) -> dict[int, str]:
    """world rank -> the name of the node (head, w1 ...) its worker ran on."""
    names = nodes.node_names()
    return {w["world_rank"]: names.get(w["node_id"], w["node_id"]) for w in attempt["workers"]}


def pretrain_run(client, name: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`msclr.run_name` = '{name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def loss_steps(client, run) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))


def test_two_workers_on_two_nodes(tmp_path, synth_data, cluster, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    name = f"mn-spread-{secrets.token_hex(3)}"
    job_id = submit_pretrain(cluster, write_config(tmp_path, synth_data, name), mlflow_server, msclr_home)
    finish_job(cluster, job_id, tmp_path)
    print(f"job (2 epochs + evaluation) {time.monotonic() - t0:.0f} s", flush=True)

    # Placement: one attempt, ranks 0 and 1 on the two nodes (STRICT_SPREAD).
    attempts = train_attempts(cluster, name)
    assert [a["status"] for a in attempts] == ["FINISHED"], attempts
    assert sorted(placement(attempts[0], cluster).items()) in ([(0, "head"), (1, "w1")], [(0, "w1"), (1, "head")])

    client = MlflowClient(mlflow_server)
    run = pretrain_run(client, name)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    evals = client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(evals) == 1 and evals[0].info.status == "FINISHED", evals
    assert {"linear_top1.ntu-rgb_d", "linear_top1.smplx_42", "linear_top1.ensemble"} <= set(evals[0].data.metrics)
    run_dir = tmp_path / "ray" / name
    assert {"epoch-00001", "epoch-00002"} <= {p.name for p in run_dir.iterdir()}
    assert (run_dir / "epoch-00002" / "state.pt").is_file()


def test_worker_node_lost_mid_run_restores_on_replacement_node(tmp_path, synth_data, cluster, mlflow_server,
                                                               msclr_home):  # fmt: skip
    """SIGKILL the worker node (raylet, agents, its Train worker) once epoch 1 is checkpointed;
    a replacement node joins and Ray Train restarts the group from the last checkpoint."""
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    epochs = 5
    name = f"mn-nodeloss-{secrets.token_hex(3)}"
    cfg = write_config(tmp_path, synth_data, name, epochs=epochs, passes=6, max_failures=2)
    job_id = submit_pretrain(cluster, cfg, mlflow_server, msclr_home, "--no-eval")
    run_dir = tmp_path / "ray" / name
    victim = next(n for name_, n in cluster.nodes.items() if name_ != "head" and n.alive())
    killed = {}

    def kill_after_first_checkpoint():
        if not killed and (run_dir / "epoch-00001").is_dir():  # appears complete or not at all (atomic rename)
            killed["checkpoints"] = sorted(p.name for p in run_dir.glob("epoch-*"))
            victim.kill(signal.SIGKILL)
            killed["at"] = time.monotonic() - t0
            cluster.add_worker("w2", num_cpus=2)  # the same resources; its own label

    logs = finish_job(cluster, job_id, tmp_path, on_poll=kill_after_first_checkpoint)
    print(f"node killed at {killed.get('at', -1):.0f} s (checkpoints then: {killed.get('checkpoints')}); "
          f"job done at {time.monotonic() - t0:.0f} s", flush=True)  # fmt: skip
    assert killed, "the job finished before epoch 1 was checkpointed: nothing was killed"
    assert f"epoch-{epochs:05d}" not in killed["checkpoints"], "the node was killed only after the last epoch"

    attempts = train_attempts(cluster, name)
    assert [a["status"] for a in attempts] == ["ERRORED", "FINISHED"], [(a["status"], a.get("status_detail")) for a in attempts]
    assert victim.name in placement(attempts[0], cluster).values()
    assert sorted(placement(attempts[1], cluster).values()) == ["head", "w2"]  # STRICT_SPREAD after the restore
    # The second attempt's rank 0 restored a checkpoint: the first epoch it trained is not epoch 1.
    rank0 = next(w for w in attempts[1]["workers"] if w["world_rank"] == 0)
    out = cluster.worker_stdout(rank0["node_id"], rank0["pid"])
    (tmp_path / "rank0-after-restore.out").write_text(out)
    trained = [int(e) for e in re.findall(rf"\[{name}\] epoch (\d+)/{epochs}", out)]
    assert trained and trained[0] > 1 and trained == list(range(trained[0], epochs + 1)), (trained, out[-3000:])

    client = MlflowClient(mlflow_server)
    run = pretrain_run(client, name)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, epochs + 1)), steps  # every epoch once: no duplicate, none missing
    assert (run_dir / f"epoch-{epochs:05d}" / "state.pt").is_file()


# ---------------------------------------------------------------- nodes without msclr


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python environment with msclr's dependencies but not msclr: a venv whose .pth file
    appends this venv's site-packages. A directory added by a .pth line gets no .pth processing
    of its own, so the editable install's finder (__editable__.msclr-*.pth) never loads there."""
    import sysconfig

    root = Path(tempfile.mkdtemp(prefix="rn-venv-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
        python = root / "bin" / "python"
        target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        (Path(target) / "msclr_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        probe = "import ray, torch, mlflow\ntry:\n import msclr_core\nexcept ImportError:\n print('no msclr')"
        out = subprocess.run([str(python), "-c", probe], cwd=root, capture_output=True, text=True, timeout=300)
        assert out.stdout.strip() == "no msclr", out.stdout + out.stderr
        yield python
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_job_ships_code_to_nodes_without_msclr(tmp_path, synth_data, bare_python, mlflow_server, msclr_home):
    """Head and worker node run from an environment without msclr; the job brings it through
    cluster/runtime_env.yaml (working_dir + py_modules) and runs `python -m msclr_platform.cli`."""
    from mlflow.tracking import MlflowClient

    bare_bin = str(bare_python.parent)
    path = [bare_bin, *(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != BIN)]  # no `msclr` script
    nodes = RayNodes(tmp_path, str(bare_python), extra_env={"PATH": os.pathsep.join(path)})
    try:
        t0 = time.monotonic()
        nodes.start_head(num_cpus=1)
        nodes.add_worker("w1", num_cpus=1)
        t_up = time.monotonic() - t0
        name = f"mn-bare-{secrets.token_hex(3)}"
        cfg = write_config(tmp_path, synth_data, name)
        # cluster/runtime_env.yaml as shipped, with this cluster's values for its env vars only.
        runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
        assert "pip" not in runtime_env and runtime_env["env_vars"]["MLFLOW_TRACKING_URI"]
        runtime_env["env_vars"].update(job_env(nodes, mlflow_server, msclr_home))
        env_file = tmp_path / "runtime_env.yaml"
        env_file.write_text(yaml.safe_dump(runtime_env))
        job_id = f"msclr-bare-{secrets.token_hex(4)}"
        nodes.submit(job_id, ["python", "-m", "msclr_platform.cli", "pretrain", str(cfg), "--no-eval"],
                     "--runtime-env", str(env_file), cwd=REPO)  # its relative paths are the repo's
        logs = finish_job(nodes, job_id, tmp_path)
        print(f"\nbare nodes up in {t_up:.0f} s, job {time.monotonic() - t0 - t_up:.0f} s", flush=True)
        attempts = train_attempts(nodes, name)
        assert [a["status"] for a in attempts] == ["FINISHED"]
        assert sorted(placement(attempts[0], nodes).values()) == ["head", "w1"]
    finally:
        nodes.stop()
    assert "MLflow run " in logs  # the driver ran the msclr CLI
    client = MlflowClient(mlflow_server)
    run = pretrain_run(client, name)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]


def test_job_waits_for_a_node_that_joins_later(tmp_path, synth_data, mlflow_server, msclr_home):
    """An autoscaling cluster, played by hand: the head alone cannot place two STRICT_SPREAD
    workers. With --wait-for-resources the job asks for them (request_resources, a no-op
    without an autoscaler) and waits; a node that joins meanwhile lets it run. (Without a wait
    the same job fails at once: tests/test_platform_pretrain.py.)"""
    from mlflow.tracking import MlflowClient

    (tmp_path / "nodes").mkdir()
    nodes = RayNodes(tmp_path / "nodes", sys.executable, path_dirs=[str(BIN)])
    try:
        nodes.start_head(num_cpus=2)
        name = f"mn-wait-{secrets.token_hex(3)}"
        job_id = submit_pretrain(nodes, write_config(tmp_path, synth_data, name), mlflow_server, msclr_home,
                                 "--no-eval", "--wait-for-resources", "300")  # fmt: skip
        joined = {}

        def add_node_once_waiting():
            if not joined and "waiting for the autoscaler" in nodes.job_logs(job_id):
                joined["logs"] = nodes.job_logs(job_id)
                nodes.add_worker("late", num_cpus=2)

        logs = finish_job(nodes, job_id, tmp_path, timeout_s=500, on_poll=add_node_once_waiting)
        assert joined, "the job never waited: it found two nodes' worth of resources on one node"
        assert "nodes: STRICT_SPREAD needs 2 nodes" in joined["logs"]  # says what it waits for
        assert "the cluster has the resources" in logs
        assert sorted(placement(train_attempts(nodes, name)[0], nodes).values()) == ["head", "late"]
        run = pretrain_run(MlflowClient(mlflow_server), name)
        assert run.info.status == "FINISHED" and run.data.params["ray.wait_for_resources_s"] == "300.0"
    finally:
        nodes.stop()
