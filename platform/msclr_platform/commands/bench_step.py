"""`msclr bench step`: pretraining samples/s of the full MS-AimCLR step, augmentation included.

What is timed is exactly what a training worker runs: msclr_core.pretrain.train_epoch over a
device-resident dataset (random clips of NTU shape, 3x50xVx2, one array per convention), i.e.
batch gather, the three AimCLR views, the query/extreme/key encoder passes, D3M + InfoNCE
against the MoCo queue, backward, SGD and the key-encoder EMA. It is compared with the
official AimCLR pipeline measured end to end on an H200 (1,137 samples/s, fp32, batch 128,
4 loader workers: the anchor benchmarks/RESULTS.md compares with).

Model and method come from an experiment config (`--config`, default the quickstart's
experiments/quickstart.yaml; `--hidden-channels` etc. override it). The formulation timed is
the default one (`--fused-views auto`: the two query views in one encoder call where that is
exact and pays, i.e. without dropout and not on the CPU) and, in the same run, the reference:
today's step (separate view passes, eager, `--reference-dtype`, `--reference-threads`), the
same model from the same initial weights. The two are timed in alternating rounds of
`--round-steps` steps, so that a machine whose load changes from minute to minute (a shared
VM) slows both alike; `speedup_vs_reference` is the ratio of the two rates.
`--threads 1 --reference-threads 2` measures the thread setting the same way: on a busy
2-core VM two OpenMP threads stall each other at every op (benchmarks/RESULTS.md).

Timing: one short warm-up epoch per formulation (CUDA context, cuDNN algorithm choice,
allocator, and the compile when --compile), then whole steps until --steps or --seconds is
reached. The stop is taken from train_epoch's on_step hook; on CUDA the device is
synchronised at the end of each round (not per step, which would forbid the CPU from queueing
the next step while the GPU still works on this one), so each count covers only finished work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import emit_report, keep_freed_memory

OFFICIAL_SAMPLES_PER_S = 1137.0  # official AimCLR pretraining loop end to end, fp32, batch 128, H200
T, M, C = 50, 2, 3  # frames, persons, coordinates of NTU clips
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "experiments" / "quickstart.yaml"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, as train_epoch does")
    parser.add_argument("--config", help="experiment YAML giving conventions, model, method, augment, batch size "
                        "(default: experiments/quickstart.yaml; the paper's: experiments/ntu60/xsub_joint.yaml)")
    parser.add_argument("--batch-size", type=int, help="default: the config's optim.batch_size")
    parser.add_argument("--conventions", nargs="+", help="default: the config's")
    parser.add_argument("--hidden-channels", type=int, help="default: the config's (16 = the paper's 1/4 width)")
    parser.add_argument("--hidden-dim", type=int)
    parser.add_argument("--num-blocks", type=int)
    parser.add_argument("--queue-size", type=int)
    parser.add_argument("--clips", type=int, default=0,
                        help="clips resident on the device per convention (default: max(1024, 4 x batch))")
    parser.add_argument("--storage", choices=("fp32", "bf16"), default="fp32",
                        help="dtype of the resident dataset; bf16 halves its memory, batches are upcast at the gather")
    parser.add_argument("--mining", action="store_true", help="time epochs after mining_epoch (NN mining on)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many timed steps (0: --seconds only)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="stop after this long (timed part, both formulations together)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the query and key encoders")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="torch.compile mode (reduce-overhead: CUDA graphs on a GPU); implies --compile")
    parser.add_argument("--fused-views", choices=("auto", "on", "off"), default="auto",
                        help="the two query views in one encoder call (auto: where exact and not on the CPU)")
    parser.add_argument("--no-reference", action="store_true", help="do not time the reference formulation")
    parser.add_argument("--reference-dtype", choices=("fp32", "bf16"), help="the reference's dtype (default: --dtype)")
    parser.add_argument("--reference-threads", type=int, default=0,
                        help="the reference's torch threads, set at each of its rounds (default: --threads)")
    parser.add_argument("--round-steps", type=int, default=2,
                        help="steps per formulation before switching to the other (alternating rounds)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default heap trimming (see `msclr bench augment`; Ray workers tune it too)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON to this file (atomically)")


class UpcastOnGather:
    """A reduced-precision resident array that train_epoch can index like a tensor: the
    gathered batch comes back float32, so only storage (not augmentation or the model)
    sees the lower precision. train_epoch only uses .shape, .device and [idx]."""

    def __init__(self, tensor):
        self.tensor, self.shape, self.device = tensor, tensor.shape, tensor.device

    def __getitem__(self, idx):
        return self.tensor[idx].float()


class _Stop(Exception):
    """Raised from train_epoch's on_step hook once enough steps are timed."""


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} ({len(names)} logical cores)" if names else "cpu"
    except OSError:
        return "cpu"


