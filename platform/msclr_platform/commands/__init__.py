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
