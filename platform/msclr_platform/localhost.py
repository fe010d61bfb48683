"""Small helpers for the local services msclr starts: loopback ports, owner-only files.

Everything msclr creates for its own Ray runtime and MLflow server (the Ray token, the
tracking database, artifacts, logs, state files) is readable by its owner only:
directories 0700, files 0600, whatever the caller's umask.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

OWNER_DIR, OWNER_FILE = 0o700, 0o600


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind host:port now (with SO_REUSEADDR, as servers do)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback (::ffff:127.0.0.1) on an IPv6 socket."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700; tighten it to 0700 if it exists and is ours."""
    path.mkdir(mode=OWNER_DIR, parents=True, exist_ok=True)
    _tighten(path, OWNER_DIR)
    return path


def private_file(path: Path, text: str | None = None) -> Path:
    """Create `path` 0600 (with `text` when given, never replacing an existing file); tighten it if ours."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)
    except FileExistsError:
        _tighten(path, OWNER_FILE)
        return path
    with os.fdopen(fd, "w") as f:
        if text is not None:
            f.write(text)
    return path


def _tighten(path: Path, mode: int) -> None:
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o777 != mode:
        os.chmod(path, mode)
