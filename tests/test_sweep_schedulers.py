"""Each Tune scheduler a sweep accepts, on a tiny real sweep (issue 14).

ASHA has its own end-to-end test (test_sweep_e2e.py); here fifo and median each run
2 trials x 2 epochs through `run_sweep` (one Ray runtime, a real MLflow server), with
Tune's own spellings in the search space (grid_search, quniform). The refused
schedulers (hyperband, pbt, pb2) are tested in test_search_space.py.
"""

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("schedulers") / "synth"
    write_synth_dataset(root, clips=240, seed=3, conventions=["ntu-rgb+d", "smplx_42"])
    return root


def write_sweep(tmp_path, data, scheduler, lrs):
    p = tmp_path / f"{scheduler}.yaml"
    p.write_text(f"""\
name: sched-{scheduler}
base: {REPO / 'experiments/quickstart.yaml'}
overrides:
  data.path: {data}
  data.max_train_samples: 128
  data.max_test_samples: 64
  optim.epochs: 2
  optim.passes_per_epoch: 1
  model.num_blocks: 2
  model.hidden_dim: 16
  eval.probe_samples: 64
  ray.cpus_per_worker: 1
  ray.checkpoint_every: 1
  ray.storage_path: {tmp_path / 'ray'}
  tracking.experiment: msclr-schedulers
  tracking.system_metrics: false
search:
  optim.lr: {{grid_search: {lrs}}}
  method.temperature: {{quniform: [0.05, 0.2, 0.05]}}
metric: lr
mode: max
scheduler: {{type: {scheduler}, grace_period: 1}}
num_samples: 1
max_concurrent_trials: 4
final_eval: false
""")
    return p


# metric: lr (reported each epoch, mode max) makes the best trial deterministic: the one with the
# higher learning rate, whatever the tiny model learns.
@pytest.mark.parametrize("scheduler", ["fifo", "median"])
def test_tiny_sweep_under_scheduler(tmp_path, tiny_data, mlflow_server, msclr_home, scheduler):
    from mlflow.tracking import MlflowClient

    from msclr_platform.sweep import run_sweep

    lrs = [0.05, 0.0001]
    t0 = time.monotonic()
    out = run_sweep(write_sweep(tmp_path, tiny_data, scheduler, lrs), quiet=True)
    print(f"{scheduler}: {time.monotonic() - t0:.0f}s\n{out['table'].to_string()}")
    table = out["table"]
    assert len(table) == len(lrs) and set(table["status"]) == {"TERMINATED"}, table.to_string()
    assert sorted(table["optim.lr"]) == sorted(lrs)  # grid_search expanded
    assert {round(t, 9) for t in table["method.temperature"]} <= {0.05, 0.1, 0.15, 0.2}  # quniform: multiples of q
    assert out["unfinished"] == 0 and out["best_trial"] in set(table["trial_id"])
    by_lr = table.set_index("optim.lr")
    assert by_lr.loc[max(lrs), "trial_id"] == out["best_trial"]
    # fifo never stops a trial; median needs 3 other trials to compare (its stop decision is
    # tested without Ray in test_search_space.py)
    assert not table["stopped_early"].any() and set(table["epochs_done"]) == {2}, table.to_string()
    client = MlflowClient(mlflow_server)
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags.get("best_trial") == out["best_trial"]
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    names = {k.data.tags["msclr.run_name"]: k for k in kids}
    assert sorted(names) == sorted(f"sched-{scheduler}-{t}" for t in table["trial_id"]), list(names)  # one child each
    for row in table.itertuples():
        kid = names[f"sched-{scheduler}-{row.trial_id}"]
        assert kid.info.status == ("KILLED" if row.stopped_early else "FINISHED"), (row, kid.info.status)
        # each epoch's loss once, from 1 without gaps
        steps = sorted(m.step for m in client.get_metric_history(kid.info.run_id, "loss"))
        assert steps == list(range(1, row.epochs_done + 1)), (row, steps)
