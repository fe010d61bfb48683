"""The procedural kinematic human behind the synthetic benchmark (see `synth.py`).

A small skeleton of rigid segments (pelvis, lumbar, thorax, neck, head, clavicles, upper
arms, forearms, hands, thighs, shins, feet) is driven by 37 joint-angle DOFs. Each segment
carries a dense set of anatomical landmarks (joint centres *and* surface points such as
the acromion, iliac crest, heel or eye corners), so that every skeleton convention can be
rendered with its own joint placement (a Kinect hip is not an SMPL hip).

Body frame: x = the person's left, y = up, z = forward (right-handed); metres. Left-side
geometry is written once and mirrored (x -> -x) for the right side; rotations about y and
z change sign under the mirror, so a right-side DOF trajectory equal to a left-side one
gives the exact mirror image. Everything is vectorised over persons and frames.
"""

from __future__ import annotations

import numpy as np

# --- degrees of freedom -------------------------------------------------------------------
_CENTRAL = ("tx", "ty", "tz", "yaw", "pitch", "roll",
            "lumb_flex", "lumb_lat", "lumb_twist", "thor_flex", "thor_lat", "thor_twist",
            "neck_flex", "neck_twist", "head_flex")
_SIDED = ("clav", "sho_elev", "sho_plane", "sho_twist", "elbow", "wrist",
          "hip_flex", "hip_abd", "hip_twist", "knee", "ankle")
DOFS: tuple[str, ...] = _CENTRAL + tuple(f"{s}_{d}" for s in "lr" for d in _SIDED)
DOF = {name: i for i, name in enumerate(DOFS)}
# Under a left/right mirror these central DOFs change sign (x translation, rotations about y/z).
_MIRROR_SIGN = ("tx", "yaw", "roll", "lumb_lat", "lumb_twist", "thor_lat", "thor_twist", "neck_twist")
# Translations are metres (ty = height above the ground contact); every other DOF is degrees.

# --- segments -----------------------------------------------------------------------------
# name: (parent, origin in the parent frame for a 1.75 m reference body, scale group,
#        local rotation as elementary rotations (axis, dof, sign) applied left to right).
_SEGMENTS_LEFT = {
    "pelvis": (None, (0.0, 0.0, 0.0), "torso", (("y", "yaw", 1), ("x", "pitch", 1), ("z", "roll", 1))),
    "lumbar": ("pelvis", (0.0, 0.10, -0.04), "torso",
               (("z", "lumb_lat", 1), ("x", "lumb_flex", 1), ("y", "lumb_twist", 1))),
    "thorax": ("lumbar", (0.0, 0.13, 0.0), "torso",
               (("z", "thor_lat", 1), ("x", "thor_flex", 1), ("y", "thor_twist", 1))),
    "neck": ("thorax", (0.0, 0.31, -0.02), "torso", (("x", "neck_flex", 1), ("y", "neck_twist", 1))),
    "head": ("neck", (0.0, 0.10, 0.02), "head", (("x", "head_flex", 1),)),
    "lclav": ("thorax", (0.02, 0.27, 0.05), "shoulders", (("z", "l_clav", 1),)),
    # shoulder: plane of elevation (0 = sideways, 90 = forward), elevation, axial twist
    "luarm": ("lclav", (0.15, 0.02, -0.05), "shoulders",
              (("y", "l_sho_plane", -1), ("z", "l_sho_elev", 1), ("y", "l_sho_twist", 1))),
    "lfarm": ("luarm", (0.0, -0.29, 0.0), "arm", (("x", "l_elbow", -1),)),
    "lhand": ("lfarm", (0.0, -0.25, 0.0), "arm", (("x", "l_wrist", -1),)),
    "lthigh": ("pelvis", (0.085, 0.0, 0.0), "hips",
               (("z", "l_hip_abd", 1), ("x", "l_hip_flex", -1), ("y", "l_hip_twist", 1))),
    "lshin": ("lthigh", (0.0, -0.43, 0.0), "leg", (("x", "l_knee", 1),)),
    "lfoot": ("lshin", (0.0, -0.43, 0.0), "leg", (("x", "l_ankle", 1),)),
}

