"""An MLflow outage is bounded (issue 13): one retry budget for the driver and the workers,
then the results wait in a local fallback directory and `msclr runs sync NAME` uploads
them into the run and closes it once the server is back.

The end-to-end test starts its own `mlflow server` (sqlite), kills it (SIGKILL, its whole
process group) after epoch 1, and restarts it later on the same port and database.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fault_report import fault_case
from run_helpers import (
    MSCLR, assert_history_shows, cli_env, free_port, logs, make_config, pretrain_args, start_cli, the_run, wait_for,
    write_tiny_dataset,
)  # fmt: skip

from msclr_platform.offline import FALLBACK_DIR, TrackingUnavailable, tracking_client
from msclr_platform.tracking import MetricLogger, eval_run_name
from msclr_platform.train import load_state, run_directory

BUDGET_S = 10


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("outage-ds") / "synth")


def test_driver_requests_give_up_when_the_budget_is_spent(mlflow_server):
    from mlflow.exceptions import MlflowException

    dead = tracking_client(f"http://127.0.0.1:{free_port()}", 3)  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"unreachable for \d+ s \(tracking.retry_budget_s=3\)"):
        dead.get_experiment_by_name("x")
    assert 3 <= time.monotonic() - t0 < 15
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable):  # spent: later calls do not wait again
        dead.get_run("0" * 32)
    assert time.monotonic() - t0 < 1
    live = tracking_client(mlflow_server, 3)
    with pytest.raises(MlflowException) as err:  # a refused request is not an outage: no retries
        live.get_run("0" * 32)
    assert not isinstance(err.value, TrackingUnavailable) and live.budget.outage_since is None


def test_worker_logger_stops_waiting_when_the_budget_is_spent():
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", "0" * 32, retry_s=0.2, retry_budget_s=2)
    logger.log({"loss": 1.0}, step=1)
    t0 = time.monotonic()
    assert not logger.close(timeout_s=120)
    assert 2 <= time.monotonic() - t0 < 10 and logger.pending == 1
    assert logger.outage_since is not None  # handed to the driver: the same outage, the same budget


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.faults
def test_mlflow_killed_mid_run_bounded_exit_fallback_then_runs_sync(tmp_path, tiny_dataset, ray_local, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import start_server

    root = tmp_path / "mlflow"
    server = start_server(root, wait_s=300)
    uri = server["uri"]
    eval_tiny = ["eval.enabled=true", "eval.linear_epochs=5", "eval.linear_milestones=[4]", "eval.references=[]",
                 "eval.knn_k=5", f"tracking.retry_budget_s={BUDGET_S}"]  # fmt: skip
    path, cfg = make_config(tmp_path, tiny_dataset, "outage", epochs=4, overrides=eval_tiny)
    env = cli_env(MLFLOW_TRACKING_URI=uri, MSCLR_HOME=str(msclr_home))
    args = [a for a in pretrain_args(path, *[x for kv in eval_tiny for x in ("--set", kv)]) if a != "--no-eval"]
    run_dir = Path(run_directory(cfg))
    fallback = run_dir / FALLBACK_DIR
    restarted = None
    try:
        with fault_case(f"MLflow server killed after epoch 1, not back (retry budget {BUDGET_S} s)") as case:
            proc = start_cli(args, env, tmp_path, "outage")
            wait_for(lambda: (run_dir / "epoch-00001").exists() or proc.poll() is not None)
            _kill_group(server["pid"])
            down = time.monotonic()
            code = proc.wait(timeout=600)
            took = time.monotonic() - down
            out, err = logs(tmp_path, "outage")
            assert code == 1, (code, err[-3000:])
            last = err.strip().splitlines()[-1]
            assert last.startswith("msclr: error: MLflow server") and "Traceback" not in err, err[-3000:]
            assert str(fallback) in last and last.endswith(f"msclr runs sync {cfg.name}"), last
            assert took < BUDGET_S + 150, f"{took:.0f} s from the kill to the exit"  # was ~7 min of retries
            manifest = json.loads((fallback / "manifest.json").read_text())
            assert manifest["pretrain"]["status"] == "FINISHED"
            assert {"encoder_q.pt", "training_curves.png", "history.json"} <= {p.name for p in (fallback / "pretrain").iterdir()}
            (record,) = manifest["evaluations"]
            assert {"results.csv", "confusion.png", "test_logits.npz"} <= {p.name for p in (fallback / record["dir"]).iterdir()}
            history = json.loads((fallback / "pretrain" / "history.json").read_text())
            assert [h["epoch"] for h in history] == [1, 2, 3, 4]
            assert load_state(sorted(run_dir.glob("epoch-*/state.pt"))[-1])["epoch"] == 4
            case["detail"] = (f"exit 1 {took:.0f} s after the kill (training finished meanwhile); encoder, plots, "
                              f"history and evaluation in {fallback.name}/; message ends '{last[-40:]}'")  # fmt: skip

        with fault_case("server back on the same database: `msclr runs sync NAME` uploads and closes the run") as case:
            restarted = start_server(root, port=server["port"], wait_s=300)
            refused = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
            assert refused.returncode == 2 and f"msclr runs sync {cfg.name}" in refused.stderr, refused.stderr[-2000:]
            synced = subprocess.run([MSCLR, "runs", "sync", cfg.name], env=env, capture_output=True, text=True,
                                    timeout=300)  # fmt: skip
            assert synced.returncode == 0, synced.stderr[-3000:]
            client = MlflowClient(uri)
            run = the_run(client, cfg)
            assert run.info.status == "FINISHED"
            assert {"config.yaml", "encoder_q.pt", "training_curves.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
            assert_history_shows(client, run, history)
            evaluation = the_run(client, cfg, eval_run_name(cfg.name))
            assert evaluation.info.status == "FINISHED" and evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id
            assert 0 <= evaluation.data.metrics["linear_top1.ntu-rgb_d"] <= 1
            assert {"results.csv", "test_logits.npz"} <= {a.path for a in client.list_artifacts(evaluation.info.run_id)}
            assert not fallback.exists()
            again = subprocess.run([MSCLR, "runs", "sync", cfg.name], env=env, capture_output=True, text=True, timeout=300)
            assert again.returncode == 2 and "nothing to sync" in again.stderr, again.stderr[-2000:]
            case["detail"] = "pretrain run FINISHED with 4 epochs and its artifacts, eval child run FINISHED; fallback removed"
    finally:
        for info in (server, restarted):
            if info:
                _kill_group(info["pid"])
