"""Cross-convention consistency of a multi-skeleton dataset.

MS-CLR treats the same clip written in two conventions as a positive pair. If one
convention is flipped on an axis, mirrored left/right, mis-scaled (wrong unit) or
time-shifted against another, those positives disagree and the encoder learns nothing
from them, silently. This check compares every pair of conventions on a seeded sample of
clips and names what is wrong, e.g. "ntu-rgb+d vs smplx_42: y axis flipped (corr -1.00)".

Per pair: the body parts both have (head, shoulders, wrists, hips, ankles, matched by joint
name: `body_parts`), person 1, in metres, relative to the per-frame centroid of those parts:
- corr: per-axis uncentred correlation (static pose and motion both count);
- left/right: positions split into s = (left + right)/√2 (plus the head) and d = (left −
  right)/√2. Flipping axis c negates s_c and d_c; swapped labels negate d only; a mirrored
  recording (swapped labels, one horizontal axis negated) negates d on two axes and s on
  one. The signs of the s- and d-correlations per axis tell these apart (`_orientation`);
- lag: the shift maximising the cross-correlation of clip-centred trajectories (motion);
  orientation, the residual per-axis correlation and rotation (Kabsch) are then judged at
  that lag, so a time shift reads as one fault;
- scale: RMS size of b over a. Only the sampled rows of each memory-mapped array are read.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import combinations

import numpy as np

from msclr_core.conventions import Convention, get_convention
from msclr_core.data.dataset import UNITS  # unit -> factor to metres; None ("px", 2-D): not comparable
from msclr_core.errors import ConfigError, DataError

AXES = "xyz"

# Body parts, each a list of candidate joint base names (name without its side marker,
# lower case, no "-"/"_"); the first candidate a convention has wins, several bases are
# averaged (berkeley_mhad_43 marks the hip by three markers). A middle part may be the
# midpoint of a left/right pair (COCO, MediaPipe and OpenPose have ears but no head joint).
MIDDLE_PARTS = {"head": [("head",), ("ear",), ("nose",)]}
SIDED_PARTS = {
    "shoulder": [("shoulder",), ("sho",), ("sho1", "sho2")],
    "wrist": [("wrist",), ("wri",)],
    "hip": [("hip",), ("hipb", "hipf", "hipl")],
    "ankle": [("ankle",), ("ank",)],
}
PARTS = ["head"] + [f"{s}_{p}" for p in SIDED_PARTS for s in "lr"]
MIN_SIDED = 3  # left/right pairs a pair of conventions must share (the d-part needs them)

# Side markers of the registry's naming schemes: NTU "L-hip", COCO "left_hip", MediaPipe
# "mouth_left", OpenPose "LHip", MeTRAbs "lhip" (only when conv.flip says it has a twin).
# (pattern, group of the side, group of the base name)
_SIDE = [(re.compile(r"^(L|R)-(.+)$"), 1, 2), (re.compile(r"^(left|right)_(.+)$"), 1, 2),
         (re.compile(r"^(.+)_(left|right)$"), 2, 1), (re.compile(r"^(L|R)([A-Z].*)$"), 1, 2),
         (re.compile(r"^(l|r)(.+)$"), 1, 2)]


@dataclass(frozen=True)
class Thresholds:
    """What counts as consistent; the "consistent:" values were measured on the synthetic
    benchmark (independent noise per convention) and the real-mocap fixtures."""

    min_corr: float = 0.5  # per-axis correlation after undoing detected faults (consistent: >= 0.96)
    max_scale: float = 1.5  # size ratio outside [1/max_scale, max_scale]: a unit fault (consistent: 0.97-1.03)
    max_rotation_deg: float = 15.0  # residual rotation after undoing flips (consistent synth/mocap: < 1.5)
    max_lag: int = 0  # frames; consistent data peaks at lag 0 (sub-frame refinement: |lag| < 0.03)
    lag_window: int = 8  # lags searched: -lag_window..lag_window (capped at T // 4)
    min_lr_margin: float = 0.1  # |left/right score difference| below this: a warning, not a verdict
    min_clips: int = 8  # fewer clips with person 1 in both: a warning


@dataclass
class PairReport:
    a: str
    b: str
    status: str  # "ok" | "fault" | "skipped"
    message: str  # "a vs b: ..." naming the fault(s), or "consistent"
    faults: list[dict] = field(default_factory=list)  # {"kind": scale|mirror|flip|uncorrelated|rotation|lag, "message"}
    warnings: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # body parts compared
    clips: int = 0
    frames: int = 0  # valid (clip, frame) pairs used
    corr: dict = field(default_factory=dict)  # axis -> correlation as stored
    corrected_corr: dict = field(default_factory=dict)  # axis -> correlation after undoing the detected faults
    scale: float | None = None  # size of b / size of a, both in metres
    flipped: list[str] = field(default_factory=list)  # axes whose sign disagrees
    mirrored: bool = False  # left/right swapped
    lr_same: float | None = None  # left/right agreement as labelled (0..1)
    lr_swapped: float | None = None  # ... with b's left and right swapped
    rotation_deg: float | None = None
    lag: int | None = None  # b[t + lag] matches a[t]: b is `lag` frames behind a
    lag_frac: float | None = None  # sub-frame refinement of lag (parabola through the peak)
    lag_corr: float | None = None  # cross-correlation at the best lag


@dataclass
class ConsistencyReport:
    ok: bool
    pairs: list[PairReport]
    sample: int  # clips compared per pair
    seed: int
    suspects: list[str] = field(default_factory=list)  # conventions at fault in every pair they are in
    seconds: float = 0.0

    def messages(self) -> list[str]:
        lines = [p.message for p in self.pairs if p.status == "fault"]
        lines += [f"{c} disagrees with every other convention: it is the likely culprit" for c in self.suspects]
        return lines

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (skipped pairs carry None, never NaN)."""
        return asdict(self)

    def raise_if_inconsistent(self) -> None:
        if not self.ok:
            raise DataError("inconsistent conventions: " + "; ".join(self.messages()), field="conventions")


