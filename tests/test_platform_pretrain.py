"""Ray Train pretraining end to end: real local Ray, real MLflow server, real files."""

import dataclasses
import time

import pytest

from msclr_core.errors import ConfigError
from msclr_platform.config import load_config
from msclr_platform.resume import ConfigChanged

pytestmark = pytest.mark.slow

TINY = """
name: {name}
data: {{path: {data}, protocol: xsub}}
conventions: [ntu-rgb+d, smplx_42]
model: {{hidden_channels: 8, hidden_dim: 32, num_blocks: 2, dropout: 0.0}}
method: {{feature_dim: 16, queue_size: 128, mining_epoch: 1000}}
optim: {{epochs: 2, batch_size: 32, lr: 0.05, passes_per_epoch: 1}}
eval: {{linear_epochs: 10, linear_milestones: [8], knn_k: 5}}
ray: {{num_workers: 1, checkpoint_every: 1}}
tracking: {{experiment: {experiment}, system_metrics: false}}
"""


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("ds") / "synth"
    write_synth_dataset(root, clips=240, seed=1, conventions=["ntu-rgb+d", "smplx_42"])
    return root


def tiny_config(tmp_path, dataset, name, experiment="platform-tests", overrides=()):
    p = tmp_path / f"{name}.yaml"
    p.write_text(TINY.format(name=name, data=dataset, experiment=experiment))
    return load_config(p, list(overrides))


def artifact_names(client, run_id):
    return {a.path for a in client.list_artifacts(run_id)}


def test_pretrain_logs_run_and_resumes_by_name(tmp_path, tiny_dataset, mlflow_server, ray_local, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.experiment import run_experiment, run_pretrain

    cfg = tiny_config(tmp_path, tiny_dataset, "resume-me")
    out = run_experiment(cfg)
    client = MlflowClient(mlflow_server)
    run_id = out["pretrain_run_id"]
    run = client.get_run(run_id)
    assert run.data.params["optim.lr"] == "0.05" and run.data.params["method.queue_size"] == "128"
    # machine facts are tags, not params (hyper-parameters only in the compare view)
    assert not {"data.path", "tracking.tracking_uri", "ray.address", "ray.storage_path"} & set(run.data.params)
    assert run.data.tags["msclr.data.path"] == str(tiny_dataset.resolve()) and "msclr.ray.address" not in run.data.tags
    assert run.data.tags["msclr.tracking.tracking_uri"] == mlflow_server  # the server it used, given or not
    assert run.data.tags["conventions"] == "ntu-rgb+d,smplx_42" and run.data.tags["stream"] == "joint"
    assert "mlflow.source.git.commit" in run.data.tags and "msclr.version" in run.data.tags
    assert run.data.tags["msclr.consistency"] == "ok"  # the conventions of the synthetic set agree
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
    assert {"config.yaml", "encoder_q.pt", "training_curves.png", "embedding_pca.png"} <= artifact_names(client, run_id)
    # the encoder is also the run's logged MLflow model (test_mlflow_views.py checks what it computes)
    assert run.data.tags["msclr.model_uri"].startswith("models:/") and "msclr.model_error" not in run.data.tags
    assert [o.step for o in run.outputs.model_outputs] == [2]
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest

    eval_run = client.get_run(out["eval_run_id"])
    assert eval_run.data.tags["mlflow.parentRunId"] == run_id
    assert "linear_top1" not in eval_run.data.metrics  # one name, one meaning: always per convention or ensemble
    assert "linear_top1.ensemble" in eval_run.data.metrics and "linear_top1.smplx_42" in eval_run.data.metrics
    # the result is on the run you compare: the pretraining run carries its encoder's final accuracies
    final = client.get_run(run_id).data.metrics
    for key in ("linear_top1.ntu-rgb_d", "linear_top1.smplx_42", "linear_top1.ensemble", "knn_top1.ntu-rgb_d",
                "knn_top1.smplx_42"):
        assert final[key] == eval_run.data.metrics[key], key
    assert not any(k.startswith(("raw.", "random_init.", "linear_top5")) for k in final)  # those stay on the eval run
    assert eval_run.data.params["protocol.reported_epoch"] == "last"
    # the references, on the same split and probe, under their own prefixes (default: raw, random-init)
    metrics = eval_run.data.metrics
    for ref in ("raw", "random_init"):
        assert 0.0 <= metrics[f"{ref}.linear_top1.ntu-rgb_d"] <= 1.0 and f"{ref}.knn_top1.smplx_42" in metrics
    assert "random_init.linear_top1.ensemble" in metrics and "raw.linear_top1.ensemble" not in metrics
    assert "supervised.linear_top1.ntu-rgb_d" not in metrics  # opt-in
    assert "test_selected_top1.ntu-rgb_d" in metrics and metrics["collapsed.ntu-rgb_d"] in (0.0, 1.0)
    assert {"results.csv", "confusion.png", "test_logits.npz", "results_table.json"} <= artifact_names(
        client, out["eval_run_id"])

    # Same name, one more epoch: a config change, refused unless asked for; then the Ray run
    # resumes from its checkpoint and the same MLflow run gets epoch 3 only (no second run,
    # no duplicated steps), with the change recorded as config version 2 from epoch 3.
    cfg3 = tiny_config(tmp_path, tiny_dataset, "resume-me", overrides=["optim.epochs=3"])
    with pytest.raises(ConfigChanged, match=r"optim.epochs: 2 -> 3"):
        run_pretrain(cfg3)
    res = run_pretrain(cfg3, on_change="resume-changed")
    assert res.run_id == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3]
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["msclr.config_version"] == "2"
    assert run.data.params["optim.epochs"] == "2" and run.data.params["v2.optim.epochs"] == "3"
    assert run.data.params["v2.from_epoch"] == "3"
    runs = client.search_runs([run.info.experiment_id], filter_string="tags.`msclr.run_name` = 'resume-me'")
    assert len(runs) == 1


