"""One module per `msclr` sub-command (see msclr_platform.cli.COMMANDS).

Each module defines `add_arguments(parser)` and `main(args) -> int`. Module tops import
only the standard library: heavy imports (torch, ray, mlflow) go inside `main`, so that
`msclr --help` and `msclr conventions` start fast.
"""
