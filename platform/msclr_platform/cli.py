"""The `msclr` command: a thin argparse dispatcher over msclr_platform.commands.*.

Sub-commands are listed here as (words, module, help). A command's module is imported
only to build its parser; its heavy imports happen inside its `main`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (command words, module under msclr_platform.commands, one-line help)
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("conventions",), "conventions", "list the skeleton conventions in the registry"),
    (("quickstart",), "quickstart", "the whole platform on built-in data: synth data, Ray, MLflow, MS-CLR vs baseline"),
    (("pretrain",), "pretrain", "pretrain MS-CLR with Ray Train (resumes by run name), then evaluate"),
    (("evaluate",), "evaluate", "linear probe, kNN and multi-skeleton ensemble of a pretrained encoder"),
    (("sweep",), "sweep", "Ray Tune hyper-parameter sweep from a YAML file (--resume continues one)"),
    (("runs",), "runs", "compare tracked runs (`msclr runs compare [EXPERIMENT]`), upload an outage's results (`msclr runs sync NAME`)"),
    (("ui",), "ui", "start or reuse the local MLflow server and print its address"),
    (("demo",), "demo", "core-only demo: pretrain briefly on generated data, print the probe gain"),
    (("bench", "augment"), "bench_augment", "time the batched AimCLR augmentations"),
    (("bench", "read"), "bench_read", "time the NTU .skeleton reader"),
    (("bench", "step"), "bench_step", "time the full MS-AimCLR pretraining step (augmentation included)"),
    (("bench", "linear-eval"), "bench_linear_eval", "linear probe on cached features vs re-encoding every epoch"),
    (("bench", "scaling"), "bench_scaling", "Ray Train samples/s with 1 and 2 CPU workers"),
    (("bench", "learning"), "bench_learning", "learning curves: MS-CLR vs one skeleton vs raw/random/supervised"),
    (("config", "show"), "config_show", "print the resolved config (base files, --set applied): what would run and be logged"),
    (("data", "check"), "data_check", "validate a dataset directory"),
    (("data", "ntu"), "data_ntu", "build a dataset from raw NTU RGB+D .skeleton files"),
    (("data", "synth"), "data_synth", "write the synthetic multi-skeleton benchmark"),
    (("data", "import"), "data_import", "import SkeletonCLR/AimCLR arrays, pyskl pickles, poses or mocap"),
    (("data", "export"), "data_export", "export a dataset to a pyskl annotation pickle"),
]


def _available(commands):
    """Skip commands whose module is not written yet (keeps the CLI usable while it grows)."""
    for words, module, help_ in commands:
        try:
            yield words, importlib.import_module(f"msclr_platform.commands.{module}"), help_
        except ModuleNotFoundError as err:
            if err.name != f"msclr_platform.commands.{module}":
                raise


EPILOG = """\
output: quiet by default (msclr's lines, one line per epoch, results); -v/--verbose (before or
after the command, or MSCLR_VERBOSE=1) adds Ray's and MLflow's own logs. With --json, stdout of
quickstart, pretrain, evaluate and sweep is exactly one JSON line; everything else goes to stderr.
No colour when NO_COLOR is set or stderr is not a terminal.

exit codes: 0 ok; 1 failure (e.g. the tracking server stayed away); 2 usage, config or data
error; 130 interrupted (SIGINT, Ctrl-C; the run is KILLED and resumable); 141 stdout closed by its
reader; 143 terminated (SIGTERM)."""


def _add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="show Ray's and MLflow's own logs (default: quiet)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msclr", description="Multi-Skeleton Contrastive Learning platform",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _add_verbose(parser, False)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module, help_ in _available(COMMANDS):
        if len(words) == 1:
            sub = top.add_parser(words[0], help=help_, description=help_)
        else:
            group, leaf = words
            if group not in groups:
                gp = top.add_parser(group, help=f"{group} commands")
                groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND", required=True)
            sub = groups[group].add_parser(leaf, help=help_, description=help_)
        module.add_arguments(sub)
        _add_verbose(sub, argparse.SUPPRESS)  # after the command too; SUPPRESS keeps a -v given before it
        sub.set_defaults(_main=module.main, _json_stdout=getattr(module, "JSON_STDOUT", False))
    return parser


def version() -> str:
    """The installed package's version (its metadata), else the source tree's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("msclr")
    except PackageNotFoundError:
        from msclr_platform import __version__

        return __version__


def _stdout_closed() -> int:
    """The reader of stdout went away (`msclr conventions | head -1`): exit quietly, as
    other command-line tools do, with nothing more to flush into the closed pipe at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 ok, 1 failure (e.g. the tracking server stayed away), 2 usage or config
    error, 130 SIGINT (Ctrl-C), 141 stdout closed by its reader, 143 SIGTERM (EPILOG, README)."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from msclr_core.errors import MsclrError

    from . import console

    try:
        # --json of a command with JSON_STDOUT: fd 1 is stderr inside, console.print_json writes the one line
        with console.session(is_verbose=args.verbose, json_stdout=args._json_stdout and getattr(args, "json", False)):
            code = int(args._main(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in the flush at interpreter exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except MsclrError as err:  # project errors already name file, sample and field
        print(f"msclr: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except KeyboardInterrupt as err:  # lifecycle.Interrupted: SIGINT or SIGTERM, the run closed as KILLED
        import shlex

        resume = f"; resume with: {shlex.join(['msclr', *argv])}" if getattr(err, "resumable", False) else ""
        print(f"msclr: {err or 'interrupted'}{resume}", file=sys.stderr, flush=True)
        return getattr(err, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