# ----------------------------------------------------------------------------- joint maps

def _side_base(conv: Convention, j: int) -> tuple[str | None, str]:
    """("l" | "r" | None, base name) of joint j, e.g. "L-ankle" -> ("l", "ankle")."""
    name = conv.joint_names[j]
    if conv.flip[j] != j:  # a sided joint: its twin exists
        for pattern, side, base in _SIDE:
            m = pattern.match(name)
            if m:
                return m.group(side)[0].lower(), _plain(m.group(base))
    return None, _plain(name)


def _plain(name: str) -> str:
    return name.replace("-", "").replace("_", "").lower()


def part_weights(conv: Convention | str) -> tuple[np.ndarray, list[str]]:
    """(len(PARTS), V) matrix W with parts = W @ joints, and the parts found (others: zero rows)."""
    w, found = _part_table(get_convention(conv))
    return w.copy(), list(found)


@lru_cache(maxsize=None)
def _part_table(conv: Convention) -> tuple[np.ndarray, tuple[str, ...]]:
    keys = {}
    for j in range(conv.num_joints):
        keys.setdefault(_side_base(conv, j), []).append(j)
    w, found = np.zeros((len(PARTS), conv.num_joints)), []
    for p, part in enumerate(PARTS):
        side, base = (None, part) if part in MIDDLE_PARTS else (part[0], part[2:])
        for cand in (MIDDLE_PARTS if side is None else SIDED_PARTS)[base]:
            if side is None:  # a middle joint, or the midpoint of a left/right pair
                joints = [keys.get((None, c)) or (keys.get(("l", c), []) + keys.get(("r", c), [])) for c in cand]
            else:
                joints = [keys.get((side, c), []) for c in cand]
            if all(joints):
                for js in joints:
                    w[p, js] += 1.0 / (len(cand) * len(js))
                found.append(part)
                break
    return w, tuple(found)


