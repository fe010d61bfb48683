"""Parsing raw NTU RGB+D `.skeleton` text: a vectorised fast path and a strict line parser.

Both return the same `RawSkeleton` (body records in file order), bit for bit; `ntu.py` turns
it into per-body arrays. File format (one value list per line):
    numFrame
    per frame:  numBody
      per body: bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence
                handRightState isResticted leanX leanY trackingState        (10 values)
                numJoint                                                     (25)
                25 × "x y z depthX depthY colorX colorY oriW oriX oriY oriZ trackingState"

Fast path (`_read_fast`), all numpy over the raw bytes, no per-line Python:
1. the syntax of EVERY value (a Python float literal: sign, digits, one point, one exponent)
   and the separators are checked on the sequence of non-digit bytes, so the fast path
   only accepts files the strict parser accepts, and reads them identically;
2. the line structure comes from newline/space positions (a line's number of values tells
   its kind), counts and body IDs are decoded as exact int64 (IDs have 17 digits);
3. only x, y, z are converted: digits -> an exact integer mantissa, then one division by a
   power of ten, which is correctly rounded (Clinger's fast path), i.e. the same double as
   float(text). Tokens outside that path (exponent, mantissa >= 2^52) use float() one by one.
Byte-wide work is two vector passes and one np.flatnonzero (in blocks); everything after
runs on the ~3x shorter sequence of non-digit bytes, in work buffers kept between files.
Anything else (NaN, tabs, double spaces, bad counts, truncation) raises _NotFast and the
strict parser either reads the file or raises SkeletonFormatError with the 1-based line.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from msclr_core.errors import DataError

NUM_JOINTS, INFO_FIELDS, JOINT_FIELDS = 25, 10, 12
_BODY_LINES = 2 + NUM_JOINTS  # info line, numJoint line, joint lines
_IPOW10 = 10 ** np.arange(19, dtype=np.int64)
_FPOW10 = 10.0 ** np.arange(23)  # exact doubles (10^22 is the largest exact power)
_MAX_TOKEN = 22  # longer xyz tokens go to the strict parser
_ZERO = np.zeros(1, np.int64)
_SIGN = np.array([1.0, -1.0])

# Byte classes for the fast path: digits are 0 so np.flatnonzero finds everything else. The
# table also reads bytes with bit 7 set (the byte before is a non-digit too): class | 64.
SP, LF, CR, DOT, EXP, SGN, BAD = range(1, 8)
_ADJ = 64
_CLASS = bytearray([BAD]) * 256
for _chars, _code in ((b"0123456789", 0), (b" ", SP), (b"\n", LF), (b"\r", CR), (b".", DOT), (b"eE", EXP),
                      (b"+-", SGN)):
    for _c in _chars:
        _CLASS[_c], _CLASS[_c | 128] = _code, _code | _ADJ
_CLASS = bytes(_CLASS)


def _pair_table() -> np.ndarray:
    """Which (class, next non-digit class, adjacent?) pairs can occur in a file of float literals
    ([sign] (digits [. digits] | . digits) [e [sign] digits]) split by single spaces and LF or
    CRLF. Index: class << 3 | next class | 64 if no digit lies between them."""
    ok = np.zeros(128, bool)
    adjacent = {(CR, LF), (SP, SGN), (LF, SGN), (SP, DOT), (LF, DOT), (SGN, DOT), (DOT, EXP), (DOT, SP),
                (DOT, LF), (DOT, CR), (EXP, SGN)}
    for a in range(1, 7):
        for b in range(1, 7):
            # digits between: one token (or a digit-only one between separators) as long as a
            # sign only follows a separator or e, and a token has at most one point and one e,
            # the point first; a CR is always directly followed by LF
            ok[a << 3 | b] = b != SGN and a != CR and (a, b) not in {(DOT, DOT), (EXP, EXP), (EXP, DOT)}
            ok[a << 3 | b | 64] = (a, b) in adjacent
    return ok


_PAIR_OK = bytes(_pair_table().astype(np.uint8)) + bytes(128)  # a 256-byte translate table


@dataclass
class RawSkeleton:
    frame_of: np.ndarray  # (R,) int64, frame of each body record
    ids: np.ndarray  # (R,) int64 bodyID of each record
    xyz: np.ndarray  # (R, 25, 3) float64, exactly float(text)
    n_frames: int


class SkeletonFormatError(DataError):
    """A .skeleton file is malformed; `line` is 1-based."""

    def __init__(self, message, *, path=None, sample=None, line=None, field=None):
        super().__init__(message, path=path, sample=sample, line=line, field=field)
        self.detail = message

    def __reduce__(self):  # keep path/line/field when sent back from a worker process
        return (_rebuild_error, (self.detail, self.path, self.sample, self.line, self.field))


def _rebuild_error(detail, path, sample, line, field):
    return SkeletonFormatError(detail, path=path, sample=sample, line=line, field=field)


class _NotFast(Exception):
    """The fast path cannot vouch for this file; the strict parser decides."""


def parse_skeleton(path: str, data: bytes) -> RawSkeleton:
    try:
        return _read_fast(data)
    except _NotFast:
        return _read_strict(path, data)


# ----------------------------------------------------------------------------- fast path

class _Work(threading.local):
    """Work buffers kept from file to file (one set per thread). A 400 KB file needs ~5 MB
    of temporaries; allocated afresh, glibc returns them to the OS after every file and the
    next file page-faults them back, which took longer than the parsing (3-5x on the 2-core
    dev machine). Buffers grow to the largest file read and stay (a few MB)."""

    def __init__(self):
        self.bufs: dict[str, np.ndarray] = {}

    def __call__(self, name: str, shape, dtype=np.uint8) -> np.ndarray:
        size = math.prod(shape) if isinstance(shape, tuple) else shape
        buf = self.bufs.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self.bufs[name] = np.empty(size + size // 4, dtype)
        return buf[:size].reshape(shape)

    def select(self, name: str, mask: np.ndarray, values: np.ndarray | None = None,
               block: int = 1 << 16) -> np.ndarray:
        """values[mask] (positions when values is None) into a work buffer, one block at a
        time: a single np.flatnonzero / np.compress would allocate 8 bytes per hit (MBs)."""
        out = self(name, int(np.count_nonzero(mask)), np.int64 if values is None else values.dtype)
        k = 0
        for lo in range(0, len(mask), block):
            hits = np.flatnonzero(mask[lo:lo + block])
            if values is None:
                np.add(hits, lo, out=out[k:k + len(hits)])
            else:
                np.take(values[lo:lo + block], hits, out=out[k:k + len(hits)])
            k += len(hits)
        return out


_WORK = _Work()


def _non_digits(data: bytes, w: _Work) -> tuple[np.ndarray, np.ndarray, int]:
    """Positions and classes of the non-digit bytes (without a final LF / CRLF) and the
    length they cover, or _NotFast unless every value is a float literal, values are split by
    single spaces and lines end in LF or CRLF (no empty lines, no stray characters).

    Digits never break the syntax of these tokens, so the rules only look at each non-digit
    byte and the next one (are they adjacent, or do digits lie between?)."""
    if not data or data.endswith(b"\r") or len(data) >= 2**31 or not data.isascii():
        raise _NotFast  # (non-ASCII: bit 7 carries the adjacency flag below)
    size = len(data) - (2 if data.endswith(b"\r\n") else 1 if data.endswith(b"\n") else 0)
    if size < 1:
        raise _NotFast
    a = np.frombuffer(data, np.uint8, count=size)
    is_non_digit = np.greater_equal(np.subtract(a, 48, out=w("digit", size)), 10, out=w("is_non_digit", size, bool))
    pos = w.select("pos", is_non_digit)
    if not len(pos):
        raise _NotFast  # one number, no newline: not a file of frames
    # Each byte with bit 7 set when the byte before is a non-digit (a newline before the text):
    # one gather then gives the class of every non-digit and whether it follows the previous one.
    flagged = w("flagged", size)
    flagged[0] = a[0] | 128
    np.multiply(is_non_digit.view(np.uint8)[:-1], 128, out=flagged[1:])
    flagged[1:] |= a[1:]
    n = len(pos) + 2  # the non-digits between a newline before and one after the text
    raw = w("raw", n)
    raw[0], raw[-1] = 10, 10 | 128 * bool(is_non_digit[-1])
    np.take(flagged, pos, out=raw[1:-1])
    classes = raw.tobytes().translate(_CLASS)
    if BAD in classes or BAD | _ADJ in classes:
        raise _NotFast  # letters, NaN, tabs: the strict parser decides
    code = np.frombuffer(classes, np.uint8)  # class | 64 if adjacent to the previous non-digit
    kind = np.bitwise_and(code, 7, out=w("kind", n))
    adjacent = np.greater_equal(code, _ADJ, out=w("adjacent", n, bool))
    pair = np.multiply(kind[:-1], 8, out=w("pair", n - 1))  # (uint8 shifts are not vectorised)
    pair |= code[1:]  # class, next class, 64 if adjacent
    if 0 in pair.tobytes().translate(_PAIR_OK):  # (bytes.translate: a faster table lookup than np.take)
        raise _NotFast
    bad = np.equal(kind[1:-1], DOT, out=w("bad", n - 2, bool))
    bad &= adjacent[1:-1]
    bad &= adjacent[2:]
    if bad.any():
        raise _NotFast  # a point with no digit beside it
    np.equal(pair[:-1], EXP << 3 | SGN | 64, out=bad)
    bad &= np.greater(kind[2:], CR, out=w("bad2", n - 2, bool))
    if bad.any():
        raise _NotFast  # after an exponent sign: digits, then the end of the token
    return pos, kind[1:-1], size


def _ints(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Exact int64 values of the all-digit byte ranges [s, e)."""
    n = e - s
    if not len(n):
        return np.zeros(0, np.int64)
    if n.min() < 1 or n.max() > 18:
        raise _NotFast
    off = np.cumsum(n) - n
    d = a[np.repeat(s - off, n) + np.arange(int(n.sum()))].astype(np.int64) - 48
    if d.min() < 0 or d.max() > 9:
        raise _NotFast
    place = np.repeat(off + n - 1, n) - np.arange(len(d))  # n-1 … 0 within each range
    return np.add.reduceat(d * _IPOW10[place], off)


