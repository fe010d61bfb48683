"""3-stream fusion from stored evaluation logits (real MLflow server, real artifacts)."""

import numpy as np
import pytest

from msclr_core.errors import ConfigError, DataError
from msclr_platform.config import ExperimentConfig, from_dict
from msclr_platform.tracking import eval_run_name


def config(name, stream):
    return from_dict(ExperimentConfig, {"name": name, "stream": stream, "data": {"path": "/nonexistent"},
                                        "conventions": ["ntu-rgb+d", "smplx_42"],
                                        "tracking": {"experiment": "fusion-tests", "system_metrics": False}})  # fmt: skip


def store_eval(client, tmp_path, cfg, labels, logits):
    from msclr_platform.tracking import get_or_create_run

    run_id, _ = get_or_create_run(client, cfg.tracking.experiment, eval_run_name(cfg.name))
    path = tmp_path / f"{cfg.name}" / "test_logits.npz"
    path.parent.mkdir()
    np.savez(path, labels=labels, **logits)
    client.log_artifact(run_id, str(path))
    return run_id


def test_fusion_sums_weighted_stream_logits_and_logs_a_run(tmp_path, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.fusion import run_fusion

    client = MlflowClient(mlflow_server)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=40)
    keys = ("ntu-rgb_d", "smplx_42", "ensemble", "test_selected.ntu-rgb_d", "test_selected.ensemble")
    streams = {s: {k: rng.normal(size=(40, 5)).astype(np.float32) for k in keys}
               for s in ("joint", "motion", "bone")}  # fmt: skip
    cfgs = [config(f"fz-{s}", s) for s in streams]
    for cfg in cfgs:
        store_eval(client, tmp_path, cfg, y, streams[cfg.stream])

    run_id, rows = run_fusion(cfgs)
    by_key = {r["key"]: r for r in rows}
    # last-epoch rows first, then the labelled test-selected (best test epoch) twins
    assert [r["key"] for r in rows] == ["ntu-rgb_d", "smplx_42", "ensemble", "test_selected.ntu-rgb_d",
                                        "test_selected.ensemble"]
    for key, row in by_key.items():
        fused = 0.6 * streams["joint"][key] + 0.4 * streams["motion"][key] + 0.6 * streams["bone"][key]
        assert row["fused_top1"] == pytest.approx(float((fused.argmax(1) == y).mean()))
        assert row["joint_top1"] == pytest.approx(float((streams["joint"][key].argmax(1) == y).mean()))
    run = client.get_run(run_id)
    assert run.data.tags["msclr.kind"] == "fusion" and run.data.params["weight.motion"] == "0.4"
    assert run.data.metrics["fused_top1.ensemble"] == pytest.approx(by_key["ensemble"]["fused_top1"])
    assert run.data.metrics["fused_top1.test_selected.ensemble"] == pytest.approx(
        by_key["test_selected.ensemble"]["fused_top1"])
    assert "fusion.csv" in {a.path for a in client.list_artifacts(run_id)}


def test_fusion_refuses_mismatched_or_missing_evaluations(tmp_path, mlflow_server, msclr_home):
    from mlflow.tracking import MlflowClient

    from msclr_platform.fusion import run_fusion

    client = MlflowClient(mlflow_server)
    a, b = config("mm-joint", "joint"), config("mm-bone", "bone")
    store_eval(client, tmp_path, a, np.arange(10) % 3, {"ensemble": np.zeros((10, 3), np.float32)})
    store_eval(client, tmp_path, b, np.arange(10) % 2, {"ensemble": np.zeros((10, 3), np.float32)})
    with pytest.raises(DataError, match="different test clips"):
        run_fusion([a, b])
    with pytest.raises(ConfigError, match="eval · mm-motion"):
        run_fusion([a, config("mm-motion", "motion")])
    with pytest.raises(ConfigError, match="one config per stream"):
        run_fusion([a, config("other-joint", "joint")])