def body_parts(a: Convention | str, b: Convention | str) -> list[str]:
    """The body parts both conventions have; ConfigError when too few to compare them."""
    a, b = get_convention(a), get_convention(b)
    common = [p for p in PARTS if p in _part_table(a)[1] and p in _part_table(b)[1]]
    sided = sorted({p[2:] for p in common if p != "head"})
    if len(sided) < MIN_SIDED:
        raise ConfigError(f"{a.name} vs {b.name}: only {len(sided)} corresponding left/right body parts "
                          f"({', '.join(sided) or 'none'}); the consistency check needs at least {MIN_SIDED} of "
                          f"{', '.join(SIDED_PARTS)} (plus the head) matched by joint name")
    return common


# ----------------------------------------------------------------------------- statistics

def _ucorr(a: np.ndarray, b: np.ndarray, axes) -> np.ndarray:
    """Uncentred correlation (cosine) summed over `axes`; 0 where either side is all zero."""
    num = (a * b).sum(axes)
    den = np.sqrt((a * a).sum(axes) * (b * b).sum(axes))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _split_lr(x: np.ndarray, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, T, P) root-relative parts -> s (middle + (l+r)/√2) and d ((l−r)/√2): an
    orthogonal change of basis, so inner products (correlations, sizes) are preserved."""
    mid = [i for i, p in enumerate(parts) if p == "head"]
    left = [i for i, p in enumerate(parts) if p.startswith("l_")]
    right = [parts.index("r_" + parts[i][2:]) for i in left]
    h = np.float32(np.sqrt(0.5))
    s = np.concatenate([x[..., mid], (x[..., left] + x[..., right]) * h], axis=-1)
    return s, (x[..., left] - x[..., right]) * h


def _orientation(sa, da, sb, db) -> tuple[np.ndarray, float, float, float]:
    """Axis signs and left/right swap (rho = -1) that best map a onto b, with the left/right
    agreement as labelled and swapped (0..1). Per axis, s-correlation + rho * d-correlation
    weighs both halves equally: whichever carries the signal decides the sign."""
    axes = (0, 2, 3)
    cs, cd = _ucorr(sa, sb, axes), _ucorr(da, db, axes)
    same, swapped = round(float(np.abs(cs + cd).mean() / 2), 4), round(float(np.abs(cs - cd).mean() / 2), 4)
    rho = -1.0 if swapped > same else 1.0
    return np.where(cs + rho * cd >= 0, 1.0, -1.0).astype(np.float32), rho, same, swapped


def _undo(sa, da, sign, rho) -> np.ndarray:
    """a's parts with the detected flips/swap undone, as one (n, 3, T, P) array."""
    return np.concatenate([sa * sign[:, None, None], da * (rho * sign)[:, None, None]], -1)


