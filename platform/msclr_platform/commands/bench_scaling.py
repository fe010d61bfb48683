"""`msclr bench scaling`: Ray Train pretraining throughput with 1 and 2 CPU workers.

This runs the real platform path, msclr_platform.experiment.run_pretrain (local Ray
runtime, TorchTrainer, DDP over gloo, rank-0 metrics into a real MLflow server), on the
synthetic benchmark written to a temporary directory. Each worker gets one CPU, hence one
torch thread (Ray sets OMP_NUM_THREADS from the worker's CPUs), in every setting, so the
comparison is about scaling and not about threads.

By default the global batch (--batch-size) is the same for every worker count (strong
scaling: the same training, split). With --weak each worker trains --batch-size clips per
step (global batch = batch x workers), the usual data-parallel throughput measure: the
per-worker work, and so its arithmetic efficiency, stays the same. Throughput is what the workers report: train_epoch's samples_per_s
counts the GLOBAL batch for every step (each rank runs all steps on batch/world clips), so
rank 0's epoch history already holds the global rate. The first epoch (process start-up,
allocator, gloo rendezvous) is left out.
"""

from __future__ import annotations

import argparse

from . import emit_report

SPEEDUP_TARGET = 1.6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--clips", type=int, default=600, help="synthetic clips in all (the xsub train part trains)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="global batch, split over the workers (with --weak: the batch of each worker)")
    parser.add_argument("--weak", action="store_true",
                        help="weak scaling: every worker trains --batch-size clips per step")
    parser.add_argument("--conventions", nargs="+", default=["ntu-rgb+d", "smplx_42"])
    # A 1/8-width, 4-block encoder by default: an epoch takes about a minute on one loaded core.
    # --hidden-channels 16 --hidden-dim 256 --num-blocks 10 is the paper's model.
    parser.add_argument("--hidden-channels", type=int, default=8)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=4)
    parser.add_argument("--queue-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON to this file (atomically)")


def global_batch(args, workers: int) -> int:
    return args.batch_size * workers if args.weak else args.batch_size


def experiment_config(args, data: str, workers: int, storage: str, tracking_uri: str, name: str):
    """A small ExperimentConfig: pretraining only, one CPU per worker, a checkpoint at the end only."""
    from msclr_core.pretrain import MethodSettings, ModelSettings, OptimSettings

    from ..config import DataConfig, EvalConfig, ExperimentConfig, RayConfig, TrackingConfig

    return ExperimentConfig(
        name=name,
        data=DataConfig(path=data, protocol="xsub"),
        conventions=list(args.conventions),
        model=ModelSettings(hidden_channels=args.hidden_channels, hidden_dim=args.hidden_dim,
                            num_blocks=args.num_blocks),
        method=MethodSettings(queue_size=args.queue_size),
        optim=OptimSettings(epochs=args.epochs, batch_size=global_batch(args, workers)),
        seed=args.seed,
        device="cpu",
        eval=EvalConfig(enabled=False),
        ray=RayConfig(num_workers=workers, cpus_per_worker=1.0, checkpoint_every=args.epochs, num_to_keep=1,
                      storage_path=storage),
        tracking=TrackingConfig(experiment="bench-scaling", tracking_uri=tracking_uri, system_metrics=False,
                                embedding_plot=False),
    )


def steady_samples_per_s(history: list[dict], batch_size: int) -> tuple[float, int]:
    """(global samples/s over the epochs after the first, samples counted): total samples over
    total time, so a longer epoch weighs more than in a mean of per-epoch rates."""
    rest = history[1:]
    samples = sum(h["steps"] * batch_size for h in rest)
    seconds = sum(h["steps"] * batch_size / h["samples_per_s"] for h in rest)
    return samples / seconds, samples


def _tracking(tmp):
    """(tracking URI, server pid or None): MLFLOW_TRACKING_URI if set, else a private server."""
    import os
    from pathlib import Path

    from ..tracking import start_server

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    info = start_server(Path(tmp) / "mlflow")
    return info["uri"], info["pid"]


def main(args) -> int:
    import contextlib
    import os
    import signal
    import sys
    import tempfile
    import time
    from pathlib import Path

    from msclr_core.data.synth import write_synth_dataset
    from msclr_core.errors import ConfigError

    if args.epochs < 2 or min(args.workers) < 1 or args.batch_size < 1:
        raise ConfigError("--epochs must be >= 2 (the first is warm-up); --workers and --batch-size >= 1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="msclr-bench-scaling-") as tmp:
        # Worker and driver output (epoch lines, MLflow notices) goes to stderr: stdout keeps
        # nothing but the report, so `--json` stays one JSON document.
        with contextlib.redirect_stdout(sys.stderr):
            data = str(Path(tmp) / "synth")
            write_synth_dataset(data, clips=args.clips, seed=args.seed, conventions=args.conventions)
            uri, server_pid = _tracking(tmp)
            try:
                runs = _run_all(args, data, str(Path(tmp) / "ray"), uri, stamp)
            finally:
                import ray

                ray.shutdown()
                if server_pid is not None:  # the server we started, and only it
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(server_pid, signal.SIGTERM)

    first, last = min(args.workers), max(args.workers)
    report = {f"samples_per_s_{w}": round(r["samples_per_s"], 2) for w, r in runs.items()}
    report["speedup"] = round(runs[last]["samples_per_s"] / runs[first]["samples_per_s"], 3)
    report.update(
        speedup_of=f"{last} vs {first} workers", speedup_target=SPEEDUP_TARGET,
        runs={str(w): r for w, r in runs.items()}, cpus_per_worker=1, scaling="weak" if args.weak else "strong",
        global_batch_size=global_batch(args, first),
        epochs=args.epochs, timed_epochs=args.epochs - 1, clips=args.clips, conventions=list(args.conventions),
        hidden_channels=args.hidden_channels, hidden_dim=args.hidden_dim, num_blocks=args.num_blocks,
        queue_size=args.queue_size, cpu_count=os.cpu_count(),
    )  # fmt: skip
    rates = ", ".join(f"{w} worker(s) {r['samples_per_s']:.1f}" for w, r in runs.items())
    emit_report(args, report, f"Ray Train samples/s: {rates}; speedup {report['speedup']}x (target {SPEEDUP_TARGET}x)")
    return 0


def _run_all(args, data: str, storage: str, uri: str, stamp: str) -> dict:
    import time

    from ..experiment import run_pretrain

    runs = {}
    for workers in args.workers:
        cfg = experiment_config(args, data, workers, storage, uri, f"bench-scaling-{workers}w-{stamp}")
        start = time.perf_counter()
        result = run_pretrain(cfg, quiet=True)
        batch = global_batch(args, workers)
        rate, samples = steady_samples_per_s(result.history, batch)
        runs[workers] = {
            "samples_per_s": rate,
            "timed_samples": samples,
            "global_batch_size": batch,
            "per_worker_batch": batch // workers,
            "epoch_samples_per_s": [round(h["samples_per_s"], 2) for h in result.history],
            "final_loss": round(result.history[-1]["loss"], 4),
            "wall_s": round(time.perf_counter() - start, 1),
            "mlflow_run_id": result.run_id,
        }
    return runs
