"""`msclr bench learning`: the summary's statistics, and a tiny study end to end (real MLflow)."""

import json

import pytest

from msclr_platform.learning import summarize


def _points(msclr, single, conv="a"):
    pts = []
    for model, values in (("msclr", msclr), ("single", single)):
        for seed, v in enumerate(values):
            pts.append({"model": model, "seed": seed, "epochs": 4, "steps": 40, f"linear_top1.{conv}": v,
                        "linear_top1.ensemble": v + 0.01})
    return pts


def test_summary_calls_a_gap_within_the_spread_no_difference():
    refs = {"raw": [0.6], "random-init": [0.3, 0.32], "supervised": []}
    row = summarize(_points([0.40, 0.44, 0.42], [0.41, 0.43, 0.39]), refs, "a")[0]
    assert row["msclr"]["n"] == 3 and abs(row["msclr"]["mean"] - 0.42) < 1e-9
    assert row["verdict"] == "no difference"
    assert row["random-init"]["mean"] == pytest.approx(0.31) and row["supervised"] is None
    assert row["msclr_ensemble"]["mean"] == pytest.approx(0.43)
    row = summarize(_points([0.50, 0.51, 0.52], [0.40, 0.41, 0.42]), refs, "a")[0]
    assert row["verdict"] == "MS-CLR better" and row["msclr_minus_single"] == pytest.approx(0.10)
    row = summarize(_points([0.30, 0.31, 0.32], [0.40, 0.41, 0.42]), refs, "a")[0]
    assert row["verdict"] == "single skeleton better"


@pytest.mark.slow
def test_tiny_learning_study_end_to_end(tmp_path, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.cli import main

    out, plot = tmp_path / "learning.json", tmp_path / "learning.png"
    sets = ["model.num_blocks=2", "model.hidden_dim=16", "optim.batch_size=32", "method.queue_size=128",
            "eval.linear_epochs=10", "eval.linear_milestones=[8]", "eval.knn_k=5", "tracking.experiment=learning-test"]
    argv = ["bench", "learning", "--clips", "240", "--budgets", "1", "2", "--seeds", "2",
            "--out", str(out), "--plot", str(plot)] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert {(p["model"], p["seed"], p["epochs"]) for p in result["points"]} == {
        (m, s, e) for m in ("msclr", "single") for s in (0, 1) for e in (1, 2)}
    # equal optimiser steps for both models at every budget
    for e in (1, 2):
        assert len({p["steps"] for p in result["points"] if p["epochs"] == e}) == 1
    msclr_point = next(p for p in result["points"] if p["model"] == "msclr")
    assert {"erank.ntu-rgb+d", "pos_cos.ntu-rgb+d|smplx_42", "linear_top1.ensemble",
            "bn_shift.ntu-rgb+d", "bn_logvar.smplx_42"} <= set(msclr_point)
    assert [r["epochs"] for r in result["summary"]] == [1, 2]
    for name in ("raw", "random-init", "supervised"):
        assert len(result["references"][name]) == (1 if name == "raw" else 2)
    assert plot.stat().st_size > 1000
    client = MlflowClient(mlflow_server)
    parent = client.get_run(result["mlflow_parent_run"])
    assert parent.info.status == "FINISHED" and plot.name in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4  # (msclr, single) x 2 seeds
    hist = client.get_metric_history(children[0].info.run_id, "linear_top1.ntu-rgb_d")
    assert [m.step for m in hist] == [1, 2]


@pytest.mark.slow
def test_ab_mode_trains_only_msclr_and_reads_the_initial_encoder(tmp_path, msclr_home):
    """`--models msclr --no-references` (an A/B of one setting) and budget 0 (the initial encoder)."""
    from msclr_platform.cli import main

    out = tmp_path / "ab.json"
    sets = ["model.num_blocks=2", "model.hidden_dim=16", "optim.batch_size=32", "method.queue_size=128",
            "eval.knn_k=5", "optim.convention_lr_mult=2.0"]
    argv = ["bench", "learning", "--clips", "240", "--budgets", "0", "1", "--seeds", "1", "--first-seed", "2",
            "--models", "msclr", "--no-references", "--no-mlflow", "--split", "val", "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "xsub_val.val" and result["seeds"] == [2]
    assert {p["seed"] for p in result["points"]} == {2}
    assert [(p["model"], p["epochs"]) for p in result["points"]] == [("msclr", 0), ("msclr", 1)]
    assert result["points"][0]["steps"] == 0 and result["points"][1]["steps"] >= 1
    assert result["references"] == {"raw": [], "random-init": [], "supervised": []}
    assert [set(r) & {"single", "verdict"} for r in result["summary"]] == [set(), set()]
    init, trained = result["points"]
    assert init["loss"] is None and trained["loss"] > 0
    assert init["bn_shift.ntu-rgb+d"] != trained["bn_shift.ntu-rgb+d"]  # training moved the BN statistics


def test_select_on_val_trains_without_the_val_subjects_and_never_reads_test(tmp_path):
    """`--split val`: pretraining and probe fit on train minus the held-out subjects, the
    reported accuracy on those subjects; no test clip is loaded."""
    import numpy as np

    from msclr_core.data.dataset import load_dataset
    from msclr_platform.config import load_config
    from msclr_platform.evaluate import load_eval_data
    from msclr_platform.learning import select_on_val
    from msclr_platform.quickstart import DEFAULT_CONFIG, ensure_synth_dataset

    root = tmp_path / "synth"
    ensure_synth_dataset(root, 240, conventions=["ntu-rgb+d", "smplx_42"])
    cfg = select_on_val(load_config(DEFAULT_CONFIG, [f"data.path={root}"]))
    assert (cfg.data.protocol, cfg.data.test_part) == ("xsub_val", "val")
    ds = load_dataset(root)
    data, labels, _ = load_eval_data(cfg)
    parts = ds.splits["xsub_val"]
    assert sorted(data) == ["test", "train"]  # "test" holds the val clips
    assert np.array_equal(labels["test"], ds.labels[parts["val"]])
    assert np.array_equal(data["test"]["ntu-rgb+d"], ds.array("ntu-rgb+d")[parts["val"]])
    assert len(labels["train"]) == len(parts["train"]) < len(ds.splits["xsub"]["train"])
    assert select_on_val(cfg).data.protocol == "xsub_val"  # idempotent


def test_stale_synth_cache_without_the_val_protocol_is_rewritten(tmp_path):
    import json

    from msclr_platform.quickstart import ensure_synth_dataset

    root = tmp_path / "synth"
    ensure_synth_dataset(root, 240, conventions=["ntu-rgb+d"])
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["splits"]["xsub_val"]  # as written before the *_val protocols existed
    (root / "manifest.json").write_text(json.dumps(manifest))
    ensure_synth_dataset(root, 240, conventions=["ntu-rgb+d"], protocol="xsub")  # has xsub: kept
    assert "xsub_val" not in json.loads((root / "manifest.json").read_text())["splits"]
    ensure_synth_dataset(root, 240, conventions=["ntu-rgb+d"], protocol="xsub_val")
    assert "xsub_val" in json.loads((root / "manifest.json").read_text())["splits"]
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["name"], manifest["splits"] = "my-mocap", {"style": manifest["splits"]["xsub"]}  # not the cache
    (root / "manifest.json").write_text(json.dumps(manifest))
    ensure_synth_dataset(root, 240, conventions=["ntu-rgb+d"], protocol="style_val")  # never overwritten
    assert json.loads((root / "manifest.json").read_text())["name"] == "my-mocap"
