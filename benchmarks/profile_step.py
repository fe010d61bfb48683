"""Where does a pretraining step spend its time? torch.profiler over a few MS-AimCLR steps.

    python benchmarks/profile_step.py --device cuda --dtype bf16 --batch-size 1024 [--compile]

Takes `msclr bench step`'s arguments (same model, data and step), runs the warm-up, then
profiles --steps steps (default 5) and prints the operators and kernels that take the most
device (or CPU) time. Used to decide what to optimise; the numbers to report come from
`msclr bench step`.
"""

from __future__ import annotations

import argparse
import sys

from msclr_platform.commands import bench_step


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from msclr_core.pretrain import build_model, build_optimizer, train_epoch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_step.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    args.steps = args.steps or 5
    device = bench_step.resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    autocast = torch.bfloat16 if args.dtype == "bf16" else None
    settings = bench_step.settings_from_args(args)
    data, _ = bench_step.resident_data(settings.conventions, max(1024, 4 * args.batch_size), device, args.storage, 0)
    model = build_model(settings).to(device)
    optimizer = build_optimizer(model, settings)
    if args.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    warm = bench_step.settings_from_args(args)
    warm.optim.passes_per_epoch = 1
    train_epoch(model, optimizer, data, warm, 1, device=device, autocast_dtype=autocast)  # warm-up epoch
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        bench_step.timed_steps(model, optimizer, data, settings, device=device, autocast=autocast, sync=sync,
                               seconds=1e9, max_steps=args.steps, first_epoch=2)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