def _overlap(a: np.ndarray, b: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The frames where a[t] and b[t + lag] both exist."""
    T = a.shape[2]
    return (a[:, :, :T - lag], b[:, :, lag:]) if lag >= 0 else (a[:, :, -lag:], b[:, :, :T + lag])


def _lag(a: np.ndarray, b: np.ndarray, mask: np.ndarray, window: int) -> tuple[int, float, float]:
    """Best lag of b against a (b[t + lag] ~ a[t]) by pooled cross-correlation of the
    clip-centred trajectories; plus a sub-frame refinement and the peak correlation."""
    m = mask[:, None, :, None]
    cnt = np.maximum(m.sum(2, keepdims=True), 1)
    a = (a - (a * m).sum(2, keepdims=True) / cnt) * m  # remove each clip's mean pose: motion only
    b = (b - (b * m).sum(2, keepdims=True) / cnt) * m
    T = a.shape[2]
    window = max(1, min(window, T // 4))
    lags = np.arange(-window, window + 1)
    cc = np.array([float(_ucorr(*_overlap(a, b, int(k)), None)) for k in lags])
    i = int(np.argmax(cc))
    frac = float(lags[i])
    if 0 < i < len(cc) - 1:
        curv = cc[i - 1] - 2 * cc[i] + cc[i + 1]
        frac += 0.5 * (cc[i - 1] - cc[i + 1]) / curv if curv < 0 else 0.0
    return int(lags[i]), frac, float(cc[i])


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """Angle (degrees) and main axis of the best proper rotation R with R a ~ b (Kabsch)."""
    h = np.einsum("nitp,njtp->ij", a.astype(np.float64), b.astype(np.float64))
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return angle, AXES[int(np.argmax(np.abs(axis)))]


def _scale_text(ratio: float, a: str, b: str) -> str:
    """ratio = size of b / size of a, said from the bigger side: "scale x1000 (units?): ..."."""
    big, small, factor = (b, a, ratio) if ratio >= 1 else (a, b, 1 / ratio)
    power = np.log10(factor)
    text = f"x{10 ** round(power)}" if abs(power - round(power)) < 0.1 else f"x{factor:.3g}"
    units = " (units?)" if abs(power - round(power)) < 0.1 else ""  # a power of ten: almost surely units
    return f"scale {text}{units}: {big} is {text[1:]} times the size of {small}"


def compare_pair(pa: np.ndarray, pb: np.ndarray, a: str, b: str, parts: list[str],
                 thresholds: Thresholds = Thresholds()) -> PairReport:
    """Compare body-part trajectories pa, pb (n, 3, T, P: metres, person 1, `parts` order)."""
    th = thresholds
    mask = ((np.abs(pa).sum((1, 3)) > 0) & (np.abs(pb).sum((1, 3)) > 0)
            & np.isfinite(pa).all((1, 3)) & np.isfinite(pb).all((1, 3)))  # (n, T): both have person 1
    rep = PairReport(a, b, "ok", "", parts=list(parts), clips=int(mask.any(1).sum()), frames=int(mask.sum()))
    if rep.frames == 0:
        rep.status, rep.message = "skipped", f"{a} vs {b}: skipped, no frame where both have person 1"
        return rep
    if rep.clips < th.min_clips:
        rep.warnings.append(f"only {rep.clips} clips compared: weak evidence")
    m = mask[:, None, :, None].astype(np.float32)
    ra = (np.nan_to_num(pa) - np.nan_to_num(pa).mean(-1, keepdims=True)) * m  # root: the centroid of the parts
    rb = (np.nan_to_num(pb) - np.nan_to_num(pb).mean(-1, keepdims=True)) * m
    axes = (0, 2, 3)
    corr = _ucorr(ra, rb, axes)
    rep.corr = {c: round(float(v), 4) for c, v in zip(AXES, corr)}
    rep.scale = float(np.sqrt((rb * rb).sum() / max((ra * ra).sum(), 1e-30)))

    sa, da = _split_lr(ra, parts)
    sb, db = _split_lr(rb, parts)
    fb = np.concatenate([sb, db], -1)
    sign, rho, _, _ = _orientation(sa, da, sb, db)
    rep.lag, rep.lag_frac, rep.lag_corr = _lag(_undo(sa, da, sign, rho), fb, mask, th.lag_window)
    # Judge orientation and what is left at the best lag, so that a time shift is one fault
    # and does not also read as a weak axis (a shift lowers the lag-0 correlations).
    sa, sb = _overlap(sa, sb, rep.lag)
    da, db = _overlap(da, db, rep.lag)
    sign, rho, rep.lr_same, rep.lr_swapped = _orientation(sa, da, sb, db)
    rep.mirrored, rep.flipped = rho < 0, [c for c, s in zip(AXES, sign) if s < 0]
    if abs(rep.lr_swapped - rep.lr_same) < th.min_lr_margin:
        rep.warnings.append(f"weak left/right evidence (as labelled {rep.lr_same:.2f}, swapped "
                            f"{rep.lr_swapped:.2f}): too little asymmetric motion in the sample")
    fa, fb = _undo(sa, da, sign, rho), np.concatenate([sb, db], -1)
    rep.corrected_corr = {c: round(float(v), 4) for c, v in zip(AXES, _ucorr(fa, fb, axes))}
    rep.rotation_deg, rot_axis = _rotation_deg(fa, fb)
    rep.rotation_deg, rep.lag_frac = round(float(rep.rotation_deg), 2), round(float(rep.lag_frac), 3)
    faults = _faults(rep, rot_axis, th)
    rep.faults = [{"kind": k, "message": msg} for k, msg in faults]
    rep.status = "fault" if faults else "ok"
    rep.message = f"{a} vs {b}: " + ("; ".join(msg for _, msg in faults) if faults else "consistent")
    return rep


def _faults(rep: PairReport, rot_axis: str, th: Thresholds) -> list[tuple[str, str]]:
    """(kind, message) of everything wrong with a measured pair, most basic first."""
    a, b, faults = rep.a, rep.b, []
    if not 1 / th.max_scale <= rep.scale <= th.max_scale:
        faults.append(("scale", _scale_text(rep.scale, a, b)))
    horizontal = [c for c in rep.flipped if c != "y"]
    recording = rep.mirrored and len(rep.flipped) == 1 and horizontal  # a mirror image, sides relabelled
    agreement = f"agreement {rep.lr_swapped:.2f} swapped vs {rep.lr_same:.2f} as labelled"
    if recording:
        faults.append(("mirror", f"left/right mirrored (left/right joints swapped and {horizontal[0]} negated, "
                                 f"as in a mirrored recording; {agreement})"))
    elif rep.mirrored:
        faults.append(("mirror", f"left/right mirrored (left/right labels swapped; {agreement})"))
    if not recording:
        faults += [("flip", f"{c} axis flipped (corr {rep.corr[c]:+.2f})") for c in rep.flipped]
        if len(rep.flipped) == 2:  # two flips make a proper rotation: a common frame mix-up
            other = next(c for c in AXES if c not in rep.flipped)
            hint = ", e.g. a y-down camera frame against a y-up one" if other == "z" else ""
            faults[-1] = ("flip", f"{faults[-1][1]} (with {rep.flipped[0]}: a 180 deg rotation about {other}{hint})")
    faults += [("uncorrelated", f"{c} axis uncorrelated (corr {v:+.2f} after undoing flips): rotated, noisy "
                                f"or wrongly matched joints") for c, v in rep.corrected_corr.items() if v < th.min_corr]
    if rep.rotation_deg > th.max_rotation_deg:
        faults.append(("rotation", f"rotated by {rep.rotation_deg:.0f} deg (mostly about {rot_axis})"))
    if abs(rep.lag) > th.max_lag:
        late, early = (b, a) if rep.lag > 0 else (a, b)
        faults.append(("lag", f"time-shifted by {abs(rep.lag)} frame{'s' * (abs(rep.lag) != 1)} "
                              f"({late} behind {early})"))
    return faults


# ----------------------------------------------------------------------------- entry points

def _person(rows: np.ndarray, m: int, factor: float, w: np.ndarray) -> np.ndarray:
    """(n, C, T, V, M) rows -> body parts (n, 3, T, P) of person m, in metres."""
    # einsum, not matmul: a threaded BLAS on a busy machine spins far longer than this small
    # product takes (measured: 10x slower checks under load)
    return np.einsum("nctv,pv->nctp", rows[..., m], (w * factor).astype(np.float32))


def check_consistency(arrays, units=None, *, sample: int = 128, seed: int = 0, indices=None,
                      thresholds: Thresholds = Thresholds(), source: str = "arrays") -> ConsistencyReport:
    """Compare every pair of conventions in `arrays` (convention -> N×C×T×V×M, numpy or
    memmap, same sample order) on `sample` seeded clips drawn from `indices` (default: all).
    `units`: convention -> "m" | "mm" (default: every array in metres)."""
    t0 = time.perf_counter()
    names = list(arrays)
    if len(names) < 2:  # nothing to compare
        return ConsistencyReport(ok=True, pairs=[], sample=0, seed=seed)
    units = dict(units or {})
    shapes = {c: np.shape(arrays[c]) for c in names}
    for c in names:  # one sample order for every convention: same N (the dataset format's rule)
        if len(shapes[c]) != 5 or shapes[c][0] != shapes[names[0]][0]:
            raise DataError(f"shape {shapes[c]}, expected N×C×T×V×M with the N of {names[0]} {shapes[names[0]]}",
                            path=source, field=f"conventions.{c}")
    pool = np.arange(shapes[names[0]][0]) if indices is None else np.asarray(indices, np.int64)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(pool, min(int(sample), len(pool)), replace=False)) if len(pool) else pool

    parts, skip = {}, {}
    for c in names:
        conv, unit = get_convention(c), units.get(c, "m")
        if shapes[c][1] != 3 or conv.dims != 3 or UNITS.get(unit) is None:
            skip[c] = f"{c} is {conv.dims}-D / unit {unit!r}: not comparable in metres"
            continue
        w, _ = _part_table(conv)
        rows = np.asarray(arrays[c][idx], np.float32)  # only the sampled rows of a memmap are read
        parts[c] = [_person(rows, m, UNITS[unit], w) for m in range(min(2, shapes[c][4]))]

    pairs = []
    for a, b in combinations(names, 2):
        why = skip.get(a) or skip.get(b)
        if not why and shapes[a][2] != shapes[b][2]:
            why = f"different frame counts ({shapes[a][2]} vs {shapes[b][2]}): resize both to compare"
        if why:
            pairs.append(PairReport(a, b, "skipped", f"{a} vs {b}: skipped, {why}"))
            continue
        common = body_parts(a, b)
        sel = [PARTS.index(p) for p in common]
        pa, pb = parts[a][0][..., sel], parts[b][0][..., sel]
        if len(parts[b]) > 1:  # person order can differ between sources: b may use its person 2
            pb = _closer_person(pa, pb, parts[b][1][..., sel])
        pairs.append(compare_pair(pa, pb, a, b, common, thresholds))

    bad = [p for p in pairs if p.status == "fault"]
    suspects = [c for c in names if len(names) > 2 and bad and all(c in (p.a, p.b) for p in bad)
                and all(p.status == "fault" for p in pairs if c in (p.a, p.b) and p.status != "skipped")]
    return ConsistencyReport(ok=not bad, pairs=pairs, sample=len(idx), seed=seed, suspects=suspects,
                             seconds=round(time.perf_counter() - t0, 4))


def _closer_person(pa: np.ndarray, pb0: np.ndarray, pb1: np.ndarray) -> np.ndarray:
    """Per clip, b's person 1 or person 2, whichever is closer in pose to a's person 1 (two
    sources may order the persons of an interaction differently)."""
    def dist(x, y):
        x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        return np.sqrt(((x - y) ** 2).sum((1, 3))).mean(1)

    present = np.abs(pb1).sum((1, 2, 3)) > 0
    swap = present & (dist(pa, pb1) < dist(pa, pb0))
    return np.where(swap[:, None, None, None], pb1, pb0)


def check_dataset_consistency(dataset, *, sample: int = 128, seed: int = 0, protocol: str | None = None,
                              part: str = "train", thresholds: Thresholds = Thresholds()) -> ConsistencyReport:
    """`check_consistency` on a dataset directory (or a loaded Dataset): its memory-mapped
    arrays and manifest units; clips drawn from `protocol`/`part` when given, else all."""
    from msclr_core.data.dataset import Dataset, load_dataset

    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    arrays = {c: ds.array(c) for c in ds.conventions}
    indices = ds.split_indices(protocol, part) if protocol else None
    return check_consistency(arrays, {c: i.unit for c, i in ds.conventions.items()}, sample=sample, seed=seed,
                             indices=indices, thresholds=thresholds, source=str(ds.root / "manifest.json"))
