"""Ray Train pretraining: `msclr pretrain CONFIG`.

The driver resolves the config, checks resources and the tracking server before any
compute, creates (or finds, by run name) the MLflow run, and fits a TorchTrainer whose
workers run msclr_core.pretrain.train_epoch. Resume is by name: running the same config
again finds the Ray run snapshot and continues from its last checkpoint, logging into the
same MLflow run.

Checkpoints are taken at epoch boundaries (every ray.checkpoint_every epochs and the last)
by rank 0, straight into the Ray run directory and atomically: the file is written into a
hidden temporary directory that becomes `epoch-NNNNN` by one rename, and only then is it
reported to Ray (NO_UPLOAD). A crash mid-write leaves a hidden `.epoch-NNNNN.*.partial`
that neither Ray's run snapshot nor msclr_platform.runs.latest_checkpoint ever picks; Ray's
default upload would copy file by file into `epoch-NNNNN/`, where a half-copied state.pt
looks like a checkpoint. A worker that dies mid-epoch restarts from the last checkpoint
(ray.max_failures times) and replays the epoch exactly: train_epoch derives all randomness
from (seed, epoch, step), and the checkpoint holds the model (BN statistics, and the MoCo
queue as extra state), the optimizer (momentum buffers) and the metric history.

A stop request from the driver (SIGINT/SIGTERM, lifecycle.py) is checked at every step
boundary; rank 0's MLflow outage and where it stopped go back in the train function's value.
Test-only fault injection: fault_injection.py (MSCLR_FAULT_INJECT).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from msclr_core.errors import MsclrError
from msclr_core.io_utils import atomic_dir
from msclr_core.pretrain import build_model, build_optimizer, train_epoch, validate

from .config import ExperimentConfig, from_dict
from .console import quiet_ray_driver, step_progress, train_logging_config, worker_env
from .data import load_split, dataset_for
from .fault_injection import FAULT_ENV, Fault, FaultInjector
from .local_ray import connect_ray, job_env_vars, start_local_ray, user_ray_address
from .lifecycle import StopCheck, StopTraining
from .offline import tracking_env
from .tracking import MetricLogger, msclr_home

CKPT_FILE = "state.pt"
METRICS_CLOSE_ON_STOP_S = 10.0  # after a stop signal, at most this long for unsent epochs (the driver has them)


class CheckpointWriteError(MsclrError):
    """A checkpoint could not be written (disk full, quota, file-size limit); the previous one is intact."""


class CheckpointReadError(MsclrError):
    """A checkpoint file is unreadable (truncated, corrupt) or refused (objects other than tensors)."""


# ---------------------------------------------------------------- worker side


def _device(cfg: ExperimentConfig) -> torch.device:
    import ray.train.torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return ray.train.torch.get_device()


def checkpoint_name(epoch: int) -> str:
    return f"epoch-{epoch:05d}"


def state_bytes(model, optimizer, epoch: int, history: list[dict]) -> bytes:
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history},
        buf,
    )
    return buf.getvalue()


def write_checkpoint(target: Path, data: bytes, midway=None) -> None:
    """Write directory `target` holding CKPT_FILE atomically: it appears complete or not at all."""
    with atomic_dir(target, overwrite=True) as tmp, open(tmp / CKPT_FILE, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        if midway is not None:
            midway()  # test-only fault point: a crash here leaves a half-written file
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())


def load_state(path: Path, map_location="cpu") -> dict:
    """A checkpoint's state dict. weights_only: checkpoints may live on shared storage, so
    loading one must never run code; a file holding anything else is refused, naming the
    file and the refused object (never suggesting that the protection be turned off)."""
    import pickle
    import re

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))  # torch names the global it refused
        what = f" (it asks to import {refused.group(1)})" if refused else ""
        raise CheckpointReadError(
            f"{path}: refused: this checkpoint holds objects other than tensors and plain containers{what}; "
            "msclr never writes such a file, so it was not written by msclr or was altered. "
            "Use a checkpoint msclr wrote, or delete this one to start the run again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # truncated zip, a directory, unreadable
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise CheckpointReadError(f"{path}: cannot read checkpoint: {reason}") from None


def save_checkpoint(target: Path, epoch: int, data: bytes, faults: FaultInjector, previous: str | None) -> None:
    """write_checkpoint with the fault points; a failed write raises CheckpointWriteError."""
    try:
        with faults.file_size_limit(epoch):
            write_checkpoint(target, data, midway=lambda: faults.kill_point(epoch))
    except OSError as err:  # ENOSPC, EDQUOT, EFBIG (file-size limit), EROFS ...
        kept = f"the previous checkpoint {previous} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"could not write checkpoint {target} ({len(data)} bytes): {err.strerror or err} "
            f"(errno {err.errno}; disk full, quota or file-size limit?); {kept}"
        ) from None


def discard_partial_checkpoints(run_dir: str) -> None:
    """Remove the hidden temporaries (`.epoch-*`) a crash mid-write left: never read, only disk."""
    for leftover in Path(run_dir).glob(".epoch-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def checkpoint_target(run_dir: str, epoch: int):
    """(directory rank 0 writes the checkpoint to, how Ray gets it) for this epoch.

    A filesystem path (local disk or a shared mount): the run directory itself, atomic by
    rename, so Ray need not copy it. An object store URI (s3://...): a local temporary
    directory that Ray uploads; the single file becomes one object, and a PUT is atomic.
    """
    from ray.train import CheckpointUploadMode

    if "://" not in run_dir:
        yield Path(run_dir) / checkpoint_name(epoch), CheckpointUploadMode.NO_UPLOAD
    else:
        with tempfile.TemporaryDirectory() as d:
            yield Path(d) / checkpoint_name(epoch), CheckpointUploadMode.SYNC


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


def restore(model, optimizer, device) -> tuple[int, list[dict], str | None]:
    """Load Ray's latest checkpoint, if any: (first epoch to run, history so far, its path)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 1, [], None
    with checkpoint.as_directory() as d:
        state = load_state(Path(d) / CKPT_FILE, map_location=device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["history"], checkpoint.path


def worker_metric_logger(loop_config: dict, history: list[dict], budget_s: float) -> MetricLogger:
    # MetricLogger retries in the background within the run's retry budget; MLflow's own
    # retries would hold a request for minutes (make_trainer sends these in the runtime_env).
    for key, value in tracking_env(budget_s).items():
        os.environ.setdefault(key, value)
    logger = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"], retry_budget_s=budget_s)
    logger.log_history(history)  # a killed worker may have died with restored epochs unsent
    return logger


def step_boundary(faults: FaultInjector, stop: StopCheck, epoch: int, step: int, steps: int) -> None:
    """After each step: the test-only fault point, then the stop check (not after the last
    step: an epoch that has finished is checkpointed instead of thrown away)."""
    faults.kill_point(epoch, step)
    if step < steps - 1 and stop():
        raise StopTraining(step, steps)


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """One Ray Train worker. Rank 0 returns {"stopped": where a stop request stopped it
    (None: it trained every epoch), "outage_since": the start of an MLflow outage that left
    epochs unsent (None: all sent)}, which the driver reads as Result.return_value."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(ExperimentConfig, loop_config["config"])
    settings = cfg.pretrain_settings()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device(cfg)
    run_dir = loop_config["run_dir"]
    # The project's one test seam (fault_injection.py): inert unless a test sets MSCLR_FAULT_INJECT.
    fault = Fault.parse(loop_config.get("fault")) if rank == 0 else None
    faults = FaultInjector(fault, run_dir, loop_config.get("driver_pid", 0))

    data = {c: torch.from_numpy(a).to(device) for c, a in load_split(cfg, cfg.data.train_part).arrays.items()}
    model = build_model(settings).to(device)
    optimizer = build_optimizer(model, settings)
    start_epoch, history, last_checkpoint = restore(model, optimizer, device)
    # The queue is not a module buffer, so DDP never re-broadcasts it; parameters of
    # conventions absent from a step get no gradient, hence find_unused_parameters.
    ddp_model = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True}
    ) if world > 1 else model  # fmt: skip

    logger = None
    if rank == 0:
        discard_partial_checkpoints(run_dir)
        logger = worker_metric_logger(loop_config, history, cfg.tracking.retry_budget_s)
    probe = ProbeSet.load(cfg) if rank == 0 and cfg.eval.probe_every > 0 else None
    autocast = torch.bfloat16 if cfg.precision == "bf16" else None
    epochs = settings.optim.epochs
    stop, stopped = StopCheck(loop_config.get("stop_key"), rank, world, device), None
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        try:
            with step_progress(f"[{cfg.name}] epoch {epoch}/{epochs}", enabled=rank == 0) as progress:  # console.py
                stats = train_epoch(
                    ddp_model, optimizer, data, settings, epoch,
                    rank=rank, world_size=world, device=device, autocast_dtype=autocast,
                    on_step=lambda step, n, epoch=epoch: (progress(step, n), step_boundary(faults, stop, epoch, step, n)),
                )  # fmt: skip
        except StopTraining as halt:  # every rank, after the same step; the epoch is trained again on resume
            stopped = {"epoch": epoch, "step": halt.step + 1, "steps": halt.steps}
            break
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
        halting = stop()  # a request seen at the end of an epoch: checkpoint it, then stop
        if halting or epoch % cfg.ray.checkpoint_every == 0 or epoch == epochs:
            with checkpoint_target(run_dir, epoch) as (target, upload_mode):
                if rank == 0:
                    save_checkpoint(target, epoch, state_bytes(model, optimizer, epoch, history), faults, last_checkpoint)
                    last_checkpoint = str(target)
                ckpt = ray.train.Checkpoint.from_directory(target) if rank == 0 else None
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=target.name, checkpoint_upload_mode=upload_mode)
        else:
            ray.train.report(metrics)
        if halting:
            stopped = {"epoch": epoch, "step": None, "steps": None}
            break
    if logger is None:
        return None
    budget = cfg.tracking.retry_budget_s
    if logger.close(min(budget, METRICS_CLOSE_ON_STOP_S) if stopped else budget):
        return {"stopped": stopped, "outage_since": None}
    print(f"MLflow unreachable: {logger.pending} epochs unsent; the driver logs them from the checkpoint", flush=True)
    return {"stopped": stopped, "outage_since": logger.outage_since}


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
        # OpenMP threads that spin while they wait make a step 5x slower when the cores are shared
        # (other workers, evaluation, a busy laptop); passive waiting costs 0-10% on an idle machine.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        **worker_env(),  # verbosity and progress bar (console.py)
    }
    os.environ.update(env)
    quiet_ray_driver()
    address = cfg.ray.address or user_ray_address()
    if address:
        # Ray's own actors (Train's placement-group cleaner, its state actor) look the cluster
        # up without an address: tell them. Keys the submitted job's runtime env already sets
        # stay the job's (Ray refuses to merge a key set twice: ray-project/ray#39208).
        concrete = {"RAY_ADDRESS": address} if address != "auto" and "://" not in address else {}
        job = job_env_vars()
        env = {k: v for k, v in {**env, **concrete}.items() if k not in job}
        connect_ray(address, runtime_env={"env_vars": env}, log_to_driver=True)
    else:  # a private local runtime: loopback only, token auth (never a stale cluster from /tmp/ray)
        start_local_ray(num_cpus=num_cpus, env_vars=env)


def storage_path(cfg: ExperimentConfig) -> str:
    """Absolute, as Ray keeps it: rank 0 writes checkpoints under it directly, from another cwd."""
    path = cfg.ray.storage_path or str(msclr_home() / "ray")
    return path if "://" in path else str(Path(path).expanduser().resolve())


def run_directory(cfg: ExperimentConfig) -> str:
    """The Ray run directory (Ray's experiment path): checkpoints and the run snapshot."""
    return f"{storage_path(cfg).rstrip('/')}/{cfg.name}"


def make_trainer(cfg: ExperimentConfig, loop_config: dict, callbacks=None):
    import ray.train

    # What every worker needs besides the caller's keys; the fault spec is parsed here so a
    # typo fails before any compute.
    Fault.parse(os.environ.get(FAULT_ENV))
    loop_config = {
        **loop_config, "run_dir": run_directory(cfg), "driver_pid": os.getpid(), "fault": os.environ.get(FAULT_ENV),
    }  # fmt: skip
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    return _trainer_class()(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources,
            placement_strategy=cfg.ray.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.name,
            storage_path=storage_path(cfg),
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.ray.max_failures, controller_failure_limit=cfg.ray.controller_failure_limit
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
            callbacks=callbacks or [],
            logging_config=train_logging_config(),  # Ray Train's INFO lines (TrainingReport...) only with -v
            worker_runtime_env={"env_vars": tracking_env(cfg.tracking.retry_budget_s)},
        ),
    )


def _trainer_class():
    """TorchTrainer, except that fit() leaves SIGINT to msclr (lifecycle.py): Train V2's own
    handler aborts the workers mid-step and exits 0 or 1 with the MLflow run left RUNNING.
    The controller is kept for lifecycle.stop_at_step_boundary, which aborts through it."""
    from ray.train.torch import TorchTrainer

    class MsclrTrainer(TorchTrainer):
        controller = None

        def _register_sigint_handler(self, controller):
            self.controller = controller

    return MsclrTrainer


def preflight(cfg: ExperimentConfig, ds=None):
    """Validate the config against its dataset (opened and checked by dataset_for unless
    given); return the Dataset, for the caller to pass on instead of opening it again."""
    ds = ds or dataset_for(cfg)
    n_train = len(ds.split_indices(cfg.data.protocol, cfg.data.train_part))
    if cfg.data.max_train_samples:
        n_train = min(n_train, cfg.data.max_train_samples)
    validate(cfg.pretrain_settings(), n_train, cfg.ray.num_workers)
    return ds
