"""The built-in synthetic multi-skeleton benchmark: the project's default dataset.

One procedural kinematic human per person (`synth_body.py`) performs one of 17 actions
(left/right variants, whole-body actions, three two-person interactions), seen by one of
several cameras. Every clip is then rendered into several skeleton conventions, each with
its own joint placement computed from dense anatomical landmarks (a Kinect hip is not an
SMPL hip), its own estimator-like noise (Kinect: per-frame jitter, strongest in depth,
and hand tracking glitches; pose estimators: per-joint bias, drift, jitter, scale error,
repeated frames; marker mocap: small jitter) and its native unit (conv.unit).

Output layout per convention: float32 N×3×T×V×2, y up, camera frame (x, y, z = depth),
relative to person 1's convention centre joint averaged over the clip (so jumps, steps
and the two persons' relative position stay visible). A single-person clip has an
all-zero person 2, as in NTU. "left"/"right" in class names mean the actor's own side.
Splits: `xsub` (NTU-120 xsub training subject IDs vs the rest) and `xview` (camera 1
is the test camera); `xsub_val` / `xview_val` add a subject-disjoint `val` part taken out of
train, for choosing settings without touching the test part. Only 3-D conventions can be
rendered (openpose_25 is 2-D pixels).

Difficulty (seed 0, 10,000 clips, chance 1/17 = 5.9 %): a closed-form one-vs-all ridge
classifier on all 7,500 raw ntu-rgb+d coordinates (`ridge_top1`, l2=1) reaches 73.6 %
top-1 on xsub and 62.9 % on xview; a standardised multinomial logistic regression
79.1 % on xsub: learnable, but not solved by a linear model. The difficulty comes from
per-clip timing (onset, duration, speed), per-joint style gains, body orientation
(±60°) and camera jitter, distractor gestures in half the clips, and the sensor noise.
Speed: about 40 s of one CPU core for 10,000 clips in the four default conventions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from msclr_core.data import synth_body as body
from msclr_core.errors import ConfigError

DEFAULT_CONVENTIONS = ("ntu-rgb+d", "smplx_42", "smpl_24", "h36m_17")
CLASSES = body.CLASSES
# NTU-120 cross-subject training subject IDs; subjects 1..S outside this set are test subjects.
XSUB_TRAIN = frozenset((1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38, 45, 46,
                        47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85,
                        86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103))
_CHUNK = 500  # clips rendered at once (bounds memory; fixed, so results do not depend on it)

# Joint placement per convention: "joint=landmark*weight+landmark*weight" (weights sum to 1;
# a bare landmark means weight 1). Only middle and left joints are listed: a right joint
# takes its twin's recipe (conv.flip) with mirrored landmarks.
RECIPES = {
    "ntu-rgb+d": """spine-base=pelvis*.6+l4*.4 spine-mid=t12*.7+thor_c*.3 neck=c7*.4+jugular*.3+neck_mid*.3
        head=head_c*.7+nose*.3 L-shoulder=lsho*.7+lacrom*.3 L-elbow=lelb*.8+lelb_lat*.2 L-wrist=lwri
        L-hand=lhand_c*.6+lmcp3*.4 L-hip=lhip*.55+lcrest*.15+ltroch*.3 L-knee=lkne*.8+lknee_lat*.2
        L-ankle=lank*.8+lmall*.2 L-foot=lfootmid*.6+lball*.4 spine-shoulder=jugular*.4+c7*.4+t3*.2
        L-hand-tip=lmid_tip*.6+lindex_tip*.4 L-thumb=lthumb_tip""",
    "kinectv2_25": """spinebase=pelvis*.7+l4*.3 spinemid=t12*.6+thor_c*.4 neck=c7*.5+neck_mid*.5
        head=head_c*.6+nose*.2+htop*.2 lsho=lsho*.8+lacrom*.2 lelb=lelb lwri=lwri lhan=lhand_c
        lhip=lhip*.6+ltroch*.4 lkne=lkne lank=lank lfoo=lfootmid*.5+lball*.5
        spineshoulder=jugular*.5+c7*.5 lhandtip=lmid_tip lthu=lthumb_tip""",
    "smpl_24": """pelv=pelvis*.8+l4*.2 lhip=lhip*.9+pelvis*.1 spi1=l4*.6+l1*.4 lkne=lkne spi2=l1*.5+t12*.5
        lank=lank spi3=thor_c*.7+c7*.3 ltoe=lball neck=c7*.5+jugular*.5 lcla=lsc*.6+lacrom*.4
        head=c1*.5+head_c*.5 lsho=lsho lelb=lelb lwri=lwri lhan=lmcp3*.7+lhand_c*.3""",
    "smplx_42": """pelv=pelvis*.8+l4*.2 lhip=lhip*.9+pelvis*.1 bell=l4*.6+l1*.4 lkne=lkne spin=l1*.5+t12*.5
        lank=lank thor=thor_c*.7+c7*.3 ltoe=lball neck=c7*.5+jugular*.5 lcla=lsc*.6+lacrom*.4
        head=c1*.5+head_c*.5 lsho=lsho lelb=lelb lwri=lwri jaw=jaw*.6+c1*.4 leyehf=leye
        lmiddle1=lmcp3 nose=nose leye=leye*.8+leye_out*.2 lear=lear lto2=lbigtoe lto3=lsmalltoe
        lhee=lheel lthu=lthumb_tip lmiddle=lmid_tip""",
    "berkeley_mhad_43": """head=htop*.6+forehead*.4 lhead=lhead lback=lscap backl=lowback backt=t3 lside=lside
        bell=navel chest=sternum lsho1=lacrom lsho2=lshofront larm=larm lelb=lelb_lat lwri=lwri_rad
        lhan1=lhandback*.5+lindex*.5 lhan2=lhandback lhan3=lpinky lhipb=lpsis lhipf=lasis lhipl=ltroch
        lleg=lleg lkne=lknee_lat lank=lmall lhee=lheel lfoo=lball*.5+lsmalltoe*.5""",
    "h36m_17": """pelv=pelvis lhip=lhip*1.05+pelvis*-.05 lkne=lkne lank=lank spin=l1*.5+t12*.5
        neck=jugular*.5+c7*.3+neck_mid*.2 head=head_c*.5+nose*.3+jaw*.2 htop=htop lsho=lsho
        lelb=lelb lwri=lwri""",
    "coco_17": """nose=nose left_eye=leye left_ear=lear left_shoulder=lsho*.7+lacrom*.3 left_elbow=lelb
        left_wrist=lwri left_hip=lhip*.8+ltroch*.2 left_knee=lkne left_ankle=lank""",
    "mpi_inf_3dhp_28": """thor=jugular*.5+c7*.5 spi4=thor_c*.6+t12*.4 spi2=l1 spin=l4*.7+l1*.3 pelv=pelvis
        neck=neck_mid head=head_c htop=htop lcla=lsc*.5+lacrom*.5 lsho=lsho lelb=lelb lwri=lwri
        lhan=lhand_c*.5+lmcp3*.5 lhip=lhip lkne=lkne lank=lank lfoo=lfootmid*.5+lball*.5
        ltoe=lbigtoe*.5+lsmalltoe*.5""",
    "mediapipe_33": """nose=nose left_eye_inner=leye_in left_eye=leye left_eye_outer=leye_out left_ear=lear
        mouth_left=lmouth left_shoulder=lsho*.6+lacrom*.4 left_elbow=lelb left_wrist=lwri
        left_pinky=lpinky left_index=lindex*.5+lindex_tip*.5 left_thumb=lthumb_tip*.7+lwri_rad*.3
        left_hip=lhip*.7+ltroch*.3 left_knee=lkne left_ankle=lank left_heel=lheel
        left_foot_index=lbigtoe""",
}


@dataclass(frozen=True)
class Noise:
    """Estimator-like error model of one convention's source (metres, camera frame)."""

    jitter: float  # per-frame std in x and y
    depth: float  # per-frame std along the camera axis (depth is the least certain)
    bias: float  # per clip, person and joint constant offset std
    drift: float  # slowly varying offset std
    scale: float  # relative body-size error std (monocular estimators)
    drop: float  # chance per clip of 1-4 repeated (dropped) frames
    glitch: float  # chance per clip of a hand-tracking failure burst (Kinect)