def resolve_device(name: str):
    """torch.device from --device, with a ConfigError (exit code 2) instead of a traceback."""
    import torch

    from msclr_core.errors import ConfigError

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def settings_from_args(args):
    """PretrainSettings of the config (`--config`, default the quickstart's) with the command
    line's overrides; the lr schedule never decays and NN mining is on only with --mining."""
    import dataclasses

    from .. import config as experiment_config

    cfg = experiment_config.load_config(args.config or DEFAULT_CONFIG).pretrain_settings()
    model = {"hidden_channels": args.hidden_channels, "hidden_dim": args.hidden_dim, "num_blocks": args.num_blocks}
    return dataclasses.replace(
        cfg,
        conventions=list(args.conventions or cfg.conventions),
        model=dataclasses.replace(cfg.model, **{k: v for k, v in model.items() if v is not None}),
        # mining_epoch=0 turns NN mining on from the first epoch; otherwise it never starts here
        method=dataclasses.replace(cfg.method, queue_size=args.queue_size or cfg.method.queue_size,
                                   mining_epoch=0 if args.mining else 10**9),
        optim=dataclasses.replace(cfg.optim, batch_size=args.batch_size or cfg.optim.batch_size,
                                  passes_per_epoch=None, lr_decay_epochs=[]),
        seed=args.seed,
    )


def resident_data(conventions, clips: int, device, storage: str, seed: int):
    """{convention: clips x 3 x 50 x V x 2} random clips of body scale (metres), on the device.

    Returns (data for train_epoch, max abs error of the storage dtype in metres)."""
    import torch

    from msclr_core.conventions import get_convention

    gen = torch.Generator(device=device).manual_seed(seed)
    data, err = {}, 0.0
    for conv in conventions:
        v = get_convention(conv).num_joints
        x = 0.3 * torch.randn((clips, C, T, v, M), generator=gen, device=device)
        if storage == "bf16":
            low = x.to(torch.bfloat16)
            err = max(err, float((low.float() - x).abs().max()))
            data[conv] = UpcastOnGather(low)
        else:
            data[conv] = x
    return data, err


class Formulation:
    """One way of running the step, and what timing it has counted so far."""

    def __init__(self, name: str, model, optimizer, autocast, fused: bool, threads: int = 0):
        self.name, self.model, self.optimizer, self.autocast, self.fused = name, model, optimizer, autocast, fused
        self.threads = threads  # torch threads for this formulation's rounds (0: leave as set)
        self.epoch, self.steps, self.seconds, self.stats = 2, 0, 0.0, {}

    def run(self, data, settings, *, device, sync, steps: int) -> None:
        """`steps` more steps (train_epoch from a fresh epoch, stopped by its on_step hook), timed."""
        import time

        import torch

        from msclr_core.pretrain import train_epoch

        if self.threads:
            torch.set_num_threads(self.threads)
        done = 0

        def on_step(step, total):
            nonlocal done
            done += 1
            if done >= steps:
                raise _Stop

        start = time.perf_counter()
        try:
            train_epoch(self.model, self.optimizer, data, settings, self.epoch, device=device,
                        autocast_dtype=self.autocast, on_step=on_step)
        except _Stop:
            pass
        sync()  # the clock stops when the device has finished every counted step
        self.seconds += time.perf_counter() - start
        self.steps += done
        self.epoch += 1


def timed_rounds(formulations, data, settings, *, device, sync, seconds: float, max_steps: int,
                 round_steps: int) -> None:
    """Alternate rounds of `round_steps` steps over the formulations until the first one has run
    `max_steps` steps (0: no limit) or `seconds` of wall time have passed."""
    import time

    start = time.perf_counter()
    while True:
        left = max_steps - formulations[0].steps if max_steps else round_steps
        for f in formulations:
            f.run(data, settings, device=device, sync=sync, steps=min(round_steps, left))
        if (max_steps and formulations[0].steps >= max_steps) or time.perf_counter() - start >= seconds:
            return


def build_formulation(name, settings, *, device, dtype: str, fused: str, compile_mode: str | None, threads: int = 0):
    """Model (same seed: same initial weights), optimizer and autocast of one formulation."""
    import torch

    from msclr_core.pretrain import build_model, build_optimizer

    model = build_model(settings).to(device)
    model.fused_views = {"auto": None, "on": True, "off": False}[fused]
    if compile_mode is not None:  # in place: parameters, buffers and the key-encoder EMA are unchanged
        for encoder in (model.encoder_q, model.encoder_k):
            encoder.compile(**({} if compile_mode == "default" else {"mode": compile_mode}))
    autocast = torch.bfloat16 if dtype == "bf16" else None
    return Formulation(name, model, build_optimizer(model, settings), autocast, model.train().fuses_views(), threads)


