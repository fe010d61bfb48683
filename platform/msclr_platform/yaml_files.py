"""Config files as plain dicts: safe YAML reading, the one deep merge, and `base:` inheritance.

An experiment YAML may start with `base: OTHER.yaml` (relative to the file that says it):
the file is then the base's settings with its own keys merged over them, key by key for
nested mappings, replacing lists and scalars (deep_merge, the same merge sweeps and `--set`
use). Bases may have bases; a cycle is a ConfigError naming the files. `base` is a loader
directive, not a config field: it never reaches the validated config.
Configs are untrusted input: YAML is only ever read with a yaml.SafeLoader (tags refused),
taught the YAML 1.2 float rule so that `lr: 1e-4` is a number, as in every other tool.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from msclr_core.data.safe_pickle import short_repr
from msclr_core.errors import ConfigError

BASE_KEY = "base"


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no tags: configs are untrusted input) with YAML 1.2's float rule.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent: `1e-4` and
    `1.5e3` were strings there ("expected float, got str"). The 1.1 rules stay first (ints
    stay ints); this one only adds the exponent forms. The resolver lists are copied so
    that yaml.SafeLoader itself is left unchanged."""

    yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def safe_yaml(text: str, where: str):
    """YAML through SafeLoader (configs are untrusted input); every failure a ConfigError naming the line."""
    try:
        return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:  # str(err) already says "line N, column M"
        raise ConfigError(f"{where}: invalid YAML: {err}") from None
    except yaml.YAMLError as err:  # ReaderError (a control character) only knows its position
        line = text.count("\n", 0, getattr(err, "position", 0)) + 1
        raise ConfigError(f"{where}: invalid YAML at line {line}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: top level: invalid YAML: nested deeper than the parser allows") from None
    except ValueError as err:  # an integer beyond Python's 4300-digit limit: locate it
        m = re.search(r"\d{4000,}", text)
        line = text.count("\n", 0, m.start()) + 1 if m else 1
        raise ConfigError(f"{where}: invalid YAML at line {line}: {short_repr(str(err))}") from None


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`: nested mappings merge key by key, anything else replaces."""
    merged = dict(base)
    for k, v in override.items():
        merged[k] = deep_merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping from `path` (an empty file gives {}); ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text at line {line}: {err.reason}") from None
    data = safe_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level: expected a mapping of keys, got {type(data).__name__}")
    return data


def read_layers(path: Path) -> list[tuple[Path, dict]]:
    """(file, its own keys without `base`) for `path` and its chain of bases, the furthest
    base first, so that merging them in order gives the file's settings. `path` is resolved."""
    layers: list[tuple[Path, dict]] = []
    seen: list[Path] = []
    while True:
        if path in seen:
            chain = " -> ".join(map(str, [*seen, path]))
            raise ConfigError(f"{seen[-1]}: key 'base': the bases form a cycle: {chain}")
        seen.append(path)
        data = dict(read_yaml(path))
        layers.append((path, data))
        if BASE_KEY not in data:
            return layers[::-1]
        ref = data.pop(BASE_KEY)
        if not isinstance(ref, str) or not ref or "\x00" in ref:
            raise ConfigError(f"{path}: key 'base': expected the path of an experiment YAML, got {short_repr(ref)}")
        try:
            path = (path.parent / os.path.expanduser(ref)).resolve()
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
            raise ConfigError(f"{seen[-1]}: key 'base': cannot resolve {short_repr(ref)} ({err})") from None
        if not path.is_file():
            raise ConfigError(f"{seen[-1]}: key 'base': {short_repr(ref)} is not a file ({path})")