NOISE = {
    "kinect": Noise(jitter=0.008, depth=0.02, bias=0.005, drift=0.004, scale=0.0, drop=0.05, glitch=0.25),
    "estimator": Noise(jitter=0.005, depth=0.015, bias=0.012, drift=0.008, scale=0.03, drop=0.3, glitch=0.0),
    "mocap": Noise(jitter=0.002, depth=0.002, bias=0.003, drift=0.0, scale=0.0, drop=0.0, glitch=0.0),
}
SOURCE = {"ntu-rgb+d": "kinect", "berkeley_mhad_43": "mocap"}  # everything else: "estimator"


@dataclass
class SynthData:
    """What `generate` returns; the keyword arguments of `write_dataset` minus root/name."""

    classes: list[str]
    arrays: dict[str, np.ndarray]  # convention -> float32 N×3×T×V×2 in `units[conv]`
    units: dict[str, str]
    sample_names: list[str]
    labels: np.ndarray
    meta: dict[str, list] = field(default_factory=dict)  # subject, camera, setup, partner
    splits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def _recipe_matrix(conv) -> tuple[np.ndarray, np.ndarray]:
    """(V, K) landmark indices and weights of each joint of `conv` (zero-weight padding)."""
    table = {}
    for item in RECIPES[conv.name].split():
        joint, terms = item.split("=")
        table[joint] = [(t.split("*")[0], float(t.split("*")[1]) if "*" in t else 1.0) for t in terms.split("+")]
    rows = []
    for j, name in enumerate(conv.joint_names):
        if name in table:
            rows.append(table[name])
        else:  # a right joint: the mirror of its left twin
            twin = conv.joint_names[conv.flip[j]]
            rows.append([(body.mirror_landmark(lm), w) for lm, w in table[twin]])
    k = max(len(r) for r in rows)
    idx = np.zeros((len(rows), k), np.int64)
    wts = np.zeros((len(rows), k), np.float32)
    for j, row in enumerate(rows):
        assert abs(sum(w for _, w in row) - 1.0) < 1e-6, (conv.name, conv.joint_names[j])
        for i, (lm, w) in enumerate(row):
            idx[j, i], wts[j, i] = body.LANDMARK[lm], w
    return idx, wts


