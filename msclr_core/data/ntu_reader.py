"""Parsing raw NTU RGB+D `.skeleton` text: an optional C scanner, a vectorised numpy fast path
and a strict line parser, tried in that order.

All three return the same `RawSkeleton` (body records in file order), bit for bit; `ntu.py`
turns it into per-body arrays. The C scanner (`skeleton_scan.py`, compiled on first use when
a C compiler exists) is ~3x faster than the numpy path; both hand anything unusual on. File format (one value list per line):
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
3. only x, y, z are converted: each token's 16-byte window (two unaligned 64-bit words) ->
   an exact integer mantissa by SIMD-within-a-word digit joins, then one division by a
   power of ten, which is correctly rounded (Clinger's fast path), i.e. the same double as
   float(text). Tokens outside that path (exponent, mantissa >= 2^52, longer than 16 bytes)
   use float() one by one.
Byte-wide work is two vector passes and one np.flatnonzero; everything after runs on the ~3x
shorter sequence of non-digit bytes, mostly in work buffers kept between files.
Anything else (NaN, tabs, double spaces, bad counts, truncation) raises _NotFast and the
strict parser either reads the file or raises SkeletonFormatError with the 1-based line.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from msclr_core.errors import DataError

from . import skeleton_scan

NUM_JOINTS, INFO_FIELDS, JOINT_FIELDS = 25, 10, 12
_BODY_LINES = 2 + NUM_JOINTS  # info line, numJoint line, joint lines
_IPOW10 = 10 ** np.arange(19, dtype=np.int64)
_FPOW10 = np.append(10.0 ** np.arange(23), 1.0)  # exact doubles (10^22 the largest); [23]: no point
_FPOW10_NEXT = np.append(10.0 ** np.arange(1, 24), np.inf)  # 10^(frac+1); no point: int_part 0


def _token_masks() -> np.ndarray:
    """(2, 18) uint64: for a token of length n (17: longer) right-aligned in a 16-byte window,
    the bytes of the window's first and second word that belong to it (0xFF) or not (0)."""
    masks = np.zeros((18, 16), np.uint8)
    for n in range(17):
        masks[n, 16 - n:] = 0xFF
    return np.ascontiguousarray(masks.view(np.uint64).T)


_MASK = _token_masks()
_BYTE_RANKS = np.uint64(0x0706050403020100)
_ZERO = np.zeros(1, np.int64)

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
    """C scanner if compiled (skeleton_scan.py), else the numpy fast path; the strict parser
    for anything either cannot vouch for. All three give the same result, bit for bit."""
    scanned = skeleton_scan.scan(data)
    if scanned is not None:
        return RawSkeleton(*scanned)
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
    pos = np.flatnonzero(is_non_digit)
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


