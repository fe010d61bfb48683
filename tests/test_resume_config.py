"""Resume is explicit about the config, and MLflow shows the run that continues (issue 13).

Against the session's real MLflow server, without Ray: the stored config of a run is compared
with a new one (same, neutral keys only, result-changing keys), --new-run picks a suffixed
name, --resume-changed records a config version; a replayed epoch with other values is
logged again so that MLflow's latest value at that step is the continuing run's.
"""

from __future__ import annotations

import pytest
from run_helpers import assert_history_shows, make_config

from msclr_platform import resume
from msclr_platform.resume import ConfigChanged, config_diff, plan_resume
from msclr_platform.tracking import MetricLogger, get_or_create_run, latest_values, sync_history


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server)


def stored_run(client, cfg, name=None) -> str:
    run_id, _ = get_or_create_run(client, cfg.tracking.experiment, name or cfg.name)
    resume.log_config(client, run_id, cfg)
    return run_id


def no_runs(_name):
    return None


def test_config_diff_reads_old_configs_through_the_schema(tmp_path):
    _, cfg = make_config(tmp_path, tmp_path / "ds", "old")
    old = cfg.to_dict()
    del old["tracking"]["retry_budget_s"]  # a key added since that run was stored: compared at its default
    assert config_diff(old, cfg.to_dict()) == {}
    old["optim"]["lr"], old["ray"]["max_failures"] = 0.5, 3
    assert config_diff(old, cfg.to_dict()) == {"optim.lr": (0.5, 0.05), "ray.max_failures": (3, 0)}
    neutral, changed = resume.split(config_diff(old, cfg.to_dict()))
    assert list(neutral) == ["ray.max_failures"] and list(changed) == ["optim.lr"]


def test_same_or_neutral_config_resumes_and_records_neutral_changes(tmp_path, client, msclr_home):
    _, cfg = make_config(tmp_path, tmp_path / "ds", "resume-same")
    run_id = stored_run(client, cfg)
    plan = plan_resume(client, cfg, run_id, "refuse", run_exists=no_runs)
    assert (plan.cfg.name, plan.neutral, plan.changed, plan.stored) == ("resume-same", {}, {}, True)
    _, neutral = make_config(tmp_path, tmp_path / "ds", "resume-same",
                             overrides=["ray.max_failures=2", "tracking.retry_budget_s=30", "ray.checkpoint_every=2"])
    plan = plan_resume(client, neutral, run_id, "refuse", run_exists=no_runs)
    assert set(plan.neutral) == {"ray.max_failures", "ray.checkpoint_every", "tracking.retry_budget_s"}
    assert not plan.changed
    resume.record(client, run_id, plan, from_epoch=4)
    note = client.get_run(run_id).data.tags["msclr.neutral_changes"]
    assert note.startswith("epoch 4: ") and "ray.max_failures: 0 -> 2" in note


def test_changed_config_is_refused_naming_each_key_with_old_and_new_values(tmp_path, client, msclr_home):
    _, cfg = make_config(tmp_path, tmp_path / "ds", "resume-refused")
    run_id = stored_run(client, cfg)
    _, changed = make_config(tmp_path, tmp_path / "ds", "resume-refused",
                             overrides=["optim.lr=0.5", "optim.epochs=6", "ray.max_failures=1"])
    with pytest.raises(ConfigChanged) as err:
        plan_resume(client, changed, run_id, "refuse", run_exists=no_runs)
    message = str(err.value)
    assert "optim.lr: 0.05 -> 0.5" in message and "optim.epochs: 3 -> 6" in message, message
    assert "ray.max_failures" not in message  # neutral: not a reason to refuse
    assert "--new-run" in message and "resume-refused-2" in message and "--resume-changed" in message
    assert run_id in message
    assert "msclr.config_version" not in client.get_run(run_id).data.tags  # a refusal writes nothing


def test_resume_changed_records_a_config_version(tmp_path, client, msclr_home):
    _, cfg = make_config(tmp_path, tmp_path / "ds", "resume-changed")
    run_id = stored_run(client, cfg)
    _, changed = make_config(tmp_path, tmp_path / "ds", "resume-changed", overrides=["optim.lr=0.5"])
    plan = plan_resume(client, changed, run_id, "resume-changed", run_exists=no_runs)
    assert plan.changed == {"optim.lr": (0.05, 0.5)} and plan.version == 1
    resume.record(client, run_id, plan, from_epoch=3)
    run = client.get_run(run_id)
    assert run.data.tags["msclr.config_version"] == "2"
    assert run.data.tags["msclr.config_v2"] == "from epoch 3: optim.lr: 0.05 -> 0.5"
    assert run.data.params["v2.optim.lr"] == "0.5" and run.data.params["v2.from_epoch"] == "3"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "config_version")] == [(3, 2.0)]
    # Version 2 is now what the run is compared with: the changed config resumes as it is,
    # and going back to the first one is a change again.
    assert resume.stored_config(client, run_id) == (changed.to_dict(), 2)
    assert not plan_resume(client, changed, run_id, "refuse", run_exists=no_runs).changed
    with pytest.raises(ConfigChanged, match=r"optim.lr: 0.5 -> 0.05"):
        plan_resume(client, cfg, run_id, "refuse", run_exists=no_runs)


def test_new_run_takes_the_first_free_suffix_or_the_one_with_this_config(tmp_path, client, msclr_home):
    _, cfg = make_config(tmp_path, tmp_path / "ds", "fork")
    run_id = stored_run(client, cfg)
    runs: dict[str, str] = {}
    _, lr5 = make_config(tmp_path, tmp_path / "ds", "fork", overrides=["optim.lr=0.5"])
    plan = plan_resume(client, lr5, run_id, "new-run", run_exists=runs.get)
    assert plan.cfg.name == "fork-2" and not plan.stored
    runs["fork-2"] = stored_run(client, plan.cfg)
    again = plan_resume(client, lr5, run_id, "new-run", run_exists=runs.get)
    assert again.cfg.name == "fork-2" and again.stored  # the same command resumes its run
    _, lr9 = make_config(tmp_path, tmp_path / "ds", "fork", overrides=["optim.lr=0.9"])
    assert plan_resume(client, lr9, run_id, "new-run", run_exists=runs.get).cfg.name == "fork-3"


def history(values: dict[int, float]) -> list[dict]:
    return [{"epoch": e, "loss": v, "lr": 0.05, "samples_per_s": 100.0} for e, v in values.items()]


def test_replayed_epochs_show_the_continuing_runs_values(client):
    run_id, _ = get_or_create_run(client, "replay", "replay")
    first = MetricLogger(client.tracking_uri, run_id)
    first.log_history(history({1: 1.0, 2: 2.0, 3: 3.0}))
    assert first.close(60)
    # A restore from epoch 1: epochs 2 and 3 are trained again, epoch 3 with another value.
    continuing = history({1: 1.0, 2: 2.0, 3: 3.5})
    second = MetricLogger(client.tracking_uri, run_id)
    second.log_history(continuing)
    assert second.close(60)
    losses = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in losses) == [(1, 1.0), (2, 2.0), (3, 3.0), (3, 3.5)]
    assert latest_values(client, run_id, "loss")[3][1] == 3.5  # the later entry: the run that continued
    assert len(client.get_metric_history(run_id, "lr")) == 3  # equal values are not logged twice
    assert sync_history(client, run_id, continuing) == 0  # the driver's copy: nothing left to send
    continuing[1]["loss"] = 2.25  # a checkpoint that says otherwise wins
    assert sync_history(client, run_id, continuing) == 1
    assert_history_shows(client, client.get_run(run_id), continuing)