def _conventions(names):
    from msclr_core.conventions import get_convention

    convs = []
    for name in names:
        conv = get_convention(name)
        if conv.dims != 3 or conv.name not in RECIPES:
            raise ConfigError(f"conventions: {name!r} cannot be rendered (synth renders the 3-D conventions "
                              f"{', '.join(RECIPES)})")
        convs.append(conv)
    return convs


def _check(clips, frames, subjects, views, setups, noise):
    for field_, value, low in (("clips", clips, 1), ("frames", frames, 8), ("subjects", subjects, 3),
                               ("views", views, 2), ("setups", setups, 1)):
        if int(value) != value or value < low:
            raise ConfigError(f"{field_}: must be an integer >= {low}, got {value!r}")
    if not noise >= 0:
        raise ConfigError(f"noise: must be >= 0, got {noise!r}")


def _subjects(rng, subjects):
    """Per-subject anthropometrics (S, groups) and style (speed, amplitude, posture offsets)."""
    height = rng.uniform(1.52, 1.95, subjects) / 1.75
    scales = (height[:, None] * np.exp(rng.normal(0, 0.05, (subjects, len(body.GROUPS))))).astype(np.float32)
    speed = np.exp(rng.normal(0, 0.15, subjects))
    amp = np.exp(rng.normal(0, 0.12, subjects))
    posture = np.zeros((subjects, len(body.DOFS)), np.float32)
    for dof, std in (("thor_flex", 4), ("neck_flex", 5), ("lumb_flex", 3), ("head_flex", 4)):
        posture[:, body.DOF[dof]] = rng.normal(0, std, subjects)
    for side in "lr":  # roughly symmetric habits
        for dof, std in (("elbow", 6), ("sho_elev", 4), ("hip_abd", 2), ("clav", 3)):
            posture[:, body.DOF[f"{side}_{dof}"]] = rng.normal(0, std, subjects)
    return scales, speed, amp, posture