def _floats(data: bytes, s: np.ndarray, e: np.ndarray, has_exp: bool, w: _Work) -> np.ndarray:
    """float(token) for the byte ranges [s, e) of `data` (valid float literals, each ending at
    least 16 bytes into the data), exactly, without a Python loop over them.

    Each token is read as the 16-byte window that ends with it: two unaligned 64-bit words in
    one gather, masked to the token by its length. Digit values are combined in SIMD-within-a-
    word steps (byte pairs -> 2-digit numbers in 16-bit lanes -> 4 digits -> 8 -> 16) into A,
    in which the point counts as a digit 0. With `frac` digits after the point, A = int_part ·
    10^(frac+1) + fraction digits, so int_part = floor(A / 10^(frac+1)) and the mantissa is
    A - 9·int_part·10^frac: exact integers in float64 while A < 2^52. One division by 10^frac is
    then correctly rounded: the same double as float(text). Longer tokens, exponents and
    mantissas of 2^52 or more use float() one by one (rare)."""
    n = e - s
    if not len(n):
        return np.zeros(0)
    if e.min() < 16:
        raise _NotFast
    words = np.ndarray((len(data) - 7,), np.uint64, buffer=data, strides=(1,))  # a word at every byte
    idx = w("idx", (len(n), 2), np.int64)
    np.subtract(e, 16, out=idx[:, 0])
    np.subtract(e, 8, out=idx[:, 1])
    window = words[idx]  # (np.take is several times slower on this unaligned view)
    length = np.minimum(n, 17)
    inside = w("inside", (len(n), 2), np.uint64)
    np.take(_MASK[0], length, out=inside[:, 0])
    np.take(_MASK[1], length, out=inside[:, 1])
    chars = window.view(np.uint8)  # (N, 16) in memory order, token right-aligned
    digit = np.subtract(chars, 48, out=w("digit", chars.shape))
    digit *= np.less(digit, 10, out=w("is_digit", chars.shape, bool))
    digit.view(np.uint64)[...] &= inside
    flags = w("flags", chars.shape, bool)
    point = np.equal(chars, 46, out=flags).view(np.uint64)  # 0x01 in the point's byte
    point &= inside
    frac = _point_to_frac(point)
    minus = np.equal(chars, 45, out=flags).view(np.uint64)
    minus &= inside
    negative = (minus[:, 0] | minus[:, 1]) != 0
    # 16 digit bytes -> one number: each step joins neighbouring lanes (little-endian: the
    # lower lane holds the earlier, more significant digits)
    lanes = digit.view(np.uint16)
    for step, (wide, mult, shift) in enumerate(((np.uint32, 10, 8), (np.uint64, 100, 16), (None, 10_000, 32))):
        mask = (1 << shift) - 1
        joined = np.bitwise_and(lanes, mask, out=w(f"join{step}", lanes.shape, lanes.dtype))
        joined *= mult
        joined += np.right_shift(lanes, shift, out=w(f"high{step}", lanes.shape, lanes.dtype))
        lanes = joined.view(wide) if wide else joined
    big = lanes[:, 0].astype(np.float64)  # the first 8 digits, then the last 8: A
    big *= 1e8
    big += lanes[:, 1]
    scale = _FPOW10[frac]  # (frac 23 = no point: table entries 1 and inf)
    int_part = np.floor(big / _FPOW10_NEXT[frac])
    val = big - 9.0 * int_part * scale
    val /= scale
    val *= 1.0 - 2.0 * negative  # (boolean-mask assignment is 5x slower)
    slow = big > 2.0 ** 52
    slow |= n > 16
    if has_exp:
        exp = np.equal(chars | 32, 101, out=flags).view(np.uint64)
        exp &= inside
        slow |= (exp[:, 0] | exp[:, 1]) != 0
    for k in np.flatnonzero(slow):  # exponents, long mantissas: rare
        val[k] = float(data[s[k]:e[k]])
    return val


def _point_to_frac(point: np.ndarray) -> np.ndarray:
    """Digits after the point from the (N, 2) words with 0x01 in the point's byte (at most one),
    23 where there is no point. Multiplying a word by 0x0706050403020100 sums byte_i · (7 - i)
    into its top byte: the digits after a point in that word."""
    hi, lo = point[:, 0], point[:, 1]
    frac = np.right_shift(lo * _BYTE_RANKS, 56)
    frac += np.right_shift(hi * _BYTE_RANKS, 56)
    frac += np.where(hi != 0, 8, np.where(lo != 0, 0, 23)).astype(np.uint64)
    return frac.astype(np.intp)


def _read_fast(data: bytes) -> RawSkeleton:
    """Vectorised reader for well-formed files; raises _NotFast on anything else."""
    w = _WORK
    pos, kind, size = _non_digits(data, w)
    a = np.frombuffer(data, np.uint8)
    # Lines from the newlines among the non-digits; a line's values = its spaces + 1.
    is_space = np.equal(kind, SP, out=w("is_space", len(kind), bool))
    spaces = np.compress(is_space, pos)
    lf = np.flatnonzero(np.equal(kind, LF, out=is_space))  # (few: one index into kind per line)
    nl = pos[lf]
    starts = np.concatenate((_ZERO, nl + 1))
    ends = np.concatenate((nl - (kind[lf - 1] == CR), [size]))  # a CR ends the line's last value
    n_lines = len(starts)
    lo = np.searchsorted(spaces, starts)  # index in `spaces` of each line's first space
    per_line = np.empty_like(lo)  # values per line − 1 (single spaces)
    np.subtract(lo[1:], lo[:-1], out=per_line[:-1])
    per_line[-1] = len(spaces) - lo[-1]
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
    first = lo[joints]
    s, e = np.empty((len(joints), 3), np.int64), np.empty((len(joints), 3), np.int64)  # x, y, z of each line
    np.take(starts, joints, out=s[:, 0])
    for k in range(3):  # (three column copies: broadcasting over a last axis of 3 is slow)
        np.take(spaces, first + k, out=e[:, k])
    np.add(e[:, :2], 1, out=s[:, 1:])
    xyz = _floats(data, s.reshape(-1), e.reshape(-1), bool(np.equal(kind, EXP, out=is_space).any()), w)
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
