"""`msclr ui`: start (or reuse) the local MLflow server and print/open its address."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open", action="store_true", help="open the UI in a web browser")


def main(args) -> int:
    from msclr_platform.tracking import ensure_tracking_uri

    uri = ensure_tracking_uri(quiet=True)
    print(f"MLflow UI: {uri}")
    if args.open:
        import webbrowser

        webbrowser.open(uri)
    return 0
