"""Motion-capture readers (BVH, ASF/AMC) with forward kinematics, and joint maps from
full-body mocap skeletons to the registry conventions.

Both readers return a `MocapClip` of world joint positions in metres (the file's own
axes: CMU and most BVH files are Y up). A full-body mocap skeleton is denser than any
convention, so one clip yields several conventions of the same motion (`map_to_convention`);
`import_real_mocap_npz` turns the prepared real-mocap files (../shared/data/real-mocap) into
a multi-convention dataset.

Rotation conventions (column vectors, right-handed, degrees in the files):
- BVH: a joint's local rotation is the product of its rotation channels in the order they
  are listed, e.g. `Zrotation Xrotation Yrotation` -> R = Rz·Rx·Ry. Position channels add
  to the OFFSET. World: R_j = R_parent·R_local, p_j = p_parent + R_parent·(offset + translation).
  BVH has no unit field: pass `unit` (default "cm", as in the Bandai and most BVH exports).
- ASF/AMC (Acclaim): each bone has a rest direction (world frame), a length and an `axis`
  (a, b, c) with order e.g. XYZ -> C = Rz(c)·Ry(b)·Rx(a). The AMC dof angles give
  M = product in dof order with the first listed applied first ("rx ry rz" -> Rz·Ry·Rx).
  World rotation of a bone: W = W_parent·C·M·C⁻¹; its end point = parent end point +
  length·W·direction. Lengths and the root translation are stored in inches × the ASF
  `:units length` factor (CMU: 0.45), so metres = value / length × 0.0254.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError

UNITS_M = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254}


@dataclass
class MocapClip:
    joint_names: list[str]
    parents: np.ndarray  # int, parents[j] = parent joint, -1 for the root
    positions: np.ndarray  # float32 (T, J, 3), metres, world frame
    fps: float


def _rot(axis: str, deg: np.ndarray) -> np.ndarray:
    """Elementary rotation matrices (..., 3, 3) about x, y or z by `deg` degrees."""
    a = np.deg2rad(np.asarray(deg, dtype=np.float64))
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    rows = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
            "y": [[c, z, s], [z, o, z], [-s, z, c]],
            "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis.lower()]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def _compose(axes: str, angles) -> np.ndarray:
    """R = R_axes[0](angles[0]) · R_axes[1](angles[1]) · ... (the BVH channel order)."""
    out = None
    for axis, deg in zip(axes, angles):
        r = _rot(axis, deg)
        out = r if out is None else out @ r
    return out


# ----------------------------------------------------------------------------- BVH

def _bvh_tokens(path: Path):
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"cannot read BVH file: {err.strerror or err}", path=path) from None
    lines = text.splitlines()
    return lines, [(tok, n + 1) for n, line in enumerate(lines) for tok in line.split()]


def read_bvh(path, *, unit: str = "cm", end_sites: bool = True) -> MocapClip:
    """Read a BVH file and run forward kinematics. End Sites become joints named
    `<parent>_end` (head top, toe and finger tips) unless end_sites=False."""
    path = Path(path)
    if unit not in UNITS_M:
        raise DataError(f"unit must be one of {sorted(UNITS_M)}, got {unit!r}", path=path, field="unit")
    lines, toks = _bvh_tokens(path)
    pos = 0

    def take(expect=None):
        nonlocal pos
        if pos >= len(toks):
            raise DataError(f"unexpected end of file{f' (expected {expect!r})' if expect else ''}",
                            path=path, line=len(lines))
        tok, line = toks[pos]
        pos += 1
        if expect is not None and tok.upper() != expect.upper():
            raise DataError(f"expected {expect!r}, got {tok!r}", path=path, line=line)
        return tok, line

    def number(what):
        tok, line = take()
        try:
            return float(tok)
        except ValueError:
            raise DataError(f"expected a number for {what}, got {tok!r}", path=path, line=line) from None

    names, parents, offsets, channels, is_end = [], [], [], [], []

    def joint(parent: int, end: bool):
        name = f"{names[parent]}_end" if end else take()[0]
        take("{")
        j = len(names)
        names.append(name), parents.append(parent), is_end.append(end), channels.append([])
        take("OFFSET")
        offsets.append([number(f"OFFSET of {name}") for _ in range(3)])
        while True:
            tok, line = take()
            key = tok.upper()
            if key == "}":
                return
            if end:
                raise DataError(f"End Site may only hold an OFFSET, got {tok!r}", path=path, line=line)
            if key == "CHANNELS":
                count = int(number(f"CHANNELS count of {name}"))
                for _ in range(count):
                    ch, cline = take()
                    if ch.lower() not in {f"{a}{k}" for a in "xyz" for k in ("position", "rotation")}:
                        raise DataError(f"unknown channel {ch!r}", path=path, line=cline, field=name)
                    channels[j].append(ch.lower())
            elif key == "JOINT":
                joint(j, False)
            elif key == "END":
                take("Site")
                joint(j, True)
            else:
                raise DataError(f"unexpected {tok!r} in joint {name!r}", path=path, line=line)

    take("HIERARCHY")
    take("ROOT")
    joint(-1, False)
    take("MOTION")
    take("Frames:")
    frames = int(number("Frames"))
    take("Frame")
    take("Time:")
    frame_time = number("Frame Time")

    # Frame lines follow the "Frame Time" line: one line per frame, all channels.
    first = toks[pos - 1][1]
    width = sum(len(c) for c in channels)
    rows = [ln for ln in range(first, len(lines)) if lines[ln].strip()]
    if len(rows) < frames:
        raise DataError(f"file ends after {len(rows)} of {frames} frames (truncated?)", path=path, line=len(lines))
    motion = np.empty((frames, width))
    for i, ln in enumerate(rows[:frames]):
        vals = lines[ln].split()
        if len(vals) != width:
            raise DataError(f"frame {i} has {len(vals)} values, the hierarchy has {width} channels",
                            path=path, line=ln + 1)
        try:
            motion[i] = [float(v) for v in vals]
        except ValueError as err:
            raise DataError(f"frame {i}: {err}", path=path, line=ln + 1) from None

    scale = UNITS_M[unit]
    T, J = frames, len(names)
    glob_r = np.empty((J, T, 3, 3))
    glob_p = np.empty((J, T, 3))
    col = 0
    for j in range(J):
        trans = np.zeros((T, 3))
        rot_axes, rot_cols = "", []
        for ch in channels[j]:
            if ch.endswith("position"):
                trans[:, "xyz".index(ch[0])] = motion[:, col]
            else:
                rot_axes += ch[0]
                rot_cols.append(motion[:, col])
            col += 1
        local_r = _compose(rot_axes, rot_cols) if rot_axes else np.broadcast_to(np.eye(3), (T, 3, 3))
        local_p = np.asarray(offsets[j]) + trans
        if parents[j] < 0:
            glob_r[j], glob_p[j] = local_r, local_p
        else:
            pr = glob_r[parents[j]]
            glob_r[j] = pr @ local_r
            glob_p[j] = glob_p[parents[j]] + np.einsum("tij,tj->ti", pr, local_p)
    keep = [j for j in range(J) if end_sites or not is_end[j]]
    remap = {j: k for k, j in enumerate(keep)}
    return MocapClip(joint_names=[names[j] for j in keep],
                     parents=np.array([remap.get(parents[j], -1) for j in keep], dtype=np.int64),
                     positions=(glob_p[keep].transpose(1, 0, 2) * scale).astype(np.float32),
                     fps=1.0 / frame_time if frame_time > 0 else 0.0)


# ----------------------------------------------------------------------------- ASF/AMC

@dataclass
class _Bone:
    name: str
    direction: np.ndarray
    length: float
    c: np.ndarray  # axis rotation C
    dof: list[str]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=path) from None


def _floats(vals, path, line, what):
    try:
        return [float(v) for v in vals]
    except ValueError:
        raise DataError(f"expected numbers for {what}, got {' '.join(vals)!r}", path=path, line=line) from None


def _axis_matrix(vals, order, path, line):
    if sorted(order.lower()) != ["x", "y", "z"]:
        raise DataError(f"axis order must be a permutation of XYZ, got {order!r}", path=path, line=line)
    angles = dict(zip("xyz", _floats(vals, path, line, "axis")))
    # order "XYZ": rotate about x first -> C = Rz·Ry·Rx
    return _compose(order.lower()[::-1], [angles[a] for a in order.lower()[::-1]])


def _parse_asf(path: Path):
    lines = _read_lines(path)
    length_unit, degrees = 1.0, True
    root_order, root_axis, root_orient = ["tx", "ty", "tz", "rx", "ry", "rz"], ("XYZ", 0), ["0", "0", "0"]
    bones: dict[str, _Bone] = {}
    children: dict[str, list[str]] = {}
    section, cur = None, None
    for n, raw in enumerate(lines, start=1):
        parts = raw.split("#")[0].split()
        if not parts:
            continue
        key = parts[0].lower()
        if key.startswith(":"):
            section = key
            if len(parts) > 1 and key == ":units":  # tolerate values on the header line
                parts = parts[1:]
                key = parts[0].lower()
            else:
                continue
        if section == ":units":
            if key == "length":
                length_unit = _floats(parts[1:2], path, n, "units length")[0]
            elif key == "angle":
                degrees = parts[1].lower().startswith("deg")
        elif section == ":root":
            if key == "order":
                root_order = [p.lower() for p in parts[1:]]
            elif key == "axis" and len(parts) > 1:
                root_axis = (parts[1], n)
            elif key == "orientation":
                root_orient = parts[1:4]
        elif section == ":bonedata":
            if key == "begin":
                cur = {"line": n}
            elif key == "end":
                if cur is None or "name" not in cur:
                    raise DataError("bone without a name", path=path, line=n, field="bonedata")
                for f in ("direction", "length"):
                    if f not in cur:
                        raise DataError(f"bone {cur['name']!r} has no {f}", path=path, line=n, field=f)
                bones[cur["name"]] = _Bone(cur["name"], np.asarray(cur["direction"]), cur["length"],
                                           cur.get("c", np.eye(3)), cur.get("dof", []))
                cur = None
            elif cur is not None:
                if key == "name":
                    cur["name"] = parts[1]
                elif key == "direction":
                    cur["direction"] = _floats(parts[1:4], path, n, "direction")
                elif key == "length":
                    cur["length"] = _floats(parts[1:2], path, n, "length")[0]
                elif key == "axis":
                    if len(parts) != 5:
                        raise DataError("axis needs three angles and an order", path=path, line=n, field="axis")
                    cur["c"] = _axis_matrix(parts[1:4], parts[4], path, n)
                elif key == "dof":
                    cur["dof"] = [p.lower() for p in parts[1:]]
        elif section == ":hierarchy" and key not in ("begin", "end"):
            children.setdefault(parts[0], []).extend(parts[1:])
    if not bones:
        raise DataError("no :bonedata found", path=path, field="bonedata")
    if not degrees:  # store everything in degrees internally
        raise DataError("only ':units angle deg' is supported", path=path, field="units.angle")
    root_c = _axis_matrix(root_orient, root_axis[0], path, root_axis[1])
    return length_unit, root_order, root_c, bones, children


def _parse_amc(path: Path, dofs: dict[str, int]) -> list[dict[str, list[float]]]:
    frames: list[dict[str, list[float]]] = []
    for n, raw in enumerate(_read_lines(path), start=1):
        parts = raw.split("#")[0].split()
        if not parts or parts[0].startswith(":"):
            continue
        if len(parts) == 1 and parts[0].isdigit():
            frames.append({})
            continue
        if not frames:
            raise DataError(f"data before the first frame number: {raw.strip()!r}", path=path, line=n)
        name = parts[0]
        if name not in dofs:
            raise DataError(f"unknown bone {name!r} (not in the ASF)", path=path, line=n, field=name)
        vals = _floats(parts[1:], path, n, name)
        if len(vals) != dofs[name]:
            raise DataError(f"{name} has {len(vals)} values, the ASF declares {dofs[name]} dof",
                            path=path, line=n, field=name)
        frames[-1][name] = vals
    if not frames:
        raise DataError("no frames found", path=path)
    return frames


def read_asf_amc(asf_path, amc_path, *, fps: float = 120.0) -> MocapClip:
    """Skeleton (ASF) + motion (AMC) -> bone end points in metres. Joint 0 is the root;
    joint k is the end point of the k-th ASF bone. CMU files are captured at 120 fps."""
    asf_path, amc_path = Path(asf_path), Path(amc_path)
    length_unit, root_order, root_c, bones, children = _parse_asf(asf_path)
    order, parent = ["root"], {"root": None}
    for name in order:  # breadth-first: parents before children
        for child in children.get(name, []):
            if child not in bones:
                raise DataError(f"hierarchy names unknown bone {child!r}", path=asf_path, field="hierarchy")
            parent[child] = name
            order.append(child)
    missing = [b for b in bones if b not in parent]
    if missing:
        raise DataError(f"bones not reachable from root: {missing}", path=asf_path, field="hierarchy")
    frames = _parse_amc(amc_path, {"root": len(root_order), **{b: len(bones[b].dof) for b in bones}})
    T = len(frames)
    scale = 0.0254 / length_unit  # inches x length_unit -> metres

    def channel(name, dof):  # (T, len(dof)) angles, zeros where a frame omits the bone
        return np.array([f.get(name, [0.0] * len(dof)) for f in frames], dtype=np.float64).reshape(T, len(dof))

    root_vals = channel("root", root_order)
    tr = np.zeros((T, 3))
    rot_axes, rot_cols = "", []
    for k, ch in enumerate(root_order):
        if ch.startswith("t"):
            tr[:, "xyz".index(ch[1])] = root_vals[:, k]
        else:
            rot_axes, rot_cols = ch[1] + rot_axes, [root_vals[:, k]] + rot_cols  # first listed applied first
    m = _compose(rot_axes, rot_cols) if rot_axes else np.eye(3)
    world_r = {"root": root_c @ m @ root_c.T}
    world_p = {"root": tr * scale}
    for name in order[1:]:
        b = bones[name]
        vals = channel(name, b.dof)
        axes = "".join(d[1] for d in b.dof)[::-1]
        m = _compose(axes, [vals[:, k] for k in range(len(b.dof))][::-1]) if b.dof else np.eye(3)
        world_r[name] = world_r[parent[name]] @ b.c @ m @ b.c.T
        world_p[name] = world_p[parent[name]] + b.length * scale * (world_r[name] @ b.direction)
    names = ["root", *bones]  # the ASF bone order
    index = {n: i for i, n in enumerate(names)}
    positions = np.stack([np.broadcast_to(world_p[n], (T, 3)) for n in names], axis=1)
    parents = np.array([-1] + [index[parent[n]] for n in names[1:]], dtype=np.int64)
    return MocapClip(names, parents, positions.astype(np.float32), fps)


# ----------------------------------------------------------------------------- joint maps
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


# ----------------------------------------------------------------------------- real-mocap npz
_NPZ_KEYS = ("pos", "start", "length", "label", "label_names", "clip_names", "joint_names", "parents", "fps")


def _file_ntu_map(d, joint_names) -> list[tuple[str, ...]]:
    # The file's own NTU-25 map: NTU joint i = mean of native joints index[cum[i]:cum[i+1]].
    cum = np.concatenate([[0], np.cumsum(d["ntu25_group_len"])])
    return [tuple(joint_names[j] for j in d["ntu25_index"][cum[i]:cum[i + 1]]) for i in range(len(cum) - 1)]


def normalize_clip(x: np.ndarray, conv, T: int = 50) -> np.ndarray:
    """Clip-level normalisation of a C×T×V×M clip: subtract the first frame's root joint and
    turn the whole clip about y (one angle) so that the first frame's shoulders (R − L) face
    +x, then resize to T. Unlike the per-frame NTU pipeline it keeps the trajectory."""
    from msclr_core.data.preprocess import joints_for, resize_frames

    j = joints_for(conv)
    present = np.asarray(x).any(axis=(0, 1, 2))  # absent persons (all zero) stay zero
    x = x - x[:, :1, list(j.root), :1].mean(axis=2, keepdims=True)
    v = x[:, 0, j.rsho, 0] - x[:, 0, j.lsho, 0]
    c, s = np.cos(np.arctan2(v[2], v[0])), np.sin(np.arctan2(v[2], v[0]))
    out = x.copy()
    out[0], out[2] = c * x[0] + s * x[2], c * x[2] - s * x[0]
    out[..., ~present] = 0
    return resize_frames(out, T)


def import_real_mocap_npz(npz_path, out_dir, conventions=("ntu-rgb+d", "h36m_17"), *, T: int = 50,
                          normalize: str = "ntu", persons: int = 2, test_styles_from: int = 10, offset_scale: float = 0.0,
                          noise: float = 0.0, seed: int = 0, name: str | None = None, overwrite: bool = False):
    """One prepared real-mocap file (see ../shared/data/real-mocap/README.md) -> a dataset with
    one array per convention, all derived from the same motion. Positions stay in metres.

    normalize="ntu" (default): the official per-frame frame-50 pipeline (preprocess_clip:
    root-relative per frame, resize to T, per-frame shoulder y-alignment), as for NTU and
    estimator poses, so all datasets of the project share one input distribution.
    normalize="clip": `normalize_clip`, which keeps the root trajectory and the heading
    changes (on the Bandai style split a ridge probe on 16 frames of NTU-25 gets ~0.67 with
    "ntu" and ~0.76 with "clip": walk / walk-back / walk-left differ mostly by trajectory).

    Splits: Bandai files ("style") get protocol "style": styles < test_styles_from train, the
    rest test. CMU files ("subject") get protocol "subject": the highest subject id is the
    test set. ntu-rgb+d uses the file's own ntu25 map; other conventions use JOINT_MAPS.
    """
    from msclr_core.conventions import get_convention
    from msclr_core.data.dataset import write_dataset
    from msclr_core.data.preprocess import preprocess_clip

    npz_path = Path(npz_path)
    if normalize not in ("clip", "ntu"):
        raise DataError(f"normalize must be 'clip' or 'ntu', got {normalize!r}", field="normalize")
    try:
        d = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"not a readable .npz: {err}", path=npz_path) from None
    for key in _NPZ_KEYS:
        if key not in d.files:
            raise DataError("required key missing", path=npz_path, field=key)
    pos, start, length = d["pos"], d["start"].astype(np.int64), d["length"].astype(np.int64)
    joint_names = [str(n) for n in d["joint_names"]]
    clip_names = [str(n) for n in d["clip_names"]]
    n = len(start)
    if pos.ndim != 3 or pos.shape[1:] != (len(joint_names), 3):
        raise DataError(f"expected (frames, {len(joint_names)}, 3), got {pos.shape}", path=npz_path, field="pos")
    for key in ("length", "label", "clip_names"):
        if len(d[key]) != n:
            raise DataError(f"has {len(d[key])} entries, start has {n}", path=npz_path, field=key)
    bad = np.flatnonzero((start < 0) | (length < 1) | (start + length > len(pos)))
    if len(bad):
        raise DataError(f"clip range outside pos (start {start[bad[0]]}, length {length[bad[0]]})",
                        path=npz_path, sample=clip_names[bad[0]], field="start/length")

    skeleton_kind(joint_names)  # fail early when no joint map fits this skeleton
    arrays = {}
    for conv in conventions:
        name_map = _file_ntu_map(d, joint_names) if conv == "ntu-rgb+d" and "ntu25_index" in d.files else None
        out = np.zeros((n, 3, T, get_convention(conv).num_joints, persons), np.float32)
        for k in range(n):
            clip = MocapClip(joint_names, d["parents"], pos[start[k]:start[k] + length[k]], float(d["fps"]))
            xyz = map_to_convention(clip, conv, name_map=name_map, offset_scale=offset_scale, noise=noise,
                                    seed=seed + k)
            x = np.zeros((3, len(xyz), xyz.shape[1], persons), np.float32)
            x[..., 0] = xyz.transpose(2, 0, 1)
            out[k] = normalize_clip(x, conv, T) if normalize == "clip" else preprocess_clip(x, conv, T=T)
        arrays[conv] = out

    splits, meta = {}, {"frames": [int(v) for v in length]}
    if "style" in d.files:
        style = d["style"].astype(np.int64)
        meta["style"] = [str(d["style_names"][s]) if "style_names" in d.files else int(s) for s in style]
        splits["style"] = {"train": np.flatnonzero(style < test_styles_from), "test": np.flatnonzero(style >= test_styles_from)}
    if "subject" in d.files:
        subject = d["subject"].astype(np.int64)
        meta["subject"] = [int(s) for s in subject]
        splits["subject"] = {"train": np.flatnonzero(subject != subject.max()), "test": np.flatnonzero(subject == subject.max())}
    return write_dataset(out_dir, name=name or npz_path.stem, classes=[str(c) for c in d["label_names"]],
                         arrays=arrays, sample_names=clip_names, labels=d["label"].astype(np.int64), meta=meta,
                         splits=splits, units={c: "m" for c in conventions}, overwrite=overwrite)