def _floats(a: np.ndarray, s: np.ndarray, e: np.ndarray, has_exp: bool, w: _Work) -> np.ndarray:
    """float(token) for the byte ranges [s, e) of `a` (valid float literals, each at least
    _MAX_TOKEN bytes from the start), exactly, without a Python loop over them.

    The tokens are laid out right-aligned as the columns of a (width, N) byte matrix (row j =
    the j-th byte of each window, so every operation runs along N). Digit values times
    10^(width-1-j) sum to A, in which the point counts as a digit 0. With `frac` digits after
    the point, A = int_part·10^(frac+1) + fraction digits, so int_part = floor(A / 10^(frac+1))
    and the mantissa is A - 9·int_part·10^frac: all exact integers while A < 2^52. One division
    by 10^frac is then correctly rounded: the same double as float(text)."""
    n = e - s
    width = int(n.max()) if len(n) else 1
    if width > _MAX_TOKEN or (len(e) and e.min() < width):
        raise _NotFast
    shape, col = (width, len(n)), np.arange(width, dtype=np.uint8)[:, None]
    chars = w("chars", shape)
    chars[...] = sliding_window_view(a, width)[e - width].T
    inside = np.greater_equal(col, width - n, out=w("inside", shape, bool))
    point = np.equal(chars, 46, out=w("point", shape, bool))
    point &= inside
    has_point = point.any(axis=0)
    frac = width - 1 - np.multiply(point, col, out=w("point_col", shape)).sum(axis=0, dtype=np.uint8)
    digit = np.subtract(chars, 48, out=w("digit", shape))
    mask = np.less(digit, 10, out=w("mask", shape, bool))
    mask &= inside
    digit *= mask
    value = w("value", shape, np.float64)
    value[...] = digit
    big = _FPOW10[width - 1::-1] @ value  # A
    scale = _FPOW10[frac]
    int_part = np.floor(big / np.where(has_point, scale * 10.0, np.inf))  # 0 without a point
    val = (big - 9.0 * int_part * scale) / np.where(has_point, scale, 1.0)
    val *= _SIGN[(a[s] == 45).view(np.uint8)]  # -1.0 for a leading minus
    slow = big > 2.0 ** 52
    if has_exp:
        slow |= (np.equal(chars | 32, 101, out=point) & inside).any(axis=0)
    for k in np.flatnonzero(slow):  # exponents, long mantissas: rare
        val[k] = float(a[s[k]:e[k]].tobytes())
    return val


