"""`msclr runs compare` as a user runs it: a real subprocess against the session's MLflow server."""

import json
import os
import subprocess

import pytest
from run_helpers import MSCLR


@pytest.fixture(scope="module")
def experiment(mlflow_server):
    """An experiment holding a pretraining run (with its final metrics) and its evaluation child."""
    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import get_or_create_run

    client = MlflowClient(mlflow_server)
    name = "compare-cli"
    pre, _ = get_or_create_run(client, name, "pre", tags={"msclr.kind": "pretrain", "conventions": "ntu-rgb+d"})
    client.log_metric(pre, "linear_top1.ntu-rgb_d", 0.625)
    client.log_metric(pre, "loss", 1.5, step=1)
    ev, _ = get_or_create_run(client, name, "pre/eval", parent_run_id=pre, tags={"msclr.kind": "evaluation"})
    client.log_metric(ev, "raw.linear_top1.ntu-rgb_d", 0.5)
    client.set_terminated(pre, "FINISHED")
    return {"name": name, "pretrain": pre, "eval": ev}


def compare(*args, uri):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([MSCLR, "runs", "compare", *args], env=env, capture_output=True, text=True, timeout=120)


def test_compare_json_prints_one_document_of_the_runs(experiment, mlflow_server, msclr_home):
    res = compare(experiment["name"], "--json", uri=mlflow_server)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)  # the whole of stdout: one JSON document, nothing else
    assert doc["experiment"] == experiment["name"]
    runs = {r["run_id"]: r for r in doc["runs"]}
    assert set(runs) == {experiment["pretrain"], experiment["eval"]}
    pre = runs[experiment["pretrain"]]
    assert pre["run"] == "pre" and pre["kind"] == "pretrain" and pre["status"] == "FINISHED"
    assert pre["linear_top1.ntu-rgb_d"] == 0.625 and pre["loss"] == 1.5
    assert runs[experiment["eval"]]["parent"] == experiment["pretrain"]
    assert runs[experiment["eval"]]["linear_top1.ntu-rgb_d"] is None  # NaN is null, not invalid JSON


def test_compare_human_table_shows_the_runs(experiment, mlflow_server, msclr_home):
    res = compare(experiment["name"], uri=mlflow_server)
    assert res.returncode == 0, res.stderr[-3000:]
    assert experiment["pretrain"][:8] in res.stdout and "linear_top1.ntu-rgb_d" in res.stdout


def test_unknown_experiment_exits_2_naming_it(experiment, mlflow_server, msclr_home):
    res = compare("no-such-experiment", "--json", uri=mlflow_server)
    assert res.returncode == 2 and res.stdout == ""
    assert "no MLflow experiment 'no-such-experiment'" in res.stderr and experiment["name"] in res.stderr


def test_without_experiment_lists_or_uses_the_configs(experiment, mlflow_server, msclr_home, tmp_path):
    res = compare("--json", uri=mlflow_server)
    assert res.returncode == 0, res.stderr[-3000:]
    assert experiment["name"] in {e["name"] for e in json.loads(res.stdout)["experiments"]}

    config = tmp_path / "exp.yaml"
    config.write_text(f"name: x\ndata: {{path: {tmp_path}}}\ntracking: {{experiment: {experiment['name']}}}\n")
    res = compare("--config", str(config), "--json", uri=mlflow_server)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["experiment"] == experiment["name"] and len(doc["runs"]) == 2