# --- landmarks ----------------------------------------------------------------------------
# segment: {landmark: offset in the segment frame (reference body)}; scale = segment group
# unless a landmark name is listed in _LANDMARK_GROUP. Names starting with "l" on a left
# segment get an "r" twin.
_LANDMARKS_LEFT = {
    "pelvis": {"pelvis": (0, 0, 0), "sacrum": (0, 0.06, -0.09), "pubis": (0, -0.03, 0.07),
               "lhip": (0.085, 0, 0), "lasis": (0.11, 0.08, 0.06), "lcrest": (0.14, 0.12, -0.01),
               "ltroch": (0.16, -0.05, 0.0), "lpsis": (0.05, 0.10, -0.08)},
    "lumbar": {"l4": (0, 0, 0), "l1": (0, 0.11, 0.0), "navel": (0, 0.02, 0.14),
               "lowback": (0, 0.04, -0.05), "lwaist": (0.14, 0.05, 0.03)},
    "thorax": {"t12": (0, 0, 0), "thor_c": (0, 0.15, 0.05), "xiphoid": (0, 0.10, 0.15),
               "sternum": (0, 0.20, 0.13), "jugular": (0, 0.27, 0.09), "c7": (0, 0.31, -0.03),
               "t3": (0, 0.22, -0.08), "lscap": (0.09, 0.17, -0.08), "lside": (0.15, 0.08, 0.02)},
    "lclav": {"lsc": (0, 0, 0), "lacrom": (0.17, 0.05, -0.04), "lshofront": (0.15, 0.0, 0.06)},
    "luarm": {"lsho": (0, 0, 0), "ldelt": (0.045, -0.04, 0.0), "larm": (0.05, -0.15, 0.0),
              "lelb_lat": (0.035, -0.29, 0.0)},
    "lfarm": {"lelb": (0, 0, 0), "lforearm": (0.03, -0.12, 0.0), "lwri_rad": (0.0, -0.25, 0.025),
              "lwri_uln": (0.0, -0.25, -0.025)},
    "lhand": {"lwri": (0, 0, 0), "lhand_c": (0, -0.07, 0.0), "lmcp3": (0, -0.09, 0.005),
              "lmid_tip": (0, -0.18, 0.0), "lindex": (-0.005, -0.085, 0.03),
              "lindex_tip": (-0.01, -0.17, 0.03), "lpinky": (0, -0.075, -0.035),
              "lthumb_tip": (-0.03, -0.09, 0.05), "lhandback": (0.02, -0.06, 0.0)},
    "lthigh": {"lleg": (0.07, -0.20, 0.02), "lknee_lat": (0.05, -0.43, 0.0)},
    "lshin": {"lkne": (0, 0, 0), "lshin_m": (0.0, -0.20, 0.05), "lank": (0, -0.43, 0),
              "lmall": (0.035, -0.43, -0.01)},
    "lfoot": {"lheel": (0, -0.05, -0.06), "lball": (0.01, -0.065, 0.12), "lbigtoe": (-0.02, -0.07, 0.19),
              "lsmalltoe": (0.035, -0.07, 0.16), "lfootmid": (0.005, -0.03, 0.07)},
    "neck": {"c7_n": (0, 0, 0), "neck_mid": (0, 0.05, 0.02)},
    "head": {"c1": (0, 0, 0), "head_c": (0, 0.06, 0.02), "htop": (0, 0.16, 0.0), "nose": (0, 0.03, 0.11),
             "leye": (0.032, 0.065, 0.085), "leye_in": (0.015, 0.065, 0.09), "leye_out": (0.05, 0.065, 0.075),
             "lear": (0.075, 0.04, 0.0), "jaw": (0, -0.03, 0.08), "lmouth": (0.025, 0.0, 0.095),
             "lhead": (0.07, 0.11, 0.03), "head_back": (0, 0.10, -0.08), "forehead": (0, 0.12, 0.09)},
}
_LANDMARK_GROUP = {"lhip": "hips", "lasis": "hips", "lcrest": "hips", "ltroch": "hips", "lpsis": "hips",
                   "lwaist": "hips", "lside": "shoulders", "lscap": "shoulders"}