def _idle(rng, n, t):
    """Smooth random sway of every DOF (n, 2, T, D): two slow sinusoids per DOF."""
    d = len(body.DOFS)
    std = np.full(d, 2.5, np.float32)
    std[[body.DOF[k] for k in ("tx", "tz")]] = 0.02
    std[body.DOF["ty"]] = 0.0
    for k in body.DOFS:
        if "sho" in k or "elbow" in k or "wrist" in k:
            std[body.DOF[k]] = 6.0
    amp = rng.normal(0, 1, (n, 2, 1, d, 2)) * std[:, None]
    freq = rng.uniform(0.3, 2.0, (n, 2, 1, d, 2))
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1, d, 2))
    return (amp * np.sin(2 * np.pi * freq * t[:, None, None] + phase)).sum(-1).astype(np.float32)


def _fidget(rng, n, t):
    """Distractor gestures (a hand to the head) of person 1 in about half of the clips."""
    d = np.zeros((n, 2, len(t), len(body.DOFS)), np.float32)
    on = rng.random(n) < 0.5
    start, length = rng.uniform(0, 0.7, n), rng.uniform(0.2, 0.4, n)
    side = np.where(rng.random(n) < 0.5, "l", "r")
    strength = rng.uniform(0.5, 1.2, n)
    window = np.sin(np.pi * np.clip((t[None] - start[:, None]) / length[:, None], 0, 1)) ** 2
    window *= (on * strength)[:, None]
    for s in "lr":
        mask = (side == s)[:, None]
        for dof, deg in (("sho_elev", 100), ("sho_plane", 70), ("elbow", 120)):
            d[:, 0, :, body.DOF[f"{s}_{dof}"]] = np.where(mask, deg * window, 0)
    return d


def _camera_rotations(yaw_deg, tilt_deg):
    """Camera-from-world rotations (n, 3, 3): the camera faces the persons (body +z faces it)."""
    return body.rotation("x", tilt_deg) @ body.rotation("y", 180.0 + yaw_deg)


