"""`msclr bench augment`: time the three batched AimCLR views against the official loader.

One measured batch = x1 (extreme view) + x2, x3 (normal views) of `--batch-size` clips shaped
3×50×25×2 (ntu-rgb+d), as the official `Feeder_triple.__getitem__` produces per clip. The
official rate (595 samples/s) was measured with one process and torch on one thread, so the
default here is one thread too.

glibc malloc: every op returns a fresh ~4 MB batch tensor. With glibc's default settings the
freed blocks are handed back to the kernel (heap trim / munmap) and the next allocation
page-faults them in again: on the 2-core VM that doubled the time per batch (~6,400 page
faults per batch of 128). The bench therefore raises glibc's trim and mmap thresholds first,
as one would (or use jemalloc/tcmalloc) in a CPU training process; `--no-malloc-tuning`
measures the default behaviour. On CUDA the caching allocator makes this moot.
"""

from __future__ import annotations

import argparse

from . import emit_report, keep_freed_memory

OFFICIAL_SAMPLES_PER_S = 595.0  # AimCLR Feeder_triple, 3 views, one process, 2-core dev machine
CLIP_SHAPE = (3, 50, 25, 2)  # C, T, V, M of NTU clips
CONVENTION = "ntu-rgb+d"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to repeat after the warm-up")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (official: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="keep glibc's default heap trimming (see the module docstring)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--out", help="also write the JSON to this file (atomically)")


def _time_views(x, gen, seconds: float, sync) -> tuple[int, float]:
    """(batches, elapsed seconds): repeat the three views for at least `seconds`."""
    import time

    from msclr_core.augment import aimclr_views

    batches = 0
    start = time.perf_counter()
    while True:
        aimclr_views(x, x, CONVENTION, CONVENTION, gen)
        batches += 1
        sync()  # count a batch only once the device has finished it
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return batches, elapsed


def main(args) -> int:
    import torch

    from msclr_core.augment import aimclr_views
    from msclr_core.errors import ConfigError

    if args.batch_size < 1 or args.threads < 1 or args.seconds < 0:
        raise ConfigError("--batch-size and --threads must be >= 1 and --seconds >= 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise ConfigError(f"--device {args.device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device!r}: CUDA is not available on this machine")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    malloc_tuned = False if args.no_malloc_tuning else keep_freed_memory()
    torch.set_num_threads(args.threads)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # Clips of NTU scale (metres, about a body size), kept on the device like a GPU-resident dataset.
    data_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    x = 0.3 * torch.randn((args.batch_size, *CLIP_SHAPE), generator=data_gen, device=device)
    for _ in range(3):  # warm-up: allocator, kernel selection, CUDA context
        aimclr_views(x, x, CONVENTION, CONVENTION, gen)
    sync()
    batches, elapsed = _time_views(x, gen, args.seconds, sync)

    samples_per_s = batches * args.batch_size / elapsed
    report = {
        "samples_per_s": round(samples_per_s, 1),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": str(device),
        "clip_shape": list(CLIP_SHAPE),
        "views": 3,
        "batches": batches,
        "seconds": round(elapsed, 4),
        "official_samples_per_s": OFFICIAL_SAMPLES_PER_S,
        "ratio": round(samples_per_s / OFFICIAL_SAMPLES_PER_S, 2),
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
    }
    emit_report(args, report, f"{batches} batches of {args.batch_size} clips (1 extreme + 2 normal views) in {elapsed:.2f} s "
                f"on {device}, {args.threads} thread(s): {report['samples_per_s']} samples/s, "
                f"{report['ratio']}x the official {OFFICIAL_SAMPLES_PER_S:.0f} samples/s")
    return 0