def _read_fast(data: bytes) -> RawSkeleton:
    """Vectorised reader for well-formed files; raises _NotFast on anything else."""
    w = _WORK
    pos, kind, size = _non_digits(data, w)
    a = np.frombuffer(data, np.uint8)
    # Lines from the newlines among the non-digits; a line's values = its spaces + 1.
    is_space = np.equal(kind, SP, out=w("is_space", len(kind), bool))
    spaces = w.select("spaces", is_space, pos)
    lf = np.flatnonzero(np.equal(kind, LF, out=is_space))  # (few: one index into kind per line)
    nl = pos[lf]
    starts = np.concatenate((_ZERO, nl + 1))
    ends = np.concatenate((nl - (kind[lf - 1] == CR), [size]))  # a CR ends the line's last value
    n_lines = len(starts)
    lo = np.searchsorted(spaces, starts)  # index in `spaces` of each line's first space
    per_line = np.diff(lo, append=len(spaces))  # values per line − 1 (single spaces)
    # Line kinds follow from the number of values: 10 = body info, then numJoint, 25 joint lines.
    info = np.flatnonzero(per_line == INFO_FIELDS - 1)
    joints = (info[:, None] + 2 + np.arange(NUM_JOINTS)).ravel()
    if len(info) and joints[-1] >= n_lines:
        raise _NotFast  # truncated
    expected = np.zeros(n_lines, np.int64)
    expected[joints] = JOINT_FIELDS - 1
    expected[info] = INFO_FIELDS - 1
    body = np.zeros(n_lines, bool)
    body[info], body[info + 1], body[joints] = True, True, True
    if not np.array_equal(per_line, expected) or body.sum() != len(info) * _BODY_LINES:
        raise _NotFast
    joint_count = starts[info + 1]  # "25" exactly (other spellings, e.g. "025": strict parser)
    if not ((ends[info + 1] - joint_count == 2).all() and (a[joint_count] == 50).all()
            and (a[joint_count + 1] == 53).all()):
        raise _NotFast
    # The other lines are numFrame and one numBody per frame, at the positions their counts imply.
    frame_lines = np.flatnonzero(~body)
    counts = _ints(a, starts[frame_lines], ends[frame_lines])
    if not len(counts) or counts[0] != len(counts) - 1:
        raise _NotFast
    n_bodies = counts[1:]
    if n_bodies.sum() != len(info) or (len(n_bodies) and n_bodies.max() > len(info)):
        raise _NotFast  # (the max bound keeps the position arithmetic below from overflowing)
    at = 1 + np.arange(len(n_bodies)) + _BODY_LINES * (np.cumsum(n_bodies) - n_bodies)
    if not np.array_equal(frame_lines[1:], at):
        raise _NotFast
    frame_of = np.repeat(np.arange(len(n_bodies)), n_bodies)
    ids = _ints(a, starts[info], spaces[lo[info]])
    # x, y, z = the first three values of each joint line
    sp = spaces[lo[joints][:, None] + np.arange(3)]  # (joints, 3): the spaces after x, y, z
    s = np.column_stack((starts[joints], sp[:, :2] + 1)).ravel()
    xyz = _floats(a, s, sp.ravel(), bool(np.equal(kind, EXP, out=is_space).any()), w)
    return RawSkeleton(frame_of, ids, xyz.reshape(len(info), NUM_JOINTS, 3), int(counts[0]))


