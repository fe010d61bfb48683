"""What a researcher sees in MLflow when comparing runs (issue 14): the encoder as a logged
model, results as tables, class names in the PCA plot, MLflow's context tags, run names.

Unit level against a real MLflow server (no Ray, no training): the functions the drivers call."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from msclr_platform.config import load_config

TINY = """
name: {name}
data: {{path: {data}, protocol: xsub}}
conventions: [ntu-rgb+d, smplx_42]
stream: {stream}
model: {{hidden_channels: 8, hidden_dim: 32, num_blocks: 2, dropout: 0.0}}
method: {{feature_dim: 16, queue_size: 128, mining_epoch: 1000}}
optim: {{epochs: 1, batch_size: 32, lr: 0.05, passes_per_epoch: 1}}
tracking: {{experiment: mlflow-views, system_metrics: false}}
"""


@pytest.fixture(scope="module")
def views_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("views") / "synth"
    write_synth_dataset(root, clips=120, seed=3, conventions=["ntu-rgb+d", "smplx_42"])
    return root


def views_config(tmp_path, dataset, name, stream="bone"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(TINY.format(name=name, data=dataset, stream=stream))
    return load_config(p, [])


def new_run(client, name, experiment="mlflow-views"):
    from msclr_platform.tracking import get_or_create_run

    run_id, resumed = get_or_create_run(client, experiment, name)
    assert not resumed
    return run_id


def test_encoder_is_a_logged_model_and_the_run_stays_open(tmp_path, views_dataset, mlflow_server, monkeypatch):
    """The driver's end of a pretraining run (write_pretrain_artifacts + upload_pretrain with the
    model logged before the run closes), through the budgeted client the driver uses."""
    import mlflow
    import torch

    from msclr_core import evaluation as E
    from msclr_core.pretrain import build_model
    from msclr_platform import plots
    from msclr_platform.config import flatten
    from msclr_platform.data import dataset_for
    from msclr_platform.evaluate import encoder_from_state
    from msclr_platform.experiment import write_pretrain_artifacts
    from msclr_platform.logged_model import log_encoder
    from msclr_platform.logged_model import MODEL_TAG, ClipEncoder
    from msclr_platform.offline import tracking_client, upload_pretrain
    from msclr_platform.tracking import log_config_params

    cfg = views_config(tmp_path, views_dataset, "logged-encoder")
    ds = dataset_for(cfg)
    model = build_model(cfg.pretrain_settings())
    torch.manual_seed(1)
    with torch.no_grad():  # not the initial weights: the logged model must carry these
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {"model": model.state_dict(), "history": [{"epoch": 1, "loss": 4.0, "lr": 0.05}]}

    seen = {}
    real_pca = plots.embedding_pca
    monkeypatch.setattr(plots, "embedding_pca",
                        lambda f, y, names, *a: (seen.update(names=names), real_pca(f, y, names, *a))[1])
    files = write_pretrain_artifacts(cfg, state, tmp_path, ds)
    assert seen["names"] == list(ds.classes) and seen["names"] and isinstance(seen["names"][0], str)

    client = tracking_client(mlflow_server, 30)
    run_id = new_run(client, cfg.name)
    log_config_params(client, run_id, flatten(cfg.to_dict()))  # as the driver does when it opens the run
    during = {}

    def before_close(c, r):
        during["info"] = log_encoder(c, r, cfg, state, ds, 1)
        during["status"] = c.get_run(r).info.status
        during["active"] = mlflow.active_run()

    upload_pretrain(client, run_id, state["history"], files, before_close=before_close)
    info = during["info"]
    assert info is not None, "the model was not logged (see the WARNING above)"
    assert during["status"] == "RUNNING" and during["active"] is None  # no fluent run started or ended
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"  # closed by upload_pretrain only, after the model
    assert "msclr.model_error" not in run.data.tags
    assert run.data.tags[MODEL_TAG] == info.model_uri
    assert "encoder_q.pt" in {a.path for a in client.list_artifacts(run_id)}  # still there for the other readers

    logged = mlflow.get_logged_model(info.model_id)
    assert logged.experiment_id == run.info.experiment_id and logged.source_run_id == run_id
    assert logged.name == "encoder" and str(logged.status).endswith("READY")
    assert logged.params["optim.lr"] == "0.05"  # the run's params: the Logged models view compares them
    assert [o.model_id for o in run.outputs.model_outputs] == [info.model_id]

    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/encoder")
    assert isinstance(loaded, ClipEncoder) and not loaded.training
    assert loaded.conventions == ("ntu-rgb+d", "smplx_42") and loaded.stream == "bone"
    assert not any(p.requires_grad for p in loaded.parameters())
    meta = mlflow.models.get_model_info(info.model_uri).metadata
    assert meta["conventions"] == ["ntu-rgb+d", "smplx_42"] and meta["stream"] == "bone"
    assert meta["model"]["hidden_dim"] == 32

    # the input example: a clip batch of the first convention, N x C x T x V x M float32
    from mlflow.models import Model

    example = Model.load(info.model_uri).load_input_example(mlflow.artifacts.download_artifacts(info.model_uri))
    example = np.asarray(example)
    assert example.dtype == np.float32 and example.ndim == 5 and example.shape[3] == 25 and len(example) >= 1

    # the same features as the run's encoder, the way evaluation extracts them (bone stream)
    encoder = encoder_from_state(cfg, state["model"])
    want = E.extract_features(encoder, example, "ntu-rgb+d", "bone")
    with torch.no_grad():
        got = loaded(torch.from_numpy(example))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    untrained = E.extract_features(encoder_from_state(cfg, None), example, "ntu-rgb+d", "bone")
    assert not torch.allclose(got, untrained, atol=1e-4)  # the trained weights, not a fresh model
    # the other convention through .features
    other = np.ascontiguousarray(ds.load("smplx_42", np.arange(2), unit="m"), dtype=np.float32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(torch.from_numpy(other), "smplx_42"),
                                   E.extract_features(encoder, other, "smplx_42", "bone"), rtol=1e-5, atol=1e-5)
    # pyfunc (what serving calls) agrees
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(np.asarray(pyfunc.predict(example)), want.numpy(), rtol=1e-4, atol=1e-5)
    # and the registry takes it
    version = mlflow.register_model(info.model_uri, "msclr-views-encoder")
    assert version.version == "1" or version.version == 1


def test_context_tags_on_every_created_run(mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import git_commit

    client = MlflowClient(mlflow_server)
    tags = client.get_run(new_run(client, "context-tags")).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.user"]
    commit = git_commit()
    if commit == "unknown":
        pytest.skip("not a git checkout")
    assert tags["mlflow.source.git.commit"] == commit and "git.commit" not in tags


def eval_rows():
    return [
        {"model": "pretrained", "convention": "ntu-rgb+d", "linear_top1": 0.41, "linear_top5": 0.8, "knn_top1": 0.33,
         "collapsed": False, "probe": "standard", "probe_lr": 0.1, "test_selected_top1": 0.42, "val_top1": 0.4},
        {"model": "pretrained", "convention": "ensemble", "linear_top1": 0.45, "linear_top5": 0.85,
         "knn_top1": float("nan"), "collapsed": False, "probe": "standard", "probe_lr": 0.1,
         "test_selected_top1": 0.46, "val_top1": 0.44},
        {"model": "random-init", "convention": "ntu-rgb+d", "linear_top1": 0.3, "linear_top5": 0.7, "knn_top1": 0.2,
         "collapsed": True, "probe": "standard", "probe_lr": 0.1, "test_selected_top1": 0.31, "val_top1": 0.3},
    ]


def load_table(client, artifact_file, run_id):
    """mlflow.load_table of the run's experiment (the fluent one searches the active experiment)."""
    return client.load_table(client.get_run(run_id).info.experiment_id, artifact_file, run_ids=[run_id])