def main(args) -> int:
    import torch

    from msclr_core.errors import ConfigError
    from msclr_core.pretrain import train_epoch, validate

    if args.compile_mode != "default":
        args.compile = True
    if ((args.batch_size is not None and args.batch_size < 1) or args.seconds < 0 or args.steps < 0
            or args.threads < 0 or args.reference_threads < 0 or args.warmup_steps < 1 or args.round_steps < 1):
        raise ConfigError("--batch-size, --warmup-steps and --round-steps must be >= 1; "
                          "--seconds, --steps, --threads >= 0")
    device = resolve_device(args.device)
    # As a training worker does (GLIBC_TUNABLES in train.init_ray): freed activations stay in
    # the heap instead of being returned to the kernel and faulted in again every step.
    malloc_tuned = False if args.no_malloc_tuning else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    settings = settings_from_args(args)
    batch = settings.optim.batch_size
    clips = args.clips or max(1024, 4 * batch)
    validate(settings, clips)
    data, storage_err = resident_data(settings.conventions, clips, device, args.storage, args.seed)
    threads = torch.get_num_threads()
    main_f = build_formulation("main", settings, device=device, dtype=args.dtype, fused=args.fused_views,
                               compile_mode=args.compile_mode if args.compile else None, threads=threads)
    formulations = [main_f]
    if not args.no_reference:
        formulations.append(build_formulation("reference", settings, device=device, fused="off", compile_mode=None,
                                              dtype=args.reference_dtype or args.dtype,
                                              threads=args.reference_threads or threads))
    warmup_steps = args.warmup_steps
    if args.compile:
        # every (query, key) convention pair compiles its own graphs: see them all before timing
        warmup_steps = max(warmup_steps, 4 * len(settings.conventions) ** 2)

    # Warm-up: a short epoch of its own over a few extra clips, so that its statistics
    # (the loss reported as a sanity check) are those of complete steps.
    warm = settings_from_args(args)
    warm.optim.passes_per_epoch = 1
    warm_data, _ = resident_data(settings.conventions, warmup_steps * batch, device, args.storage, args.seed + 1)
    for f in formulations:
        torch.set_num_threads(f.threads)
        f.stats = train_epoch(f.model, f.optimizer, warm_data, warm, 1, device=device, autocast_dtype=f.autocast)
    del warm_data
    sync()
    if device.type == "cuda":  # the steady-state peak, without cuDNN's algorithm trials of the warm-up
        torch.cuda.reset_peak_memory_stats(device)
    timed_rounds(formulations, data, settings, device=device, sync=sync, seconds=args.seconds,
                 max_steps=args.steps, round_steps=args.round_steps)

    samples_per_s = main_f.steps * batch / main_f.seconds
    ref = formulations[1] if len(formulations) > 1 else None
    ref_rate = ref.steps * batch / ref.seconds if ref else None
    report = {
        "samples_per_s": round(samples_per_s, 1),
        "reference_samples_per_s": round(ref_rate, 1) if ref else None,
        "speedup_vs_reference": round(samples_per_s / ref_rate, 3) if ref else None,
        "fused_views": main_f.fused,
        "reference": (f"separate query-view passes, eager, {args.reference_dtype or args.dtype}, "
                      f"{ref.threads} threads") if ref else None,
        "config": str(args.config or DEFAULT_CONFIG),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "batch_size": batch,
        "conventions": settings.conventions,
        "hidden_channels": settings.model.hidden_channels,
        "hidden_dim": settings.model.hidden_dim,
        "num_blocks": settings.model.num_blocks,
        "dropout": settings.model.dropout,
        "head": settings.model.head,
        "objective": settings.method.objective,
        "parameters": sum(p.numel() for p in main_f.model.encoder_q.parameters()),
        "queue_size": settings.method.queue_size,
        "mining": args.mining,
        "compile": args.compile,
        "compile_mode": args.compile_mode if args.compile else None,
        "storage": args.storage,
        "storage_max_abs_err_m": storage_err,
        "clips": clips,
        "steps": main_f.steps,
        "seconds": round(main_f.seconds, 4),
        "reference_steps": ref.steps if ref else None,
        "reference_seconds": round(ref.seconds, 4) if ref else None,
        "round_steps": args.round_steps,
        "warmup_loss": round(main_f.stats["loss"], 4),
        "reference_warmup_loss": round(ref.stats["loss"], 4) if ref else None,
        "threads": main_f.threads,
        "reference_threads": ref.threads if ref else None,
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "official_samples_per_s": OFFICIAL_SAMPLES_PER_S,
        "ratio": round(samples_per_s / OFFICIAL_SAMPLES_PER_S, 3),
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        report["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # torch's default: fp32 convs run as TF32
    versus = (f"; reference {report['reference_samples_per_s']} samples/s, x{report['speedup_vs_reference']}"
              if ref else "")
    emit_report(args, report, f"{main_f.steps} steps of {batch} clips in {main_f.seconds:.2f} s on "
                f"{report['device_name']}, {args.dtype}: {report['samples_per_s']} samples/s{versus}, "
                f"{report['ratio']}x the official {OFFICIAL_SAMPLES_PER_S:.0f} samples/s")
    return 0
