"""Optional C scanner for NTU `.skeleton` files (resources/skeleton_scan.c).

The numpy fast path in `ntu_reader.py` reads ~15-20x faster than the official reader; one C
pass over the bytes is several times faster again. The C file is compiled on first use with
the system compiler (`cc`, or $CC) into a per-user cache and loaded with ctypes, so
installing msclr needs no build step. Without a compiler, or with MSCLR_NO_C_SCANNER=1,
`scan` returns None and the numpy path does the same job with the same results.

The cache is $MSCLR_CACHE_DIR, else ~/.cache/msclr; the library's name carries a hash of
the source, so an edited scanner is rebuilt and a stale one never loaded. A cache directory
or library that another user could have written is never loaded from. The build writes a
temporary file and renames it: processes starting together never load a half-written one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("resources") / "skeleton_scan.c"
NUM_JOINTS = 25
_MIN_RECORD_BYTES = 500  # a body record: 27 lines, 25 of them >= 23 bytes (12 values)
_lock = threading.Lock()
_state: dict = {}  # "fn": the ctypes function or None, "why": why it is None


def scanner():
    """The compiled C function, or None (see `unavailable_reason`)."""
    if "fn" not in _state:
        with _lock:
            if "fn" not in _state:
                _state["fn"], _state["why"] = _load()
    return _state["fn"]


def unavailable_reason() -> str:
    scanner()
    return _state["why"]


def _load():
    if os.environ.get("MSCLR_NO_C_SCANNER"):
        return None, "disabled by MSCLR_NO_C_SCANNER"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler on PATH (cc, gcc or clang)"
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + f"{sys.platform}-{platform.machine()}-{cc}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("MSCLR_CACHE_DIR") or Path.home() / ".cache" / "msclr")
    lib = cache / f"skeleton_scan-{tag}.so"
    if not lib.exists():
        tmp = None
        try:
            cache.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache, prefix=".skeleton_scan-", suffix=".so.partial")
            os.close(fd)
            subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE)], check=True, capture_output=True,
                           timeout=300)
            os.replace(tmp, lib)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            return None, f"building {SOURCE.name} with {cc} failed: {err} {detail.decode(errors='replace')[:500]}"
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)
    unsafe = _unsafe(cache) or _unsafe(lib)
    if unsafe:
        return None, unsafe
    try:
        fn = ctypes.CDLL(str(lib)).msclr_scan_skeleton
    except (OSError, AttributeError) as err:
        return None, f"loading {lib} failed: {err}"
    pointer = ctypes.c_void_p
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_long, pointer, pointer, pointer, pointer]
    return fn, ""


def _unsafe(path: Path) -> str:
    """Why loading code from `path` is unsafe ("" if it is not): another user could have put a
    library there if it is not ours or is writable by group or others."""
    if not hasattr(os, "getuid"):
        return ""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        return f"not loading the C scanner: {path} is not owned by this user or is writable by others"
    return ""


def scan(data: bytes):
    """(frame_of, ids, xyz (R, 25, 3) float64, n_frames) of a well-formed file, or None when
    the scanner is unavailable or cannot vouch for the file (the caller's slower paths decide)."""
    fn = scanner()
    if fn is None:
        return None
    capacity = len(data) // _MIN_RECORD_BYTES + 1
    frame_of, ids = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
    xyz, n_frames = np.empty((capacity, NUM_JOINTS, 3)), np.zeros(1, np.int64)
    records = fn(data, len(data), capacity, frame_of.ctypes.data, ids.ctypes.data, xyz.ctypes.data,
                 n_frames.ctypes.data)
    if records < 0:
        return None
    return frame_of[:records], ids[:records], xyz[:records], int(n_frames[0])