def _add_noise(x, spec: Noise, level: float, hands, rng) -> np.ndarray:
    """Estimator-like errors on joints x (P, T, V, 3) of P persons, metres, camera frame (z = depth)."""
    p, t, v, _ = x.shape
    if level <= 0:
        return x
    f32, prob = np.float32, min(1.0, level)
    if spec.scale:  # a monocular estimator gets the body size slightly wrong
        centre = x.mean(axis=(1, 2), keepdims=True)
        x = centre + (x - centre) * (1 + f32(level * spec.scale) * rng.standard_normal((p, 1, 1, 1), f32))
    x = x + f32(level * spec.bias) * rng.standard_normal((p, 1, v, 3), f32)
    if spec.drift:
        phase = rng.uniform(0, 2 * np.pi, (p, 1, v, 3)).astype(f32)
        freq = rng.uniform(0.2, 1.5, (p, 1, v, 3)).astype(f32)
        size = f32(level * spec.drift) * rng.standard_normal((p, 1, v, 3), f32)
        x = x + size * np.sin(f32(2 * np.pi) * freq * np.linspace(0, 1, t, dtype=f32)[:, None, None] + phase)
    std = np.array([spec.jitter, spec.jitter, spec.depth], f32) * f32(level)
    x = x + rng.standard_normal((p, t, v, 3), f32) * std
    frames = np.arange(t)[None, :]
    if spec.glitch:  # a tracked hand jumps away for a few frames
        rows = np.flatnonzero(rng.random(p) < prob * spec.glitch)
        start, length = rng.integers(0, t - 3, len(rows)), rng.integers(3, 9, len(rows))
        burst = (frames >= start[:, None]) & (frames < (start + length)[:, None])  # (r, T)
        joints = np.zeros((len(rows), v), bool)
        left = rng.random(len(rows)) < 0.5
        joints[np.ix_(left, hands["l"])] = True
        joints[np.ix_(~left, hands["r"])] = True
        jump = rng.normal(0, 0.08, (len(rows), 1, 1, 3)).astype(f32)
        x[rows] += jump * (burst[:, :, None, None] & joints[:, None, :, None])
    if spec.drop:  # dropped frames: the previous pose is repeated
        rows = np.flatnonzero(rng.random(p) < prob * spec.drop)
        start, length = rng.integers(1, t - 4, len(rows)), rng.integers(1, 5, len(rows))
        held = (frames >= start[:, None]) & (frames < (start + length)[:, None])
        src = np.where(held, (start - 1)[:, None], frames)
        x[rows] = np.take_along_axis(x[rows], src[:, :, None, None], axis=1)
    return x


def _split(labels_subject, labels_camera):
    """`xsub` and `xview` (train / test), and for choosing settings without the test split,
    `xsub_val` and `xview_val`: the same test part, with every fifth training subject (the
    3rd, 8th, ...) moved from train to a subject-disjoint `val` part. Added only when each
    of their parts has clips (tiny test datasets may have too few subjects)."""
    xsub_train = np.isin(labels_subject, list(XSUB_TRAIN))
    view_train = labels_camera != 1
    idx = np.arange(len(labels_subject))
    splits = {"xsub": {"train": idx[xsub_train], "test": idx[~xsub_train]},
              "xview": {"train": idx[view_train], "test": idx[~view_train]}}
    val_subject = np.isin(labels_subject, sorted(set(labels_subject[xsub_train].tolist()))[2::5])
    for proto, train in (("xsub", xsub_train), ("xview", view_train)):
        parts = {"train": idx[train & ~val_subject], "val": idx[train & val_subject], "test": idx[~train]}
        if all(len(v) for v in parts.values()):
            splits[f"{proto}_val"] = parts
    return splits


