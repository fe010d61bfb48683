"""Typed project errors. Every message names the file, sample/line and field involved."""

from __future__ import annotations


class MsclrError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(MsclrError, ValueError):
    """A config/sweep YAML or an argument is invalid (message names file and key)."""


class DataError(MsclrError, ValueError):
    """A data file is malformed (message names file, sample or line, and field)."""

    def __init__(self, message: str, *, path=None, sample=None, line=None, field=None):
        parts = [str(p) for p in (path,) if p is not None]
        if sample is not None:
            parts.append(f"sample {sample}")
        if line is not None:
            parts.append(f"line {line}")
        if field is not None:
            parts.append(f"field {field!r}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.sample, self.line, self.field = path, sample, line, field
