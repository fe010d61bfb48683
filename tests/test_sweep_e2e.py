"""The shipped smoke sweep end to end, interrupted and resumed, as a user runs it.

`msclr sweep experiments/sweeps/smoke.yaml` runs in a subprocess against a real MLflow
server; once the second trial has started, the driver gets SIGINT (Ctrl-C), then
`msclr sweep ... --resume` finishes the sweep. Then: every trial ended (no deadlock),
ASHA stopped at least one early, MLflow holds one parent run with exactly one child per
trial (the resume created no duplicates) and continuous per-epoch metrics.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli_output import NOISE

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments/sweeps/smoke.yaml"
MSCLR = str(Path(sys.executable).parent / "msclr")


def children(client, parent_id):
    exp_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_smoke_sweep_asha_interrupt_resume(tmp_path, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_core.data.synth import write_synth_dataset

    data = tmp_path / "synth"
    write_synth_dataset(data, clips=600, seed=11, conventions=["ntu-rgb+d", "smplx_42", "smpl_24"])
    args = [MSCLR, "sweep", str(SMOKE), "--set", f"data.path={data}", "--set", f"ray.storage_path={tmp_path / 'ray'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env["MLFLOW_TRACKING_URI"] = mlflow_server
    client = MlflowClient(mlflow_server)

    log1 = open(tmp_path / "sweep1.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log1, stderr=subprocess.STDOUT, cwd=tmp_path)
    deadline, parent = time.monotonic() + 1500, None
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name("msclr-sweeps")
        runs = client.search_runs([exp.experiment_id], "tags.`msclr.kind` = 'sweep'") if exp else []
        if runs and len(children(client, runs[0].info.run_id)) >= 2:
            parent = runs[0].info.run_id
            break
        time.sleep(2)
    assert parent, "the second trial never started:\n" + (tmp_path / "sweep1.log").read_text()[-4000:]
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and the command exits
    rc1 = proc.wait(300)
    first_log = (tmp_path / "sweep1.log").read_text()
    assert rc1 != 0 and "--resume" in first_log, first_log[-4000:]
    assert client.get_run(parent).info.status == "RUNNING"

    resumed = subprocess.run([*args, "--resume", "--json"], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=1500)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    print(resumed.stdout[-3000:])
    # Quiet by default in sweeps too: Ray's and MLflow's own lines stay off the terminal, also those
    # of the trial processes, and no "View run" pair per trial (the parent's link is printed once).
    output = first_log + resumed.stdout + resumed.stderr
    for marker in (*NOISE, "View run", "UserWarning", "Cleaning up placement group"):
        assert marker not in output, (marker, output[-4000:])

    sweeps = client.search_runs([client.get_run(parent).info.experiment_id], "tags.`msclr.kind` = 'sweep'")
    assert [r.info.run_id for r in sweeps] == [parent]  # one parent, reused on resume
    assert client.get_run(parent).info.status == "FINISHED"
    kids = children(client, parent)
    names = [k.data.tags["msclr.run_name"] for k in kids]
    assert len(names) == 4 and len(set(names)) == 4, names  # one child per trial, no duplicates
    stopped = [k for k in kids if "msclr.stopped_early" in k.data.tags]
    finished = [k for k in kids if k.info.status == "FINISHED"]
    # Which trials ASHA stops depends on the order they reach a rung (a trial that arrives first is
    # never compared), so a stop is not guaranteed here; a stopped trial must be KILLED and tagged.
    assert all(k.info.status == "KILLED" for k in stopped)
    assert len(stopped) + len(finished) == 4  # every trial ended
    for kid in kids:  # per-epoch probe metric, each epoch once, from 1 without gaps
        steps = [m.step for m in client.get_metric_history(kid.info.run_id, "probe_knn_top1")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), (kid.data.tags["msclr.run_name"], steps)
    assert any(k.data.tags.get("msclr.best_trial") == "true" for k in finished)
    for kid in finished:  # the result is on the run compared: final accuracies beside the trial's params
        assert any(key.startswith("linear_top1.") for key in kid.data.metrics), kid.data.metrics
    assert {"sweep_results.csv", "smoke.yaml"} <= {a.path for a in client.list_artifacts(parent)}
    knn = {k.info.run_id: {m.step: m.value for m in client.get_metric_history(k.info.run_id, "probe_knn_top1")}
           for k in kids}
    for k in stopped:  # ASHA stops only a trial below another one at the same rung
        last = max(knn[k.info.run_id])
        assert any(h.get(last, -1) > knn[k.info.run_id][last] for rid, h in knn.items() if rid != k.info.run_id)
