"""`msclr bench step`: pretraining samples/s of the full MS-AimCLR step, augmentation included.

What is timed is exactly what a training worker runs: msclr_core.pretrain.train_epoch over a
device-resident dataset (random clips of NTU shape, 3x50xVx2, one array per convention), i.e.
batch gather, the three AimCLR views, the query/extreme/key encoder passes, D3M + InfoNCE
against the MoCo queue, backward, SGD and the key-encoder EMA. It is compared with the
official AimCLR pipeline measured end to end on an H200 (1,137 samples/s, fp32, batch 128;
/work/shared/reference/performance-anchors.md).

Timing: one short warm-up epoch (CUDA context, cuDNN algorithm choice, allocator, and the
compile when --compile), then whole steps until --steps or --seconds is reached. The stop
is taken from train_epoch's on_step hook; on CUDA the device is synchronised once at the
end (not per step, which would forbid the CPU from queueing the next step while the GPU
still works on this one), so the count covers only finished work.
"""

from __future__ import annotations

import argparse

from . import emit_report, keep_freed_memory

OFFICIAL_SAMPLES_PER_S = 1137.0  # official AimCLR pretraining loop end to end, fp32, batch 128, H200
T, M, C = 50, 2, 3  # frames, persons, coordinates of NTU clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, as train_epoch does")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--conventions", nargs="+", default=["ntu-rgb+d", "smplx_42"])
    parser.add_argument("--hidden-channels", type=int, default=16, help="16 = the paper's 1/4-width ST-GCN")
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-blocks", type=int, default=10)
    parser.add_argument("--queue-size", type=int, default=32768)
    parser.add_argument("--clips", type=int, default=0,
                        help="clips resident on the device per convention (default: max(1024, 4 x batch))")
    parser.add_argument("--storage", choices=("fp32", "bf16"), default="fp32",
                        help="dtype of the resident dataset; bf16 halves its memory, batches are upcast at the gather")
    parser.add_argument("--mining", action="store_true", help="time epochs after mining_epoch (NN mining on)")
    parser.add_argument("--steps", type=int, default=0, help="stop after this many timed steps (0: --seconds only)")
    parser.add_argument("--seconds", type=float, default=10.0, help="stop after this long (timed part)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the query and key encoders")
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
    from msclr_core.pretrain import MethodSettings, ModelSettings, OptimSettings, PretrainSettings

    return PretrainSettings(
        conventions=list(args.conventions),
        model=ModelSettings(hidden_channels=args.hidden_channels, hidden_dim=args.hidden_dim,
                            num_blocks=args.num_blocks),
        # mining_epoch=0 turns NN mining on from the first epoch; otherwise it never starts here
        method=MethodSettings(queue_size=args.queue_size, mining_epoch=0 if args.mining else 10**9),
        optim=OptimSettings(batch_size=args.batch_size, passes_per_epoch=None),
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


def timed_steps(model, optimizer, data, settings, *, device, autocast, sync, seconds: float, max_steps: int,
                first_epoch: int) -> tuple[int, float]:
    """(steps, seconds): run train_epoch, epoch after epoch, until a step limit or the clock says stop."""
    import time

    from msclr_core.pretrain import train_epoch

    steps = 0
    start = time.perf_counter()

    def on_step(step, total):
        nonlocal steps
        steps += 1
        if (max_steps and steps >= max_steps) or time.perf_counter() - start >= seconds:
            raise _Stop

    epoch = first_epoch
    try:
        while True:
            train_epoch(model, optimizer, data, settings, epoch, device=device, autocast_dtype=autocast,
                        on_step=on_step)
            epoch += 1
    except _Stop:
        pass
    sync()  # the clock stops when the device has finished every counted step
    return steps, time.perf_counter() - start


def main(args) -> int:
    import torch

    from msclr_core.errors import ConfigError
    from msclr_core.pretrain import build_model, build_optimizer, train_epoch, validate

    if args.batch_size < 1 or args.seconds < 0 or args.steps < 0 or args.threads < 0 or args.warmup_steps < 1:
        raise ConfigError("--batch-size and --warmup-steps must be >= 1; --seconds, --steps, --threads >= 0")
    device = resolve_device(args.device)
    # As a training worker does (GLIBC_TUNABLES in train.init_ray): freed activations stay in
    # the heap instead of being returned to the kernel and faulted in again every step.
    malloc_tuned = False if args.no_malloc_tuning else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    autocast = torch.bfloat16 if args.dtype == "bf16" else None

    settings = settings_from_args(args)
    clips = args.clips or max(1024, 4 * args.batch_size)
    validate(settings, clips)
    data, storage_err = resident_data(settings.conventions, clips, device, args.storage, args.seed)
    model = build_model(settings).to(device)
    optimizer = build_optimizer(model, settings)
    warmup_steps = args.warmup_steps
    if args.compile:
        model.encoder_q.compile()  # in place: parameters, buffers and the key-encoder EMA are unchanged
        model.encoder_k.compile()
        # every (query, key) convention pair compiles its own graphs: see them all before timing
        warmup_steps = max(warmup_steps, 4 * len(settings.conventions) ** 2)

    # Warm-up: a short epoch of its own over a few extra clips, so that its statistics
    # (the loss reported as a sanity check) are those of complete steps.
    warm = settings_from_args(args)
    warm.optim.passes_per_epoch = 1
    warm_data, _ = resident_data(settings.conventions, warmup_steps * args.batch_size, device, args.storage,
                                 args.seed + 1)
    warm_stats = train_epoch(model, optimizer, warm_data, warm, 1, device=device, autocast_dtype=autocast)
    del warm_data
    sync()
    if device.type == "cuda":  # the steady-state peak, without cuDNN's algorithm trials of the warm-up
        torch.cuda.reset_peak_memory_stats(device)
    steps, elapsed = timed_steps(model, optimizer, data, settings, device=device, autocast=autocast, sync=sync,
                                 seconds=args.seconds, max_steps=args.steps, first_epoch=2)

    samples_per_s = steps * args.batch_size / elapsed
    report = {
        "samples_per_s": round(samples_per_s, 1),
        "device": str(device),
        "device_name": device_name(device),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "conventions": settings.conventions,
        "hidden_channels": args.hidden_channels,
        "hidden_dim": args.hidden_dim,
        "num_blocks": args.num_blocks,
        "parameters": sum(p.numel() for p in model.encoder_q.parameters()),
        "queue_size": args.queue_size,
        "mining": args.mining,
        "compile": args.compile,
        "storage": args.storage,
        "storage_max_abs_err_m": storage_err,
        "clips": clips,
        "steps": steps,
        "seconds": round(elapsed, 4),
        "warmup_loss": round(warm_stats["loss"], 4),
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "official_samples_per_s": OFFICIAL_SAMPLES_PER_S,
        "ratio": round(samples_per_s / OFFICIAL_SAMPLES_PER_S, 3),
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        report["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32  # torch's default: fp32 convs run as TF32
    emit_report(args, report, f"{steps} steps of {args.batch_size} clips in {elapsed:.2f} s on "
                f"{report['device_name']}, {args.dtype}: {report['samples_per_s']} samples/s, "
                f"{report['ratio']}x the official {OFFICIAL_SAMPLES_PER_S:.0f} samples/s")
    return 0
