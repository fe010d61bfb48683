"""Ray Tune sweeps from YAML: validation, the smoke sweep with ASHA, resume without duplicates."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msclr_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments/sweeps/smoke.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sweep_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("sweepdata") / "synth"
    write_synth_dataset(root, clips=480, seed=5, conventions=["ntu-rgb+d", "smplx_42", "smpl_24"])
    return root


def write_sweep(tmp_path, search, extra=""):
    p = tmp_path / "sweep.yaml"
    p.write_text(f"name: t\nbase: {REPO / 'experiments/quickstart.yaml'}\nsearch:\n{search}\n{extra}")
    return p


def test_sweep_validation_names_file_and_key(tmp_path, sweep_dataset, msclr_home):
    from msclr_platform.sweep import load_sweep

    data = [f"data.path={sweep_dataset}"]
    bad = write_sweep(tmp_path, "  method.temperatur: {choice: [0.1]}")
    with pytest.raises(ConfigError, match="temperatur") as e:
        load_sweep(bad, data)
    assert str(bad) in str(e.value)
    bad = write_sweep(tmp_path, "  method.queue_size: {choice: [1024, 1000]}")
    with pytest.raises(ConfigError, match="queue_size"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  conventions: {choice: [[ntu-rgb+d, berkeley_mhad_43]]}")
    with pytest.raises(ConfigError, match="berkeley_mhad_43"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  optim.lr: {normal: [0, 1]}")
    with pytest.raises(ConfigError, match="search.optim.lr"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  optim.lr: {loguniform: [0.01, 0.1]}", "search_alg: nevergrad\n")
    from msclr_platform.sweep import searcher

    with pytest.raises(ConfigError, match="nevergrad"):
        searcher(load_sweep(bad, data).spec)


def test_shipped_sweeps_validate(sweep_dataset, msclr_home):
    from msclr_platform.sweep import load_sweep

    sweep = load_sweep(SMOKE, [f"data.path={sweep_dataset}"])
    assert {"method.temperature", "method.queue_size", "conventions"} <= set(sweep.spec.search)
    ntu = REPO / "experiments/sweeps/ntu60_temperature_queue_skeletons.yaml"
    with pytest.raises(ConfigError, match="berkeley_mhad_43|smpl_24"):  # the synthetic set lacks MHAD
        load_sweep(ntu, [f"data.path={sweep_dataset}", "ray.storage_path=/tmp/unused"])


@pytest.mark.slow
def test_smoke_sweep_asha_parent_child_and_resume(tmp_path, sweep_dataset, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MSCLR_HOME": str(msclr_home)}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "msclr"), "sweep", str(SMOKE), "--set", f"data.path={sweep_dataset}", "--json"]
    client = MlflowClient(mlflow_server)

    def trial_runs():
        exp = client.get_experiment_by_name("msclr-sweeps")
        if exp is None:
            return []
        return client.search_runs([exp.experiment_id], filter_string="tags.`msclr.kind` = 'trial'")

    # Start, interrupt with Ctrl-C once a trial has reported, then resume.
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if any(client.get_metric_history(r.info.run_id, "loss") for r in trial_runs()):
            break
        time.sleep(3)
    interrupted = proc.poll() is None
    if interrupted:
        os.killpg(proc.pid, signal.SIGINT)
    first_out = proc.communicate(timeout=300)[0]
    if interrupted:
        res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
        out_text = res.stdout
        assert res.returncode == 0, first_out[-3000:] + res.stdout[-3000:] + res.stderr[-3000:]
    else:
        out_text = first_out
    wall = time.monotonic() - t0
    out = json.loads(out_text.strip().splitlines()[-1])
    trials = out["trials"]
    print(f"\nsmoke sweep wall time {wall:.0f} s (interrupted and resumed: {interrupted})")
    print("\n".join(str(t) for t in trials))
    assert len(trials) == 4
    assert all(t["status"] == "TERMINATED" for t in trials), trials
    assert sum(bool(t["stopped_early"]) for t in trials) >= 1, trials
    runs = trial_runs()
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)) == 4, names  # resume created no duplicates
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {out["parent_run_id"]}
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags.get("best_trial")
    assert "sweep_results.csv" in {a.path for a in client.list_artifacts(out["parent_run_id"])}