GROUPS = ("torso", "head", "shoulders", "hips", "arm", "hand", "leg", "foot")
# Landmarks of the hand (with the wrist): what a Kinect hand-tracking glitch displaces.
HAND_LANDMARKS = {"l": ("lwri", "lwri_rad", "lwri_uln") + tuple(_LANDMARKS_LEFT["lhand"])}
HAND_LANDMARKS["r"] = tuple("r" + n[1:] for n in HAND_LANDMARKS["l"])
FOOT_CONTACT = ("lheel", "lball", "lbigtoe", "lsmalltoe", "rheel", "rball", "rbigtoe", "rsmalltoe")


def _mirror_name(name: str) -> str:
    return "r" + name[1:] if name.startswith("l") and name not in ("lumbar", "l4", "l1", "lowback") else name


def mirror_landmark(name: str) -> str:
    """The left/right twin of a landmark name (itself for a midline landmark)."""
    twin = {"l": "r", "r": "l"}.get(name[:1], "") + name[1:]
    return twin if twin in LANDMARK else name


def _mirror_dof(name: str) -> str:
    return "r_" + name[2:] if name.startswith("l_") else name


def _build():
    """Expand the left-side tables into full segment and landmark lists (topological order)."""
    segments = []  # (name, parent index, origin, group, rotations)
    for name, (parent, origin, group, rots) in _SEGMENTS_LEFT.items():
        segments.append((name, parent, origin, group, rots))
        if _mirror_name(name) != name:
            mrots = tuple((ax, _mirror_dof(d), s * (-1 if ax in "yz" else 1)) for ax, d, s in rots)
            segments.append((_mirror_name(name), parent if parent in (None, "pelvis", "thorax")
                             else _mirror_name(parent), (-origin[0], *origin[1:]), group, mrots))
    index = {s[0]: i for i, s in enumerate(segments)}
    segs = [(n, -1 if p is None else index[p], np.array(o, np.float32), g, r) for n, p, o, g, r in segments]
    landmarks = []  # (name, segment index, offset, group)
    for seg, marks in _LANDMARKS_LEFT.items():
        sided = _mirror_name(seg) != seg
        for lname, off in marks.items():
            group = _LANDMARK_GROUP.get(lname, "hand" if seg == "lhand" else "foot" if seg == "lfoot"
                                        else _SEGMENTS_LEFT[seg][2])
            landmarks.append((lname, index[seg], np.array(off, np.float32), group))
            if sided or (_mirror_name(lname) != lname and off[0] != 0):
                mseg = index[_mirror_name(seg)] if sided else index[seg]
                landmarks.append((_mirror_name(lname), mseg, np.array((-off[0], *off[1:]), np.float32), group))
    return segs, landmarks


SEGMENTS, _LANDMARK_LIST = _build()
LANDMARKS: tuple[str, ...] = tuple(name for name, *_ in _LANDMARK_LIST)
# segment index -> (landmark indices, offsets (n, 3), scale-group indices (n,))
_BY_SEGMENT = {
    seg: (np.array([i for i, lm in enumerate(_LANDMARK_LIST) if lm[1] == seg]),
          np.stack([lm[2] for lm in _LANDMARK_LIST if lm[1] == seg]),
          np.array([GROUPS.index(lm[3]) for lm in _LANDMARK_LIST if lm[1] == seg]))
    for seg in sorted({lm[1] for lm in _LANDMARK_LIST})}
LANDMARK = {name: i for i, name in enumerate(LANDMARKS)}


def mirror_dofs(dofs: np.ndarray) -> np.ndarray:
    """The left/right mirror image of a DOF array (..., D): swap sides, flip y/z rotations."""
    perm = [DOF[_mirror_dof(n) if n.startswith("l_") else "l_" + n[2:] if n.startswith("r_") else n]
            for n in DOFS]
    out = dofs[..., perm].copy()
    for n in _MIRROR_SIGN:
        out[..., DOF[n]] *= -1
    return out


def neutral_pose() -> np.ndarray:
    """Relaxed standing pose (D,): arms hang slightly away from the body, knees soft."""
    pose = np.zeros(len(DOFS), np.float32)
    for side in "lr":
        pose[DOF[f"{side}_sho_elev"]] = 8.0
        pose[DOF[f"{side}_elbow"]] = 12.0
        pose[DOF[f"{side}_hip_abd"]] = 3.0
        pose[DOF[f"{side}_knee"]] = 3.0
    return pose