def test_two_workers_train_with_gloo(tmp_path, tiny_dataset, mlflow_server, ray_local, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.experiment import run_pretrain

    cfg = tiny_config(tmp_path, tiny_dataset, "two-workers", overrides=["ray.num_workers=2", "optim.epochs=1"])
    res = run_pretrain(cfg)
    hist = MlflowClient(mlflow_server).get_metric_history(res.run_id, "samples_per_s")
    assert len(hist) == 1 and hist[0].value > 0


def test_missing_resources_fail_fast_naming_them(tmp_path, tiny_dataset, mlflow_server, ray_local, msclr_home):
    from msclr_platform.experiment import run_pretrain

    cfg = tiny_config(tmp_path, tiny_dataset, "too-big", overrides=["ray.num_workers=8"])
    with pytest.raises(ConfigError, match=r"CPU: need 8"):
        run_pretrain(cfg)


def test_resource_check_counts_nodes_for_strict_spread_and_the_trial_driver(tmp_path, tiny_dataset):
    from msclr_platform.resources import missing

    cfg = tiny_config(tmp_path, tiny_dataset, "spread", overrides=["ray.num_workers=2", "ray.cpus_per_worker=2",
                                                                   "ray.placement_strategy=STRICT_SPREAD"])
    one_big = [{"Alive": True, "Resources": {"CPU": 8.0}}]
    two = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 2.0}}]
    dead = [*two[:1], {"Alive": False, "Resources": {"CPU": 2.0}}]
    assert missing(cfg, two) == []
    assert "STRICT_SPREAD needs 2 nodes" in missing(cfg, one_big)[0]  # enough CPUs, one node
    assert missing(cfg, dead) == ["CPU: need 4 (2 workers x 2), cluster has 2"]  # a dead node counts for nothing
    assert "+ 0.5 for the trial driver" in missing(cfg, two, extra_cpus=0.5)[0]
    pack = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, placement_strategy="PACK"))
    assert missing(pack, one_big) == []


def test_resource_wait_asks_the_autoscaler_then_names_what_never_came(tmp_path, tiny_dataset, ray_local, monkeypatch):
    from msclr_platform.resources import WAIT_ENV, check_resources

    cfg = tiny_config(tmp_path, tiny_dataset, "wait", overrides=["ray.num_workers=8"])
    lines = []
    monkeypatch.setenv(WAIT_ENV, "2")  # what the cluster files set; a fixed local cluster never grows
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"after waiting 2 s for the autoscaler: CPU: need 8") as err:
        check_resources(cfg, log=lines.append)
    assert 2 <= time.monotonic() - t0 < 30 and "wait-for-resources" not in str(err.value)
    assert lines and lines[0].startswith("msclr: waiting for the autoscaler") and "CPU: need 8" in lines[0]
    monkeypatch.delenv(WAIT_ENV)
    with pytest.raises(ConfigError, match="--wait-for-resources"):  # strict: at once, saying how to wait
        check_resources(cfg, log=lines.append)
    check_resources(tiny_config(tmp_path, tiny_dataset, "fits"), log=lines.append)  # 1 worker fits: no error


def test_pretrain_wait_for_resources_flag_waits_then_fails_the_run(tmp_path, tiny_dataset, mlflow_server, ray_local,
                                                                   msclr_home, capsys):
    from mlflow.tracking import MlflowClient

    from msclr_platform.cli import main

    tiny_config(tmp_path, tiny_dataset, "never-fits")  # writes never-fits.yaml
    code = main(["pretrain", str(tmp_path / "never-fits.yaml"), "--set", "ray.num_workers=8", "--wait-for-resources", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "after waiting 1 s for the autoscaler: CPU: need 8" in err and "waiting for the autoscaler" in err
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("platform-tests")
    run = client.search_runs([exp.experiment_id], "tags.`msclr.run_name` = 'never-fits'")[0]
    assert run.info.status == "FAILED" and run.data.params["ray.wait_for_resources_s"] == "1.0"  # what ran


def test_unreachable_tracking_server_fails_before_compute(tmp_path, tiny_dataset, msclr_home):
    from msclr_platform.experiment import run_pretrain

    cfg = tiny_config(tmp_path, tiny_dataset, "no-server", overrides=["tracking.tracking_uri=http://127.0.0.1:9"])
    with pytest.raises(ConfigError, match="unreachable"):
        run_pretrain(cfg)


def test_queue_not_multiple_of_global_batch_is_rejected(tmp_path, tiny_dataset, msclr_home):
    from msclr_platform.train import preflight

    with pytest.raises(ConfigError, match="queue"):  # a rule between keys: refused when the config loads
        tiny_config(tmp_path, tiny_dataset, "bad-queue", overrides=["method.queue_size=100"])
    cfg = tiny_config(tmp_path, tiny_dataset, "bad-conv", overrides=["conventions=[ntu-rgb+d, smpl_24]"])
    with pytest.raises(ConfigError, match="smpl_24"):
        preflight(cfg)
