"""Atomic file and directory writes, and reads that refuse what is not a regular file.

Writes: everything goes to a temporary sibling first (same filesystem), is flushed, and is
then moved into place with os.replace, which is atomic on POSIX: a reader never sees a
half-written result.

Temporaries carry their writer in their name: `.{target}.{host}.{pid}.{random}.partial`
(directories), `.{target}.{host}.{pid}.{random}.tmp` (files) and `.{target}.{host}.{pid}.old`
(the previous copy during an overwrite). An exception removes them; SIGKILL cannot, so the
next writer of the same target removes those of a writer that is gone (same host, its pid
no longer running): only that pattern, only beside its own target (remove_stale_temporaries).

Reads: open_regular / read_regular_bytes / require_regular refuse FIFOs, sockets, devices
and directories with a DataError naming the path: opening a FIFO for reading blocks until
some writer appears, which is a hang, not an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path

from msclr_core.errors import DataError

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "localhost"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{HOST}.{os.getpid()}."  # the pid at call time: right after a fork too


def _process_gone(pid: int) -> bool:
    """True only when no process `pid` runs on this host (a zombie counts as gone: it was
    killed and only waits for its parent to reap it)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OverflowError:  # beyond any pid this kernel hands out
        return True
    except PermissionError:  # another user's live process
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove the temporaries an interrupted writer of `target` left beside it; return them.

    Only names of this module's pattern for exactly this target, written on this host by a
    process that no longer runs. A live writer's temporaries (this process's included),
    other hosts' (a shared filesystem), other targets', symlinks and anything else are left
    alone. An `.old` copy is kept while `target` itself is missing: the writer died between
    its two renames, and that copy is the last complete version."""
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{re.escape(HOST)}\.([0-9]{{1,10}})\."
                         r"(?:[a-z0-9_]{8}\.(partial|tmp)|(old))")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or not _process_gone(int(m.group(1))):
            continue
        if m.group(3) and not os.path.lexists(target):
            continue
        try:
            if m.group(2) == "partial" or m.group(3):
                if not entry.is_dir(follow_symlinks=False):
                    continue
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            else:
                continue
        except OSError:  # another writer cleaned it first, or no permission: not ours to fight over
            continue
        removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a binary file beside `path`; on success it is fsynced and becomes `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary directory beside `target`; on success it becomes `target`.

    On any exception the temporary directory is removed and `target` is untouched.
    With overwrite=True an existing target is replaced (old copy removed after the swap).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (use overwrite)")
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".partial", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f"{_temp_prefix(target)}old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- reads

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISDIR, "a directory"))


def _refuse(mode: int, path, error, where: dict):
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), f"file type {stat.S_IFMT(mode):#o}")
    raise error(f"is {kind}, not a regular file: refused (only regular files are read; a FIFO or device "
                "could block forever)", path=path, **where)


def require_regular(path: str | os.PathLike, *, error=None, **where) -> os.stat_result:
    """os.stat(path) (symlinks followed) if it is a regular file; otherwise `error`
    (DataError by default; `where` adds sample= / field= / line=) naming the path and what
    it is. A missing or unreadable path raises the OSError, for the caller to word."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        _refuse(st.st_mode, path, error or DataError, where)
    return st


def open_regular(path: str | os.PathLike, *, error=None, **where):
    """Open a regular file for binary reading (see require_regular for what is refused).

    Checked before opening and again on the open descriptor, which is opened non-blocking
    so that a file swapped for a FIFO in between cannot block either."""
    require_regular(path, error=error, **where)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            _refuse(mode, path, error or DataError, where)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, *, error=None, **where) -> bytes:
    with open_regular(path, error=error, **where) as f:
        return f.read()
