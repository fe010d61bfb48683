"""Acclaim ASF (skeleton) + AMC (motion) reader with forward kinematics -> `MocapClip`.

Each bone has a rest direction (world frame), a length and an `axis` (a, b, c) with order
e.g. XYZ -> C = Rz(c)·Ry(b)·Rx(a). The AMC dof angles give M = product in dof order with the
first listed applied first ("rx ry rz" -> Rz·Ry·Rx). World rotation of a bone:
W = W_parent·C·M·C⁻¹; its end point = parent end point + length·W·direction. Lengths and the
root translation are stored in inches × the ASF `:units length` factor (CMU: 0.45), so
metres = value / length × 0.0254.

Every error is a DataError naming the file and the line or field; numbers must be finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msclr_core.errors import DataError
from msclr_core.io_utils import read_regular_bytes

from .kinematics import MocapClip, _compose, finite_float, positions_f32

ROOT_DOFS = {"tx", "ty", "tz", "rx", "ry", "rz"}
BONE_DOFS = {"rx", "ry", "rz"}  # bone translation/length dofs (tx…, l) are not supported


@dataclass
class _Bone:
    name: str
    direction: np.ndarray
    length: float
    c: np.ndarray  # axis rotation C
    dof: list[str]


def _read_lines(path: Path) -> list[str]:
    try:
        return read_regular_bytes(path).decode("utf-8", errors="replace").splitlines()
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=path) from None


def _floats(vals, path, line, what, n=None):
    """Finite floats of `vals`; with n, exactly the first n values (more are ignored)."""
    if n is not None:
        if len(vals) < n:
            raise DataError(f"{what} needs {n} value(s), got {len(vals)}", path=path, line=line, field=what)
        vals = vals[:n]
    return [finite_float(v, path=path, line=line, what=what) for v in vals]


def _dofs(names, allowed, path, line, what):
    dofs = [p.lower() for p in names]
    unknown = [d for d in dofs if d not in allowed]
    if unknown:
        raise DataError(f"unsupported {what} {unknown[0]!r} (known: {sorted(allowed)})", path=path, line=line,
                        field=what)
    return dofs


def _axis_matrix(vals, order, path, line):
    if sorted(order.lower()) != ["x", "y", "z"]:
        raise DataError(f"axis order must be a permutation of XYZ, got {order!r}", path=path, line=line, field="axis")
    angles = dict(zip("xyz", _floats(vals, path, line, "axis", 3)))
    # order "XYZ": rotate about x first -> C = Rz·Ry·Rx
    return _compose(order.lower()[::-1], [angles[a] for a in order.lower()[::-1]])


def _parse_asf(path: Path):
    lines = _read_lines(path)
    length_unit, degrees = 1.0, True
    root_order, root_axis, root_orient = ["tx", "ty", "tz", "rx", "ry", "rz"], ("XYZ", 0), ["0", "0", "0"]
    bones: dict[str, _Bone] = {}
    children: dict[str, list[tuple[str, int]]] = {}
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
                length_unit = _floats(parts[1:], path, n, "units length", 1)[0]
                if length_unit <= 0:
                    raise DataError(f"units length must be > 0, got {length_unit}", path=path, line=n,
                                    field="units length")
            elif key == "angle":
                degrees = len(parts) > 1 and parts[1].lower().startswith("deg")
        elif section == ":root":
            if key == "order":
                root_order = _dofs(parts[1:], ROOT_DOFS, path, n, "root order")
            elif key == "axis" and len(parts) > 1:
                root_axis = (parts[1], n)
            elif key == "orientation":
                root_orient = parts[1:4]
                _floats(parts[1:], path, n, "root orientation", 3)
        elif section == ":bonedata":
            if key == "begin":
                cur = {"line": n}
            elif key == "end":
                _close_bone(cur, bones, path, n)
                cur = None
            elif cur is not None:
                if key == "name":
                    if len(parts) < 2 or parts[1] == "root":
                        raise DataError("a bone needs a name other than 'root'", path=path, line=n, field="name")
                    cur["name"] = parts[1]
                elif key == "direction":
                    cur["direction"] = _floats(parts[1:], path, n, "direction", 3)
                elif key == "length":
                    cur["length"] = _floats(parts[1:], path, n, "length", 1)[0]
                elif key == "axis":
                    if len(parts) != 5:
                        raise DataError("axis needs three angles and an order", path=path, line=n, field="axis")
                    cur["c"] = _axis_matrix(parts[1:4], parts[4], path, n)
                elif key == "dof":
                    cur["dof"] = _dofs(parts[1:], BONE_DOFS, path, n, "dof")
        elif section == ":hierarchy" and key not in ("begin", "end"):
            children.setdefault(parts[0], []).extend((c, n) for c in parts[1:])
    if not bones:
        raise DataError("no :bonedata found", path=path, field="bonedata")
    if not degrees:  # store everything in degrees internally
        raise DataError("only ':units angle deg' is supported", path=path, field="units.angle")
    root_c = _axis_matrix(root_orient, root_axis[0], path, root_axis[1])
    return length_unit, root_order, root_c, bones, children


def _close_bone(cur, bones, path, line):
    """Close a `begin … end` bone block."""
    if cur is None or "name" not in cur:
        raise DataError("bone without a name", path=path, line=line, field="bonedata")
    for f in ("direction", "length"):
        if f not in cur:
            raise DataError(f"bone {cur['name']!r} has no {f}", path=path, line=line, field=f)
    bones[cur["name"]] = _Bone(cur["name"], np.asarray(cur["direction"]), cur["length"],
                               cur.get("c", np.eye(3)), cur.get("dof", []))


def _bone_order(path, bones, children):
    """Bones breadth-first from the root (parents before children) and each one's parent.
    A bone may appear once: a second parent or a cycle is an error, not an endless loop."""
    order, parent = ["root"], {"root": None}
    for name in order:
        for child, line in children.get(name, []):
            if child not in bones:
                raise DataError(f"hierarchy names unknown bone {child!r}", path=path, line=line, field="hierarchy")
            if child in parent:
                raise DataError(f"bone {child!r} appears twice in the hierarchy", path=path, line=line,
                                field="hierarchy")
            parent[child] = name
            order.append(child)
    missing = [b for b in bones if b not in parent]
    if missing:
        raise DataError(f"bones not reachable from root: {missing}", path=path, field="hierarchy")
    return order, parent


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
        raise DataError("no frames found", path=path, field="frames")
    return frames


def read_asf_amc(asf_path, amc_path, *, fps: float = 120.0) -> MocapClip:
    """Skeleton (ASF) + motion (AMC) -> bone end points in metres. Joint 0 is the root;
    joint k is the end point of the k-th ASF bone. CMU files are captured at 120 fps."""
    asf_path, amc_path = Path(asf_path), Path(amc_path)
    length_unit, root_order, root_c, bones, children = _parse_asf(asf_path)
    order, parent = _bone_order(asf_path, bones, children)
    frames = _parse_amc(amc_path, {"root": len(root_order), **{b: len(bones[b].dof) for b in bones}})
    T = len(frames)
    scale = 0.0254 / length_unit  # inches x length_unit -> metres

    def channel(name, dof):  # (T, len(dof)) angles, zeros where a frame omits the bone
        return np.array([f.get(name, [0.0] * len(dof)) for f in frames], dtype=np.float64).reshape(T, len(dof))

    with np.errstate(over="ignore", invalid="ignore"):  # huge values: caught by positions_f32
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
        positions = np.stack([np.broadcast_to(world_p[n], (T, 3)) for n in names], axis=1)
    index = {n: i for i, n in enumerate(names)}
    parents = np.array([-1] + [index[parent[n]] for n in names[1:]], dtype=np.int64)
    return MocapClip(names, parents, positions_f32(positions, amc_path, names), fps)
