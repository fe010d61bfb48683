"""`msclr ui [--port N] [--open] [--stop]`: start (or reuse) the local MLflow server of MSCLR_HOME
and print/open its address, or stop it."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open", action="store_true", help="open the UI in a web browser")
    parser.add_argument("--port", type=int, help="port for a new server (remembered for later starts)")
    parser.add_argument("--stop", action="store_true", help="stop the local MLflow server of MSCLR_HOME")


def main(args) -> int:
    from msclr_core.errors import ConfigError
    from msclr_platform.tracking import ensure_tracking_uri, server_root, stop_server

    if args.port is not None and not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected 1..65535, got {args.port}")
    if args.stop:
        stopped = stop_server(server_root())
        if stopped is None:
            print(f"no MLflow server running for {server_root()}")
        else:
            print(f"stopped the MLflow server on {stopped['uri']} (pid {stopped['pid']})")
        return 0
    uri = ensure_tracking_uri(quiet=True, port=args.port)
    print(f"MLflow UI: {uri}")
    if args.open:
        import webbrowser

        webbrowser.open(uri)
    return 0
