"""One module per `msclr` sub-command (see msclr_platform.cli.COMMANDS).

Each module defines `add_arguments(parser)` and `main(args) -> int`. Module tops import
only the standard library: heavy imports (torch, ray, mlflow) go inside `main`, so that
`msclr --help` and `msclr conventions` start fast.
"""


def emit_report(args, report: dict, summary: str) -> None:
    """The common end of every `msclr bench ...`: the JSON report to `--out` (atomically,
    so a crash never leaves half a results file) and to stdout with `--json`; otherwise
    the one-line human summary."""
    import json

    text = json.dumps(report, indent=2)
    if getattr(args, "out", None):
        from msclr_core.io_utils import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text if args.json else summary)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    Linux's VmHWM, not getrusage's ru_maxrss: ru_maxrss survives execve, so a command
    started from a big process (a 2 GB pytest session, a notebook) would report the
    parent's peak instead of its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KB on Linux


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed heap memory to the kernel (True if it applied)."""
    import ctypes
    import ctypes.util

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # 32 MiB is glibc's largest mmap threshold on 64-bit: batch tensors come from the heap.
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) and libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