def generate(clips: int = 2000, seed: int = 0, conventions=DEFAULT_CONVENTIONS, *, frames: int = 50,
             persons: int = 2, subjects: int = 20, views: int = 3, setups: int = 4,
             noise: float = 1.0) -> SynthData:
    """Generate the benchmark in memory. Same arguments ⇒ byte-identical arrays.

    A convention's array does not depend on which other conventions are requested.
    persons >= 2 (slots beyond the second stay zero); views = cameras spread over ±45°.
    """
    _check(clips, frames, subjects, views, setups, noise)
    if int(persons) != persons or persons < 2:
        raise ConfigError(f"persons: must be an integer >= 2 (interactions need two), got {persons!r}")
    convs = _conventions(conventions or DEFAULT_CONVENTIONS)
    rng = np.random.default_rng(seed)
    n, t = clips, np.linspace(0.0, 1.0, frames, dtype=np.float32)

    # --- who, where, which camera ----------------------------------------------------------
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    scales, subj_speed, subj_amp, posture = _subjects(rng, subjects)
    subject = rng.integers(1, subjects + 1, n)
    groups = [np.array([s for s in range(1, subjects + 1) if (s in XSUB_TRAIN) == side]) for side in (False, True)]
    two = body.TWO_PERSON[labels]
    partner = np.zeros(n, np.int64)  # drawn from the same xsub side, so no test subject leaks into train
    for side in (False, True):
        pool = groups[side]
        sel = np.flatnonzero(two & (np.isin(subject, list(XSUB_TRAIN)) == side))
        pick = pool[rng.integers(0, len(pool), len(sel))]
        partner[sel] = np.where(pick == subject[sel], pool[(np.searchsorted(pool, pick) + 1) % len(pool)], pick)
    camera = rng.integers(1, views + 1, n)
    setup = rng.integers(1, setups + 1, n)
    setup_tilt, setup_dist = rng.uniform(3, 18, setups), rng.uniform(2.5, 4.0, setups)
    lateral = rng.uniform(-0.6, 0.6, n)
    cam_yaw = np.linspace(45.0, -45.0, views)[camera - 1] + rng.normal(0, 8, n)
    cam_yaw += np.degrees(np.arctan2(lateral, setup_dist[setup - 1]))  # off-centre persons are seen obliquely
    tilt = setup_tilt[setup - 1] + rng.normal(0, 2, n)
    body_yaw = rng.uniform(-60, 60, n)  # persons do not face the same way every time
    distance = rng.uniform(0.85, 1.15, n)

    # --- motion: DOF trajectories (n, 2, T, D) ---------------------------------------------
    onset = rng.uniform(0.0, 0.45, n)  # timing varies a lot: hard for a linear model, easy for a temporal CNN
    duration = (1.0 - onset) * rng.uniform(0.5, 1.0, n)
    amp = subj_amp[subject - 1] * np.exp(rng.normal(0, 0.2, n))
    speed = subj_speed[subject - 1] * np.exp(rng.normal(0, 0.25, n))
    phase = rng.uniform(0, 2 * np.pi, n)
    dofs = np.zeros((n, 2, frames, len(body.DOFS)), np.float32)
    for k in range(len(CLASSES)):
        sel = np.flatnonzero(labels == k)
        dofs[sel] = body.action_dofs(k, t, onset[sel], duration[sel], amp[sel], speed[sel], phase[sel], rng)
    dofs *= np.exp(rng.normal(0, 0.5, (n, 2, 1, len(body.DOFS)))).astype(np.float32)  # per-clip style of each joint
    who = np.stack([subject, np.where(two, partner, subject)], 1) - 1  # (n, 2) subject rows
    dofs += body.neutral_pose() + posture[who][:, :, None, :]
    dofs += _idle(rng, n, t) + _fidget(rng, n, t)
    person_scales = scales[who]  # (n, 2, groups)

    # Person placement: alone at the origin, or face to face `distance` apart (persons 1, 2).
    place_yaw = np.where(two[:, None], [[90.0, -90.0]], [[0.0, 0.0]]) + body_yaw[:, None]
    place_x = np.where(two[:, None], np.array([-0.5, 0.5]) * distance[:, None], 0.0)
    cam = _camera_rotations(cam_yaw, tilt)  # (n, 3, 3)
    rot = cam[:, None] @ body.rotation("y", place_yaw)  # (n, 2, 3, 3)
    offset = np.stack([place_x, np.zeros_like(place_x), np.zeros_like(place_x)], -1)[..., None]
    shift = (cam @ body.rotation("y", body_yaw))[:, None] @ offset  # (n, 2, 3, 1)
    present = np.stack([np.ones(n, bool), two], 1)  # (n, 2)

    # --- render every convention, chunk by chunk, only the persons present -------------------
    plans = {conv.name: _recipe_matrix(conv) for conv in convs}
    arrays = {conv.name: np.zeros((n, 3, frames, conv.num_joints, persons), np.float32) for conv in convs}
    clip_of, slot = np.nonzero(present)  # flat persons, person 1 of each clip first
    for lo in range(0, n, _CHUNK):
        rows = np.flatnonzero((clip_of >= lo) & (clip_of < lo + _CHUNK))
        c, m = clip_of[rows], slot[rows]
        own = body.forward_kinematics(dofs[c, m], person_scales[c, m])  # (P, T, L, 3)
        p = len(rows)
        world = own.reshape(p, -1, 3) @ rot[c, m].transpose(0, 2, 1) + shift[c, m].transpose(0, 2, 1)
        world = world.reshape(own.shape)
        first = np.searchsorted(c, c)  # row of person 1 of the same clip
        for conv in convs:
            idx, wts = plans[conv.name]
            x = world[:, :, idx[:, 0]] * wts[:, 0, None]
            for k in range(1, idx.shape[1]):
                x += world[:, :, idx[:, k]] * wts[:, k, None]
            hands = {s: [j for j in range(conv.num_joints) if body.LANDMARKS[idx[j, 0]] in body.HAND_LANDMARKS[s]]
                     for s in "lr"}
            noise_rng = np.random.default_rng([seed, zlib.crc32(conv.name.encode()), lo])
            x = _add_noise(x, NOISE[SOURCE.get(conv.name, "estimator")], noise, hands, noise_rng)
            x -= x[first, :, conv.center].mean(axis=1)[:, None, None, :]  # person 1's centre joint
            x *= 1000.0 if conv.unit == "mm" else 1.0
            arrays[conv.name][c, :, :, :, m] = x.transpose(0, 3, 1, 2)

    counts: dict[tuple, int] = {}
    names = []
    for s, c, p, a in zip(setup, camera, subject, labels):  # NTU-style names, R = repetition
        key = (s, c, p, a)
        counts[key] = counts.get(key, 0) + 1
        names.append(f"S{s:03d}C{c:03d}P{p:03d}R{counts[key]:03d}A{a + 1:03d}")
    meta = {"subject": subject.tolist(), "camera": camera.tolist(), "setup": setup.tolist(),
            "partner": partner.tolist()}
    return SynthData(classes=list(CLASSES), arrays=arrays, units={c.name: c.unit for c in convs},
                     sample_names=names, labels=labels.astype(np.int64), meta=meta, splits=_split(subject, camera))