def rotation(axis: str, deg: np.ndarray) -> np.ndarray:
    """Elementary rotation matrices (..., 3, 3) from angles in degrees."""
    a = np.deg2rad(deg.astype(np.float32))
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    rows = {"x": ((o, z, z), (z, c, -s), (z, s, c)),
            "y": ((c, z, s), (z, o, z), (-s, z, c)),
            "z": ((c, -s, z), (s, c, z), (z, z, o))}[axis]
    return np.stack([np.stack(r, -1) for r in rows], -2)


def forward_kinematics(dofs: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Landmark positions (P, T, L, 3) in the person's own frame, feet on the ground.

    dofs: (P, T, D) angles in degrees (translations in metres); scales: (P, len(GROUPS))
    multipliers of the reference body per scale group.
    """
    p, t, _ = dofs.shape
    gi = {g: i for i, g in enumerate(GROUPS)}
    rots, origins = [], []
    out = np.empty((p, t, len(LANDMARKS), 3), np.float32)
    for name, parent, origin, group, elementary in SEGMENTS:
        local = None
        for axis, dof, sign in elementary:
            r = rotation(axis, sign * dofs[:, :, DOF[dof]])
            local = r if local is None else local @ r
        off = origin[None, :] * scales[:, gi[group], None]  # (P, 3)
        if parent < 0:
            rot, pos = local, np.zeros((p, t, 3), np.float32)
        else:
            rot = rots[parent] @ local
            pos = origins[parent] + (rots[parent] @ off[:, None, :, None])[..., 0]
        rots.append(rot)
        origins.append(pos)
    for seg, (lidx, offs, gidx) in _BY_SEGMENT.items():  # landmarks of one segment at once
        local = offs[None] * scales[:, gidx, None]  # (P, n, 3)
        out[:, :, lidx] = origins[seg][:, :, None] + (rots[seg] @ local.transpose(0, 2, 1)[:, None]).transpose(0, 1, 3, 2)
    # Feet on the ground every frame; ty lifts the whole body (jumps).
    contact = [LANDMARK[n] for n in FOOT_CONTACT]
    ground = out[:, :, contact, 1].min(axis=2)
    out[..., 1] -= (ground - dofs[:, :, DOF["ty"]])[:, :, None]
    out[..., 0] += dofs[:, :, DOF["tx"], None]
    out[..., 2] += dofs[:, :, DOF["tz"], None]
    return out


# --- actions ------------------------------------------------------------------------------
def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class _Clips:
    """Per-clip timing of one action class, vectorised over its n clips.

    u: (n, T) action time, 0 at the onset and 1 at the end of the action window; e: (n, T)
    smooth envelope that is 0 outside the window; amp, speed, phase: (n, 1) style factors.
    """

    def __init__(self, t, onset, duration, amp, speed, phase, rng):
        self.n = len(onset)
        self.u = (t[None, :] - onset[:, None]) / duration[:, None]
        self.e = _smoothstep(self.u / 0.15) * _smoothstep((1.0 - self.u) / 0.15)
        self.amp, self.speed, self.phase, self.rng = amp[:, None], speed[:, None], phase[:, None], rng
        self.d = np.zeros((self.n, 2, len(t), len(DOFS)), np.float32)

    def add(self, person: int, dof: str, value) -> None:
        self.d[:, person, :, DOF[dof]] += value

    def osc(self, cycles: float) -> np.ndarray:
        """An oscillation with about `cycles` periods over the window (speed varies per clip)."""
        return np.sin(2 * np.pi * cycles * self.speed * np.clip(self.u, 0, 1) + self.phase)

    def pulses(self, low: int, high: int) -> np.ndarray:
        """A train of k smooth 0→1→0 bumps over the window, k drawn per clip in [low, high]."""
        k = self.rng.integers(low, high + 1, size=(self.n, 1))
        inside = (self.u >= 0) & (self.u <= 1)
        return np.where(inside, np.sin(np.pi * k * np.clip(self.u, 0, 1)) ** 2, 0.0)

    def ramp(self) -> np.ndarray:
        return _smoothstep(self.u / 0.6)


def _wave(c):
    e, a = c.e, c.amp
    c.add(0, "l_sho_elev", 120 * a * e)
    c.add(0, "l_sho_plane", 25 * e)
    c.add(0, "l_sho_twist", (70 + 28 * a * c.osc(3.0)) * e)
    c.add(0, "l_elbow", 60 * e)
    c.add(0, "l_wrist", 12 * c.osc(3.0) * e)
    c.add(0, "thor_lat", -4 * e)


def _raise_hand(c):  # the static twin of a wave: hand up, no oscillation
    e, a = c.e, c.amp
    c.add(0, "l_sho_elev", 135 * a * e)
    c.add(0, "l_sho_plane", 35 * e)
    c.add(0, "l_sho_twist", 60 * e)
    c.add(0, "l_elbow", 35 * e)
    c.add(0, "thor_lat", -5 * e)
    c.add(0, "neck_flex", -8 * e)


def _punch(c):
    e, a, s = c.e, c.amp, c.pulses(2, 4) ** 2
    for side, guard in (("l", 1.0), ("r", 0.8)):
        c.add(0, f"{side}_sho_elev", 25 * guard * e)
        c.add(0, f"{side}_sho_plane", 85 * e)
        c.add(0, f"{side}_elbow", 105 * guard * e)
    c.add(0, "l_sho_elev", 60 * a * s)
    c.add(0, "l_elbow", -100 * a * s)
    c.add(0, "thor_twist", -18 * a * s)
    c.add(0, "l_hip_flex", 8 * e)  # staggered stance
    c.add(0, "r_hip_flex", -8 * e)


def _kick(c):
    e, a, s = c.e, c.amp, c.pulses(1, 2)
    c.add(0, "l_hip_flex", 75 * a * s)
    c.add(0, "l_knee", 75 * s * (1.0 - 0.85 * s ** 4))  # flexed on the way, snapped straight at the top
    c.add(0, "l_ankle", 20 * s)
    c.add(0, "thor_flex", -10 * a * s)
    for side in "lr":
        c.add(0, f"{side}_sho_elev", 25 * e)
    c.add(0, "r_knee", 10 * e)


def _squat(c):
    s = c.pulses(1, 3) * c.amp
    for side in "lr":
        c.add(0, f"{side}_hip_flex", 95 * s)
        c.add(0, f"{side}_knee", 120 * s)
        c.add(0, f"{side}_ankle", -35 * s)
        c.add(0, f"{side}_sho_elev", 80 * s)
        c.add(0, f"{side}_sho_plane", 90 * c.e)
    c.add(0, "lumb_flex", 15 * s)
    c.add(0, "thor_flex", 10 * s)


def _jump(c):
    k = c.rng.integers(1, 4, size=(c.n, 1))
    ph = np.where((c.u >= 0) & (c.u <= 1), (k * np.clip(c.u, 0, 1)) % 1.0, -1.0)
    crouch = np.where(ph >= 0, np.sin(np.pi * np.clip(ph / 0.35, 0, 1)) ** 2, 0)
    land = np.where(ph >= 0.75, np.sin(np.pi * np.clip((ph - 0.75) / 0.25, 0, 1)) ** 2, 0)
    flight = np.where((ph >= 0.35) & (ph < 0.75), np.sin(np.pi * (ph - 0.35) / 0.4), 0)
    bend = crouch + 0.6 * land
    for side in "lr":
        c.add(0, f"{side}_hip_flex", 55 * bend)
        c.add(0, f"{side}_knee", 80 * bend)
        c.add(0, f"{side}_ankle", -25 * bend + 25 * flight)
        c.add(0, f"{side}_sho_elev", -25 * crouch + 140 * c.amp * flight)
        c.add(0, f"{side}_sho_plane", 80 * c.e)
    c.add(0, "thor_flex", 20 * bend)
    c.add(0, "ty", 0.25 * c.amp * flight)


def _step(c, lift: float, cycles: float):
    phi = 2 * np.pi * cycles * c.speed * np.clip(c.u, 0, 1) + c.phase
    for side, shift in (("l", 0.0), ("r", np.pi)):
        up = np.maximum(0.0, np.sin(phi + shift)) * c.e
        c.add(0, f"{side}_hip_flex", 40 * lift * up)
        c.add(0, f"{side}_knee", 70 * lift * up)
        c.add(0, f"{side}_sho_elev", -25 * lift * np.sin(phi + shift) * c.e)
        c.add(0, f"{side}_sho_plane", 90 * c.e)
    c.add(0, "roll", 3 * lift * np.sin(phi) * c.e)


def _walk(c):
    _step(c, c.amp, 2.5)


def _bow(c):
    s = c.pulses(1, 2) * c.amp
    c.add(0, "pitch", 25 * s)
    c.add(0, "lumb_flex", 20 * s)
    c.add(0, "thor_flex", 20 * s)
    c.add(0, "neck_flex", 15 * s)
    for side in "lr":
        c.add(0, f"{side}_hip_flex", 25 * s)  # keeps the legs vertical under the pelvis pitch
        c.add(0, f"{side}_sho_elev", 60 * s)
        c.add(0, f"{side}_sho_plane", 90 * c.e)


def _turn(c):
    sign = c.rng.choice([-1.0, 1.0], size=(c.n, 1))
    angle = c.rng.uniform(100, 180, size=(c.n, 1))
    c.add(0, "yaw", sign * angle * _smoothstep(c.u))
    _step(c, 0.4, 2.0)


def _clap(c):
    e, a = c.e, c.amp
    for side in "lr":
        c.add(0, f"{side}_sho_elev", 55 * e)
        c.add(0, f"{side}_sho_plane", (70 + 18 * a * c.osc(5.0)) * e)
        c.add(0, f"{side}_elbow", 75 * e)
        c.add(0, f"{side}_wrist", -20 * e)


def _handshake(c):
    e = c.e
    for person in (0, 1):
        c.add(person, "tz", 0.18 * e)
        c.add(person, "r_sho_elev", (50 + 8 * c.amp * c.osc(4.0)) * e)
        c.add(person, "r_sho_plane", 80 * e)
        c.add(person, "r_elbow", 35 * e)
        c.add(person, "thor_flex", 5 * e)


def _push(c):
    e, r = c.e, c.ramp()
    hit = _smoothstep((c.u - 0.45) / 0.2)
    for side in "lr":
        c.add(0, f"{side}_sho_elev", 80 * e)
        c.add(0, f"{side}_sho_plane", 90 * e)
        c.add(0, f"{side}_elbow", (90 - 80 * hit) * e)
        c.add(1, f"{side}_sho_elev", 35 * hit * e)
    c.add(0, "tz", 0.25 * r * e)
    c.add(0, "thor_flex", 12 * hit * e)
    c.add(1, "tz", -0.35 * c.amp * hit)
    c.add(1, "thor_flex", -15 * hit * e)


def _hug(c):
    e = c.e
    for person, height in ((0, 1.0), (1, 0.75)):
        c.add(person, "tz", 0.28 * c.ramp())
        c.add(person, "thor_flex", 8 * e)
        for side in "lr":
            c.add(person, f"{side}_sho_elev", 85 * height * e)
            c.add(person, f"{side}_sho_plane", 65 * e)
            c.add(person, f"{side}_sho_twist", 20 * e)
            c.add(person, f"{side}_elbow", 70 * e)


# (class name, generator, mirrored: the generator is written for the left side, two_person)
ACTIONS = (
    ("wave-left", _wave, False, False), ("wave-right", _wave, True, False),
    ("raise-hand-left", _raise_hand, False, False), ("raise-hand-right", _raise_hand, True, False),
    ("punch-left", _punch, False, False), ("punch-right", _punch, True, False),
    ("kick-left", _kick, False, False), ("kick-right", _kick, True, False),
    ("squat", _squat, False, False), ("jump", _jump, False, False),
    ("walk-in-place", _walk, False, False), ("bow", _bow, False, False),
    ("turn-around", _turn, False, False), ("clap", _clap, False, False),
    ("handshake", _handshake, False, True), ("push", _push, False, True), ("hug", _hug, False, True),
)
CLASSES: tuple[str, ...] = tuple(a[0] for a in ACTIONS)
TWO_PERSON = np.array([a[3] for a in ACTIONS])


def action_dofs(label: int, t, onset, duration, amp, speed, phase, rng) -> np.ndarray:
    """DOF offsets from the neutral pose (n, 2, T, D) for n clips of class `label`."""
    _, fn, mirrored, _ = ACTIONS[label]
    clips = _Clips(t, onset, duration, amp, speed, phase, rng)
    fn(clips)
    return mirror_dofs(clips.d) if mirrored else clips.d
