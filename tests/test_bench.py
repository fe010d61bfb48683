"""`msclr bench step | linear-eval | scaling`: the commands run, and their reports mean what they say.

Speeds are never asserted here (benchmarks/RESULTS.md holds them); what is asserted is that
the numbers are consistent with each other and that the two linear probes agree.
Tests named test_cuda_* need a GPU (benchmarks/gpu_check.sh runs them with `-k cuda`); they
need only torch, numpy and pyyaml, as the GPU machine may lack ray and mlflow.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msclr_platform.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY_MODEL = ["--hidden-channels", "8", "--hidden-dim", "32", "--num-blocks", "2"]


def run_json(capsys, argv) -> dict:
    assert cli(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def bench_step(capsys, *extra) -> dict:
    return run_json(capsys, ["bench", "step", *TINY_MODEL, "--batch-size", "16", "--queue-size", "64",
                             "--seconds", "0.3", "--warmup-steps", "1", *extra])


# ---------------------------------------------------------------- bench step


def test_bench_step_reports_consistent_numbers(capsys, tmp_path):
    out = tmp_path / "step.json"
    report = bench_step(capsys, "--out", str(out))
    assert json.loads(out.read_text()) == report
    for key in ("samples_per_s", "reference_samples_per_s", "speedup_vs_reference", "device", "dtype", "batch_size",
                "hidden_channels", "hidden_dim", "num_blocks", "torch", "device_name", "official_samples_per_s",
                "ratio", "fused_views", "reference"):
        assert key in report, key
    assert report["device"] == "cpu" and report["dtype"] == "fp32" and report["batch_size"] == 16
    assert report["steps"] >= 1 and report["samples_per_s"] > 0
    assert report["samples_per_s"] == pytest.approx(report["steps"] * 16 / report["seconds"], rel=1e-3, abs=0.05)
    assert report["ratio"] == pytest.approx(report["samples_per_s"] / 1137.0, abs=1e-3)
    assert math.isfinite(report["warmup_loss"]) and report["warmup_loss"] > 0
    # the reference (today's step) is timed in the same run, in alternating rounds
    assert report["reference_steps"] >= 1 and report["reference_samples_per_s"] > 0
    assert report["reference_samples_per_s"] == pytest.approx(
        report["reference_steps"] * 16 / report["reference_seconds"], rel=1e-3, abs=0.05)
    rate = report["steps"] / report["seconds"]  # unrounded: the reported rates are rounded to 0.1
    assert report["speedup_vs_reference"] == pytest.approx(
        rate / (report["reference_steps"] / report["reference_seconds"]), rel=0.005)
    assert abs(report["steps"] - report["reference_steps"]) <= 2  # one round of --round-steps 2 at most
    assert report["fused_views"] is False  # auto on the CPU: the views fuse only on an accelerator


def test_bench_step_defaults_to_the_quickstart_model_and_takes_a_config(capsys, tmp_path):
    import yaml

    from msclr_platform.commands import bench_step as command

    args = argparse.Namespace(config=None, conventions=None, hidden_channels=None, hidden_dim=None, num_blocks=None,
                              queue_size=None, batch_size=None, mining=False, seed=0)
    quick = yaml.safe_load((REPO / "experiments" / "quickstart.yaml").read_text())
    settings = command.settings_from_args(args)
    assert settings.model.hidden_channels == quick["model"]["hidden_channels"]
    assert settings.model.head == quick["model"]["head"] and settings.optim.batch_size == quick["optim"]["batch_size"]
    assert settings.method.feature_dim == quick["method"]["feature_dim"] and settings.method.mining_epoch == 10**9
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: t\ndata: {path: .}\nconventions: [ntu-rgb+d]\nmodel: {hidden_channels: 4, hidden_dim: 8, "
                   "num_blocks: 2, dropout: 0.0}\nmethod: {objective: skeletonclr, queue_size: 64}\n"
                   "optim: {batch_size: 16}\n")
    report = run_json(capsys, ["bench", "step", "--config", str(cfg), "--steps", "1", "--seconds", "1000",
                               "--warmup-steps", "1", "--no-reference", "--hidden-dim", "12"])
    assert report["conventions"] == ["ntu-rgb+d"] and report["objective"] == "skeletonclr"
    assert report["hidden_channels"] == 4 and report["hidden_dim"] == 12 and report["batch_size"] == 16
    assert report["reference_samples_per_s"] is None and report["speedup_vs_reference"] is None
    assert report["steps"] == 1 and report["samples_per_s"] > 0


def test_bench_step_fused_views_and_reference_threads_switches(capsys):
    report = bench_step(capsys, "--steps", "2", "--seconds", "1000", "--fused-views", "on", "--threads", "1",
                        "--reference-threads", "2", "--round-steps", "1")
    assert report["fused_views"] is True and report["threads"] == 1 and report["reference_threads"] == 2
    assert report["steps"] == report["reference_steps"] == 2
    assert report["speedup_vs_reference"] > 0 and "separate" in report["reference"]
    # same initial weights and warm-up data: the fused warm-up loss is the reference's up to float rounding
    assert report["warmup_loss"] == pytest.approx(report["reference_warmup_loss"], rel=1e-3)


def test_bench_step_step_limit_and_bf16(capsys):
    report = bench_step(capsys, "--steps", "2", "--seconds", "1000", "--dtype", "bf16", "--storage", "bf16",
                        "--conventions", "ntu-rgb+d")
    assert report["steps"] == 2 and report["dtype"] == "bf16" and report["conventions"] == ["ntu-rgb+d"]
    # bf16 keeps 8 significant bits: clips of ~0.3 m (at most ~1.5 m) lose at most a few mm
    assert 0 < report["storage_max_abs_err_m"] < 0.01
    assert math.isfinite(report["warmup_loss"])


def test_upcast_on_gather_returns_float32_rows():
    from msclr_platform.commands.bench_step import UpcastOnGather

    x = torch.randn(6, 3, 4, 5, 2)
    view = UpcastOnGather(x.to(torch.bfloat16))
    rows = view[torch.tensor([4, 1])]
    assert view.shape == x.shape and rows.dtype == torch.float32
    torch.testing.assert_close(rows, x[[4, 1]], atol=0.02, rtol=0.01)


def test_bench_step_bad_arguments_exit_2(capsys):
    assert cli(["bench", "step", "--batch-size", "0"]) == 2
    assert cli(["bench", "step", "--round-steps", "0"]) == 2
    assert cli(["bench", "step", *TINY_MODEL, "--batch-size", "16", "--queue-size", "100"]) == 2  # queue % batch
    if not torch.cuda.is_available():
        assert cli(["bench", "step", "--device", "cuda"]) == 2
    assert "error" in capsys.readouterr().err


# ---------------------------------------------------------------- bench linear-eval


def test_bench_linear_eval_probes_agree(capsys):
    report = run_json(capsys, ["bench", "linear-eval", *TINY_MODEL, "--clips", "120", "--epochs", "6",
                               "--eval-every", "3"])
    for key in ("cached_s", "recompute_s", "speedup", "top1_cached", "top1_recompute", "epochs", "clips"):
        assert key in report, key
    assert report["epochs"] == 6 and report["clips"] == 120 and report["milestones"] == [5]
    assert report["train_clips"] + report["test_clips"] == 120
    assert 0.0 <= report["top1_cached"] <= 1.0 and 0.0 <= report["top1_recompute"] <= 1.0
    # same init, batch order and features (up to float rounding): the same classifier
    assert abs(report["top1_cached"] - report["top1_recompute"]) <= 0.02
    assert report["prediction_agreement"] >= 0.95
    assert report["speedup"] == pytest.approx(report["recompute_s"] / report["cached_s"], rel=0.01)


def test_reencode_probe_matches_linear_probe_on_calibrated_encoder():
    """The bench's official-style probe follows linear_probe's trajectory exactly, and the
    calibrated random encoder gives features a probe can learn from (above chance)."""
    from msclr_core import evaluation as E
    from msclr_core.model import UnifiedSTGCN
    from msclr_platform.commands.bench_linear_eval import calibrate_batchnorm, reencode_probe, synthetic_split

    conv = "ntu-rgb+d"
    x_tr, y_tr, x_te, y_te, k = synthetic_split(240, conv, 0, torch.device("cpu"))
    torch.manual_seed(0)
    enc = UnifiedSTGCN([conv], hidden_channels=8, hidden_dim=32, num_blocks=2).requires_grad_(False)
    calibrate_batchnorm(enc, x_tr, conv, "joint", 64)
    feats_tr = E.extract_features(enc, x_tr, conv)
    assert feats_tr.std(0).mean() > 1e-2  # uncalibrated, the features would be ~1e-7
    probe = dict(epochs=20, lr=3.0, milestones=(16,), batch_size=32, eval_every=5, seed=3)
    cached = E.linear_probe(feats_tr, y_tr, E.extract_features(enc, x_te, conv), y_te, k, **probe)
    top1, logits = reencode_probe(enc, x_tr, y_tr, x_te, y_te, conv, "joint", k, **probe)
    torch.testing.assert_close(logits, cached.test_logits, atol=1e-3, rtol=1e-3)
    assert top1 == pytest.approx(cached.top1, abs=1e-6)
    assert cached.top1 > 1.5 / k


# ---------------------------------------------------------------- bench scaling


def test_steady_samples_per_s_skips_warm_up_and_weighs_by_time():
    from msclr_platform.commands.bench_scaling import steady_samples_per_s

    history = [{"steps": 10, "samples_per_s": 1.0},  # warm-up: ignored
               {"steps": 10, "samples_per_s": 100.0},  # 320 samples in 3.2 s
               {"steps": 10, "samples_per_s": 50.0}]  # 320 samples in 6.4 s
    rate, samples = steady_samples_per_s(history, batch_size=32)
    assert samples == 640 and rate == pytest.approx(640 / 9.6)


def test_scaling_config_gives_each_worker_one_cpu(tmp_path):
    import argparse

    from msclr_platform.commands import bench_scaling

    parser = argparse.ArgumentParser()
    bench_scaling.add_arguments(parser)
    args = parser.parse_args(["--epochs", "4", "--batch-size", "32"])
    cfg = bench_scaling.experiment_config(args, str(tmp_path), 2, str(tmp_path / "ray"), "http://127.0.0.1:1", "x")
    assert cfg.ray.num_workers == 2 and cfg.ray.cpus_per_worker == 1.0 and cfg.device == "cpu"
    assert cfg.optim.batch_size == 32 and cfg.optim.epochs == 4 and cfg.ray.checkpoint_every == 4
    assert not cfg.eval.enabled and cfg.tracking.tracking_uri == "http://127.0.0.1:1"
    weak = parser.parse_args(["--epochs", "4", "--batch-size", "32", "--weak"])
    cfg = bench_scaling.experiment_config(weak, str(tmp_path), 2, str(tmp_path / "ray"), "http://127.0.0.1:1", "x")
    assert cfg.optim.batch_size == 64  # weak scaling: 32 clips per worker and step


@pytest.mark.slow
def test_bench_scaling_runs_one_and_two_workers(tmp_path):
    out = tmp_path / "scaling.json"
    cmd = [sys.executable, "-m", "msclr_platform.cli", "bench", "scaling", "--clips", "160", "--epochs", "2",
           "--batch-size", "16", "--queue-size", "64", *TINY_MODEL, "--json", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "MLFLOW_TRACKING_URI": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # worker output went to stderr: stdout is one JSON document
    assert json.loads(out.read_text()) == report
    assert report["samples_per_s_1"] > 0 and report["samples_per_s_2"] > 0
    assert report["speedup"] == pytest.approx(report["samples_per_s_2"] / report["samples_per_s_1"], rel=0.01)
    assert report["runs"]["2"]["per_worker_batch"] == 8 and report["runs"]["1"]["per_worker_batch"] == 16
    assert report["scaling"] == "strong" and report["runs"]["2"]["global_batch_size"] == 16


# ---------------------------------------------------------------- CUDA (benchmarks/gpu_check.sh)


@cuda
def test_cuda_bench_step_runs_fp32_and_bf16(capsys):
    for dtype in ("fp32", "bf16"):
        report = bench_step(capsys, "--device", "cuda", "--dtype", dtype, "--steps", "3", "--seconds", "1000")
        assert report["device"].startswith("cuda") and report["dtype"] == dtype
        assert report["steps"] == 3 and report["samples_per_s"] > 0
        assert report["device_name"] == torch.cuda.get_device_name()
        assert math.isfinite(report["warmup_loss"])


def _one_epoch(autocast_dtype, device="cuda", steps=4, batch=64):
    from msclr_core.pretrain import MethodSettings, OptimSettings, PretrainSettings, build_model, build_optimizer
    from msclr_core.pretrain import train_epoch
    from msclr_platform.commands.bench_step import resident_data

    settings = PretrainSettings(method=MethodSettings(queue_size=1024),
                                optim=OptimSettings(batch_size=batch, passes_per_epoch=1))
    data, _ = resident_data(settings.conventions, steps * batch, torch.device(device), "fp32", seed=0)
    model = build_model(settings).to(device)  # paper-size encoder, same seed: same initial weights
    return train_epoch(model, build_optimizer(model, settings), data, settings, 1, device=device,
                       autocast_dtype=autocast_dtype)


@cuda
def test_cuda_bf16_loss_statistics_close_to_fp32():
    """Same weights, data, augmentations and pairs: bf16 autocast changes the epoch's loss
    statistics by rounding only (logits stay fp32 in the builder)."""
    fp32, bf16 = _one_epoch(None), _one_epoch(torch.bfloat16)
    for key in ("loss", "loss_info", "loss_d3m"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.03), key
    assert abs(bf16["acc"] - fp32["acc"]) <= 0.1


@cuda
def test_cuda_model_output_equals_cpu():
    from msclr_core.model import UnifiedSTGCN

    convs = ["ntu-rgb+d", "smplx_42"]
    torch.manual_seed(0)
    cpu_model = UnifiedSTGCN(convs).eval()
    gpu_model = UnifiedSTGCN(convs).eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32, not with TF32 convolutions
    try:
        for conv, v in (("ntu-rgb+d", 25), ("smplx_42", 42)):
            x = 0.3 * torch.randn(8, 3, 50, v, 2, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                want, got = cpu_model(x, conv), gpu_model(x.cuda(), conv).cpu()
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
                torch.testing.assert_close(gpu_model.features(x.cuda(), conv).cpu(), cpu_model.features(x, conv),
                                           atol=1e-4, rtol=1e-3)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


@cuda
def test_cuda_cli_module_entry_point(tmp_path):
    """gpu_check.sh runs `python -m msclr_platform.cli`: that entry point works on the GPU machine."""
    out = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "msclr_platform.cli", "bench", "step", "--device", "cuda", *TINY_MODEL,
           "--batch-size", "16", "--queue-size", "64", "--steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["steps"] == 2