def write_synth_dataset(out_dir, clips: int = 2000, seed: int = 0, conventions=None, *, overwrite: bool = False,
                        name: str | None = None, **options):
    """Generate and write the benchmark as a dataset directory (atomic); returns the Dataset."""
    from pathlib import Path

    from msclr_core.data.writer import write_dataset

    if Path(out_dir).exists() and not overwrite:  # fail before spending time on generation
        raise ConfigError(f"out: {out_dir} already exists (pass overwrite=True / --overwrite to replace it)")
    data = generate(clips, seed, conventions or DEFAULT_CONVENTIONS, **options)
    return write_dataset(out_dir, name=name or f"synth-{clips}-seed{seed}", classes=data.classes,
                         arrays=data.arrays, sample_names=data.sample_names, labels=data.labels,
                         meta=data.meta, splits=data.splits, units=data.units, overwrite=overwrite)


def ridge_top1(x_train, y_train, x_test, y_test, l2: float = 1.0) -> float:
    """Top-1 of a closed-form one-vs-all ridge classifier on flattened raw features.

    Features are centred with the training mean; l2 is relative to the mean feature
    variance, so it does not depend on the unit. Solved in the dual when N < D.
    """
    a = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
    b = np.asarray(x_test, np.float64).reshape(len(x_test), -1)
    mu = a.mean(0)
    a, b = a - mu, b - mu
    k = int(max(y_train.max(), y_test.max())) + 1
    targets = np.eye(k)[y_train] * 2 - 1
    lam = l2 * (a * a).sum() / a.shape[0]
    if a.shape[0] < a.shape[1]:
        alpha = np.linalg.solve(a @ a.T + lam * np.eye(a.shape[0]), targets)
        scores = b @ (a.T @ alpha)
    else:
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ targets)
        scores = b @ w
    return float((scores.argmax(1) == y_test).mean())
