"""`msclr config show CONFIG [--set KEY=VALUE ...] [--json]`: the resolved config.

What `msclr pretrain` with the same arguments would run and log as its `config.yaml`
artifact: `base:` files merged in, `--set` overrides applied, every key validated and
every path absolute. Nothing starts (no Ray, no MLflow, no dataset read).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.epochs=5 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of YAML")


def main(args) -> int:
    import yaml

    from msclr_platform.config import load_config

    settings = load_config(args.config, args.overrides).to_dict()
    if args.json:
        print(json.dumps(settings))
    else:  # as resume.log_config writes the run's config.yaml artifact
        print(yaml.safe_dump(settings, sort_keys=False), end="")
    return 0