def test_evaluation_results_are_a_table(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform.evaluate import results_table
    from msclr_platform.offline import RESULTS_TABLE, upload_evaluation

    client = MlflowClient(mlflow_server)
    results_table(SimpleNamespace(rows=eval_rows())).to_csv(tmp_path / "results.csv")  # as evaluation_outputs writes it
    run_id = new_run(client, "eval · table")
    record = {"name": "eval · table", "experiment": "mlflow-views", "parent_run_id": None, "run_id": run_id,
              "tags": {"msclr.kind": "evaluation"}, "params": {}, "metrics": [], "files": ["results.csv"]}
    upload_evaluation(client, record, tmp_path)
    upload_evaluation(client, record, tmp_path)  # `runs sync` after a lost reply: the rows once, not twice
    table = load_table(client, RESULTS_TABLE, run_id)
    assert list(table.columns) == ["model", "convention", "linear_top1", "linear_top5", "knn_top1", "probe",
                                   "collapsed"]
    assert len(table) == 3
    assert table[["model", "convention"]].values.tolist() == [["pretrained", "ntu-rgb+d"], ["pretrained", "ensemble"],
                                                              ["random-init", "ntu-rgb+d"]]
    assert table["linear_top1"].tolist() == pytest.approx([0.41, 0.45, 0.3])
    assert table["collapsed"].tolist() == [False, False, True]
    run = client.get_run(run_id)
    assert {"path": RESULTS_TABLE, "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert "results.csv" in {a.path for a in client.list_artifacts(run_id)}  # kept
    assert run.info.status == "FINISHED"


def test_quickstart_parent_holds_the_summary(mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform import validate
    from msclr_platform.quickstart import SUMMARY_TABLE, log_summary, run_names, summary_rows

    names = run_names("quickstart-msclr", "20260101-120000")
    assert names == {"parent": "quickstart-20260101-120000", "msclr": "msclr-quickstart-20260101-120000",
                     "baseline": "baseline-quickstart-20260101-120000"}
    assert run_names("ablation", "t")["baseline"] == "baseline-ablation-t"
    pattern = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # the config `name` rule
    import re

    assert all(re.fullmatch(pattern, n) for n in names.values())
    assert validate.MAX_NAME >= max(map(len, names.values()))

    baseline = [{**eval_rows()[0], "linear_top1": 0.38, "knn_top1": 0.3}]
    results = {"msclr": {"results": eval_rows()}, "baseline": {"results": baseline}}
    rows = summary_rows(results)
    client = MlflowClient(mlflow_server)
    parent = new_run(client, names["parent"])
    log_summary(client, parent, rows)
    table = load_table(client, SUMMARY_TABLE, parent)
    assert table[["model", "convention"]].values.tolist() == [["msclr", "ntu-rgb+d"], ["msclr", "ensemble"],
                                                              ["random-init", "ntu-rgb+d"], ["baseline", "ntu-rgb+d"]]
    assert {"linear_top1", "linear_top5", "knn_top1"} <= set(table.columns)
    metrics = client.get_run(parent).data.metrics
    assert metrics["linear_top1.msclr.ensemble"] == 0.45 and metrics["linear_top1.msclr.ntu-rgb_d"] == 0.41
    assert metrics["linear_top1.baseline.ntu-rgb_d"] == 0.38 and metrics["linear_top1.random_init.ntu-rgb_d"] == 0.3
    assert metrics["knn_top1.baseline.ntu-rgb_d"] == 0.3 and "knn_top1.msclr.ensemble" not in metrics  # NaN: left out


def test_sweep_parent_results_table(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from msclr_platform.config import ExperimentConfig
    from msclr_platform.sweep import SWEEP_TABLE, SweepSpec, _log_sweep_results

    client = MlflowClient(mlflow_server)
    parent = new_run(client, "sweep-views")
    table = pd.DataFrame([
        {"trial_id": "a1", "method.temperature": 0.1, "epochs_done": 2, "status": "TERMINATED", "stopped_early": False,
         "probe_knn_top1": 0.3, "final_linear_top1": 0.4},
        {"trial_id": "b2", "method.temperature": 0.2, "epochs_done": 1, "status": "TERMINATED", "stopped_early": True,
         "probe_knn_top1": 0.1, "final_linear_top1": None},
    ])
    spec = SweepSpec(name="sweep-views", base="x.yaml", search={"method.temperature": {"choice": [0.1, 0.2]}})
    # no child runs to close here: the base config is not read
    assert _log_sweep_results(client, parent, spec, table, ExperimentConfig()) == "a1"
    got = load_table(client, SWEEP_TABLE, parent)
    assert got["trial_id"].tolist() == ["a1", "b2"] and got["final_linear_top1"].tolist()[0] == 0.4
    assert "sweep_results.csv" in {a.path for a in client.list_artifacts(parent)}


def test_pca_legend_names_the_classes(tmp_path):
    from msclr_platform import plots

    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(30, 8)).astype(np.float32), np.repeat([0, 2, 3], 10)
    names = ["drink water", "eat meal", "brush teeth", "wave"]
    fig = plots.embedding_pca_figure(feats, labels, names, "t")
    try:
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["drink water", "brush teeth", "wave"]
    finally:
        plots._plt().close(fig)
    fig = plots.embedding_pca_figure(feats, labels, [], "t")  # no names given: the indices
    try:
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["0", "2", "3"]
    finally:
        plots._plt().close(fig)
    assert plots.embedding_pca(feats, labels, names, tmp_path / "pca.png", "t").stat().st_size > 0


def test_same_new_dataset_logged_by_concurrent_runs(tmp_path, mlflow_server):
    """A sweep's concurrent trials log the same new dataset at once: each insert races for the
    dataset's unique key. Every run must end up with the dataset as its input (one trial failed
    with 'UNIQUE constraint failed: datasets...' before log_dataset retried)."""
    import threading
    import uuid

    from mlflow.tracking import MlflowClient

    from msclr_platform.tracking import log_dataset

    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"dataset-race-{uuid.uuid4().hex[:8]}")
    errors, runs = [], []
    for rep in range(3):  # three fresh datasets, eight runs logging each at the same moment
        root = tmp_path / f"race-{rep}"
        root.mkdir()
        (root / "manifest.json").write_text(json.dumps({"name": f"race-{rep}", "nonce": uuid.uuid4().hex}))
        ds = SimpleNamespace(name=f"race-{rep}", sample_names=[f"s{i}" for i in range(50)], labels=np.arange(50) % 5,
                             root=root)
        ids = [client.create_run(exp).info.run_id for _ in range(8)]
        runs += ids
        barrier = threading.Barrier(len(ids))

        def log(run_id, ds=ds, barrier=barrier):
            barrier.wait()
            try:
                log_dataset(client, run_id, "/nowhere", ds)
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(err)[:300])

        threads = [threading.Thread(target=log, args=(r,)) for r in ids]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert errors == []
    for run_id in runs:
        assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] in (["race-0"], ["race-1"], ["race-2"])
