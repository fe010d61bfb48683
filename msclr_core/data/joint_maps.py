"""Joint maps from full-body mocap skeletons to the registry conventions.

A full-body mocap skeleton is denser than any convention, so one clip yields several
conventions of the same motion (`map_to_convention`).
"""

from __future__ import annotations

import numpy as np

from msclr_core.errors import DataError

from .kinematics import MocapClip

# JOINT_MAPS[skeleton][convention] lists, in the convention's joint order, how each target
# joint is made from source joints: a name (copy), a tuple of names (mean) or a dict
# {name: weight} (weights sum to 1; a negative weight extrapolates, e.g. a head top).
# "cmu": ASF bone end points (a bone's name marks where it ENDS: lfemur = knee).
# "bandai": Bandai Namco BVH joints (joint origins: UpperLeg_L = hip). Bandai has no hand
# end points, so NTU hand, hand-tip and thumb copy the wrist (as ntu25_approx says).
_CMU_SIDE = {"hip": "{s}hipjoint", "kne": "{s}femur", "ank": "{s}tibia", "foo": "{s}foot",
             "sho": "{s}clavicle", "elb": "{s}humerus", "wri": "{s}radius", "han": "{s}hand"}
_BANDAI_SIDE = {"hip": "UpperLeg_{S}", "kne": "LowerLeg_{S}", "ank": "Foot_{S}", "foo": "Toes_{S}",
                "sho": "UpperArm_{S}", "elb": "LowerArm_{S}", "wri": "Hand_{S}", "han": "Hand_{S}"}


def _sided(table, part, side):
    return table[part].format(s=side, S=side.upper())


def _ntu_map(side, center, spine_mid, neck, head, tip, thumb):
    sides = [_sided(side, p, s) for s in "lr" for p in ("sho", "elb", "wri", "han")]
    legs = [_sided(side, p, s) for s in "lr" for p in ("hip", "kne", "ank", "foo")]
    return [center[0], spine_mid, neck, head, *sides[:4], *sides[4:], *legs, center[1],
            tip("l"), thumb("l"), tip("r"), thumb("r")]


def _h36m_map(side, pelv, spin, neck, head, htop):
    leg = lambda s: [_sided(side, p, s) for p in ("hip", "kne", "ank")]  # noqa: E731
    arm = lambda s: [_sided(side, p, s) for p in ("sho", "elb", "wri")]  # noqa: E731
    return [pelv, *leg("r"), *leg("l"), spin, neck, head, htop, *arm("l"), *arm("r")]


JOINT_MAPS: dict[str, dict[str, list]] = {
    "cmu": {
        "ntu-rgb+d": _ntu_map(_CMU_SIDE, ("root", "thorax"), "upperback", "lowerneck", ("upperneck", "head"),
                              lambda s: f"{s}fingers", lambda s: f"{s}thumb"),
        "h36m_17": _h36m_map(_CMU_SIDE, "root", ("lowerback", "upperback"), ("thorax", "lowerneck"),
                             ("upperneck", "head"), "head"),
        "smpl_24": ["root", "lhipjoint", "rhipjoint", "lowerback", "lfemur", "rfemur", "upperback",
                    "ltibia", "rtibia", "thorax", "lfoot", "rfoot", "lowerneck", ("thorax", "lclavicle"),
                    ("thorax", "rclavicle"), ("upperneck", "head"), "lclavicle", "rclavicle",
                    "lhumerus", "rhumerus", "lradius", "rradius", "lhand", "rhand"],
    },
    "bandai": {
        "ntu-rgb+d": _ntu_map(_BANDAI_SIDE, ("Hips", ("Shoulder_L", "Shoulder_R")), ("Spine", "Chest"), "Neck",
                              "Head", lambda s: f"Hand_{s.upper()}", lambda s: f"Hand_{s.upper()}"),
        "h36m_17": _h36m_map(_BANDAI_SIDE, "Hips", "Spine", ("Neck", "Shoulder_L", "Shoulder_R"), "Head",
                             {"Head": 1.8, "Neck": -0.8}),
    },
}


def skeleton_kind(joint_names) -> str:
    """Which JOINT_MAPS entry fits these source joint names (all referenced names present)."""
    names = set(joint_names)
    for kind, maps in JOINT_MAPS.items():
        if all(_spec_names(s) <= names for s in maps["ntu-rgb+d"]):
            return kind
    raise DataError(f"no joint map for a skeleton with joints {sorted(names)[:8]}...; pass name_map=",
                    field="joint_names")


def _spec_names(spec) -> set[str]:
    return {spec} if isinstance(spec, str) else set(spec)


def map_weights(joint_names, name_map) -> np.ndarray:
    """(V_target, J_source) matrix W so that target = W @ source positions."""
    index = {n: i for i, n in enumerate(joint_names)}
    w = np.zeros((len(name_map), len(joint_names)))
    for v, spec in enumerate(name_map):
        weights = ({spec: 1.0} if isinstance(spec, str) else
                   dict(spec) if isinstance(spec, dict) else {n: 1.0 / len(spec) for n in spec})
        for name, weight in weights.items():
            if name not in index:
                raise DataError(f"target joint {v} needs source joint {name!r}, which the clip lacks",
                                field="name_map")
            w[v, index[name]] += weight
    return w


def _perturbation(conv, offset_scale: float, seed: int) -> np.ndarray:
    # One fixed factor per joint: the joint slides along its bone by that fraction of the
    # bone length. Rotation-equivariant, so it acts like a different marker placement.
    digest = sum((i + 1) * ord(ch) for i, ch in enumerate(conv.name))
    rng = np.random.default_rng([seed, digest])
    return rng.normal(0.0, offset_scale, conv.num_joints)


def map_to_convention(clip: MocapClip, conv, *, name_map=None, offset_scale: float = 0.0,
                      noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Positions (T, J, 3) of a mocap clip -> (T, V, 3) in convention `conv`.

    offset_scale > 0 moves each target joint along its bone by a fixed per-convention
    fraction ~ N(0, offset_scale); noise > 0 adds per-frame Gaussian jitter (metres). Both are
    seeded, so derived views differ from one another reproducibly.
    """
    from msclr_core.conventions import get_convention

    conv = get_convention(conv) if isinstance(conv, str) else conv
    if name_map is None:
        maps = JOINT_MAPS[skeleton_kind(clip.joint_names)]
        if conv.name not in maps:
            raise DataError(f"no joint map to {conv.name!r} for this skeleton (has {sorted(maps)})", field="conventions")
        name_map = maps[conv.name]
    if len(name_map) != conv.num_joints:
        raise DataError(f"name_map has {len(name_map)} entries, {conv.name} has {conv.num_joints} joints",
                        field="name_map")
    out = np.einsum("vj,tjc->tvc", map_weights(clip.joint_names, name_map), clip.positions)
    if offset_scale > 0:
        alpha = _perturbation(conv, offset_scale, seed)
        parents = np.asarray(conv.parents)
        has = parents >= 0
        out[:, has] += alpha[has, None] * (out[:, has] - out[:, parents[has]])
    if noise > 0:
        out += np.random.default_rng(seed).normal(0.0, noise, out.shape)
    return out.astype(np.float32)
