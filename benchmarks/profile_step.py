"""Where does a pretraining step spend its time? torch.profiler over a few MS-AimCLR steps.

    python benchmarks/profile_step.py                        # the quickstart model on the CPU
    python benchmarks/profile_step.py --fused-views off      # today's step (the bench's reference)
    python benchmarks/profile_step.py --config experiments/ntu60/xsub_joint.yaml --device cuda --dtype bf16 --batch-size 1024

Takes `msclr bench step`'s arguments (same config, model, data, formulation and step), runs
the warm-up, then profiles --steps steps (default 5) and prints the operators and kernels that
take the most device (or CPU) time. Used to decide what to optimise; the numbers to report
come from `msclr bench step`.
"""

from __future__ import annotations

import argparse
import sys

from msclr_platform.commands import bench_step


def main(argv=None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from msclr_core.pretrain import train_epoch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_step.add_arguments(parser)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args(argv)
    args.steps = args.steps or 5
    device = bench_step.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bench_step.keep_freed_memory()
    settings = bench_step.settings_from_args(args)
    data, _ = bench_step.resident_data(settings.conventions, max(1024, 4 * settings.optim.batch_size), device,
                                       args.storage, 0)
    compile_mode = args.compile_mode if args.compile or args.compile_mode != "default" else None
    f = bench_step.build_formulation("main", settings, device=device, dtype=args.dtype, fused=args.fused_views,
                                     compile_mode=compile_mode)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    warm = bench_step.settings_from_args(args)
    warm.optim.passes_per_epoch = 1
    train_epoch(f.model, f.optimizer, data, warm, 1, device=device, autocast_dtype=f.autocast)  # warm-up epoch
    sync()
    print(f"fused_views={f.fused}, batch {settings.optim.batch_size}, threads {torch.get_num_threads()}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        f.run(data, settings, device=device, sync=sync, steps=args.steps)
    rate = f.steps * settings.optim.batch_size / f.seconds
    print(f"{f.steps} steps in {f.seconds:.2f} s (profiled): {rate:.1f} samples/s")
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