# ----------------------------------------------------------------------------- strict path

def _read_strict(path: str, data: bytes) -> RawSkeleton:
    """Line-by-line parser: slow, general whitespace, exact diagnostics."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as err:
        raise SkeletonFormatError("non-ASCII byte", path=path, line=data[:err.start].count(b"\n") + 1) from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    li = 0

    def take(field, n):
        nonlocal li
        if li >= len(lines):
            raise SkeletonFormatError(f"file ends early, expected {field}", path=path, line=li + 1, field=field)
        toks = lines[li].split()
        li += 1
        if len(toks) != n:
            raise SkeletonFormatError(f"expected {n} value(s), got {len(toks)}", path=path, line=li, field=field)
        for t in toks:
            try:
                float(t)
            except ValueError:
                raise SkeletonFormatError(f"non-numeric token {t!r}", path=path, line=li, field=field) from None
        return toks

    def count(field):
        tok = take(field, 1)[0]
        if not tok.isdigit():
            raise SkeletonFormatError(f"expected a count >= 0, got {tok!r}", path=path, line=li, field=field)
        return int(tok)

    n_frames, frame_of, ids, xyz = count("numFrame"), [], [], []
    for f in range(n_frames):
        for _ in range(count("numBody")):
            body_id = take("bodyInfo", INFO_FIELDS)[0]
            if not body_id.isdigit() or len(body_id) > 18:
                raise SkeletonFormatError(f"bodyID must be an integer below 10^18, got {body_id!r}", path=path,
                                          line=li, field="bodyID")
            nj = count("numJoint")
            if nj != NUM_JOINTS:
                raise SkeletonFormatError(f"expected {NUM_JOINTS} joints, got {nj}", path=path, line=li, field="numJoint")
            xyz.append([[float(v) for v in take("joint", JOINT_FIELDS)[:3]] for _ in range(NUM_JOINTS)])
            frame_of.append(f)
            ids.append(int(body_id))
    if li < len(lines):
        raise SkeletonFormatError("unexpected data after the last frame", path=path, line=li + 1)
    return RawSkeleton(np.asarray(frame_of, np.int64), np.asarray(ids, np.int64),
                       np.asarray(xyz, np.float64).reshape(-1, NUM_JOINTS, 3), n_frames)
