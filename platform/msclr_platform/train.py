"""Ray Train pretraining: `msclr pretrain CONFIG`.

The driver resolves the config, checks resources and the tracking server before any
compute, creates (or finds, by run name) the MLflow run, and fits a TorchTrainer whose
workers run msclr_core.pretrain.train_epoch. Resume is by name: running the same config
again finds the Ray run snapshot and continues from its last checkpoint, logging into the
same MLflow run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from msclr_core.errors import ConfigError
from msclr_core.io_utils import atomic_write_bytes
from msclr_core.pretrain import build_model, build_optimizer, train_epoch, validate

from .config import ExperimentConfig, from_dict
from .data import load_split, dataset_for
from .local_ray import start_local_ray, user_ray_address
from .tracking import MetricLogger, msclr_home

CKPT_FILE = "state.pt"


# ---------------------------------------------------------------- worker side


def _device(cfg: ExperimentConfig) -> torch.device:
    import ray.train.torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return ray.train.torch.get_device()


def save_state(path: Path, model, optimizer, epoch: int, history: list[dict]) -> None:
    """Write a checkpoint file atomically (temp file + rename): never half-written."""
    import io

    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history},
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


class ProbeSet:
    """A fixed labelled subset for a cheap per-epoch kNN probe (what ASHA stops trials on)."""

    def __init__(self, cfg: ExperimentConfig, train, test):
        self.cfg, self.train, self.test = cfg, train, test

    @classmethod
    def load(cls, cfg: ExperimentConfig) -> "ProbeSet":
        import dataclasses

        n = cfg.eval.probe_samples
        sub = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_train_samples=n, max_test_samples=n))
        conv = cfg.conventions[:1]
        return cls(cfg, load_split(sub, cfg.data.train_part, conv), load_split(sub, cfg.data.test_part, conv))

    def knn_top1(self, encoder, device) -> float:
        from msclr_core import evaluation as E

        conv, stream = self.cfg.conventions[0], self.cfg.stream
        f_tr = E.extract_features(encoder, self.train.arrays[conv], conv, stream, device=device)
        f_te = E.extract_features(encoder, self.test.arrays[conv], conv, stream, device=device)
        return E.knn_accuracy(f_tr, torch.as_tensor(self.train.labels), f_te, torch.as_tensor(self.test.labels),
                              k=self.cfg.eval.knn_k, num_classes=self.train.num_classes)  # fmt: skip


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg = from_dict(ExperimentConfig, loop_config["config"])
    settings = cfg.pretrain_settings()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(cfg)

    data = {c: torch.from_numpy(a).to(device) for c, a in load_split(cfg, cfg.data.train_part).arrays.items()}
    model = build_model(settings).to(device)
    optimizer = build_optimizer(model, settings)
    start_epoch, history = 1, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_state(Path(d) / CKPT_FILE, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    # The queue is not a module buffer, so DDP never re-broadcasts it; parameters of
    # conventions absent from a step get no gradient, hence find_unused_parameters.
    ddp_model = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
    ) if world > 1 else model  # fmt: skip

    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    probe = ProbeSet.load(cfg) if rank == 0 and cfg.eval.probe_every > 0 else None
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    epochs = settings.optim.epochs
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        stats = train_epoch(
            ddp_model, optimizer, data, settings, epoch,
            rank=rank, world_size=world, device=device, autocast_dtype=autocast,
        )  # fmt: skip
        stats["epoch_time_s"] = time.perf_counter() - t0
        if probe is not None and (epoch % cfg.eval.probe_every == 0 or epoch == epochs):
            stats["probe_knn_top1"] = probe.knn_top1(model.encoder_q, device)
        history.append({"epoch": epoch, **stats})
        if rank == 0:
            eta = stats["epoch_time_s"] * (epochs - epoch)
            print(
                f"[{cfg.name}] epoch {epoch}/{epochs} loss {stats['loss']:.4f} lr {stats['lr']:.4g} "
                f"{stats['samples_per_s']:.0f} samples/s ETA {eta / 60:.1f} min",
                flush=True,
            )
            logger.log(stats, step=epoch)
        metrics = {"epoch": epoch, **stats}
        if epoch % cfg.ray.checkpoint_every == 0 or epoch == epochs:
            with tempfile.TemporaryDirectory() as d:
                if rank == 0:
                    save_state(Path(d) / CKPT_FILE, model, optimizer, epoch, history)
                ckpt = ray.train.Checkpoint.from_directory(d) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch-{epoch:05d}")
        else:
            ray.train.report(metrics)
    if logger is not None:
        logger.flush(raise_on_error=False)


# ---------------------------------------------------------------- driver side


def init_ray(cfg: ExperimentConfig, num_cpus: int | None = None) -> None:
    """Connect to ray.address / RAY_ADDRESS, or start a private local runtime (num_cpus logical CPUs)."""
    import ray

    if ray.is_initialized():
        return
    env = {
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(cfg.ray.worker_start_timeout_s),
        # Keep freed memory in the heap instead of returning every large activation to
        # the kernel and faulting it in again next step (1.6x faster CPU steps here).
        "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296",
        # Train V2 re-routes worker print() through a logger and tees it: every progress line twice.
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    os.environ.update(env)
    address = cfg.ray.address or user_ray_address()
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:  # a private local runtime bound to loopback (never a stale cluster from /tmp/ray)
        start_local_ray(num_cpus=num_cpus, env_vars=env)


def check_resources(cfg: ExperimentConfig) -> None:
    """Fail now, naming the resources, instead of letting the controller wait forever."""
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    need_gpu = cfg.ray.num_workers * cfg.ray.gpus_per_worker if cfg.ray.use_gpu else 0
    missing = []
    if have.get("CPU", 0) < need_cpu:
        missing.append(f"CPU: need {need_cpu:g} ({cfg.ray.num_workers} workers x {cfg.ray.cpus_per_worker:g}), cluster has {have.get('CPU', 0):g}")
    if need_gpu and have.get("GPU", 0) < need_gpu:
        missing.append(f"GPU: need {need_gpu:g} ({cfg.ray.num_workers} workers x {cfg.ray.gpus_per_worker:g}), cluster has {have.get('GPU', 0):g}")
    if missing:
        raise ConfigError("not enough Ray resources for ray.num_workers/use_gpu: " + "; ".join(missing))


def storage_path(cfg: ExperimentConfig) -> str:
    return cfg.ray.storage_path or str(msclr_home() / "ray")


def make_trainer(cfg: ExperimentConfig, loop_config: dict, callbacks=None):
    import ray.train
    from ray.train.torch import TorchTrainer

    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path(cfg),
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.ray.max_failures, controller_failure_limit=cfg.ray.controller_failure_limit
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
            callbacks=callbacks or [],
        ),
    )


def preflight(cfg: ExperimentConfig) -> int:
    """Validate config against the dataset; return the number of training clips."""
    ds = dataset_for(cfg)
    n_train = len(ds.split_indices(cfg.data.protocol, cfg.data.train_part))
    if cfg.data.max_train_samples:
        n_train = min(n_train, cfg.data.max_train_samples)
    validate(cfg.pretrain_settings(), n_train, cfg.ray.num_workers)
    return n_train
