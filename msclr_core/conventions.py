"""Skeleton conventions registry.

A convention is one way of writing down a human skeleton: an ordered list of joints,
an explicit parent array (bones point child -> parent, -1 marks a root), the ST-GCN
graph edges, the partition center, the left/right flip permutation (derived from the
joint names, never looked up by joint count), the native unit and dimensionality.

The raw tables live in `conventions_table.py`. Derivations made here:

- parents: a BFS tree over the (undirected) edges rooted at the ST-GCN center, so every
  bone points towards the center. For ntu-rgb+d and smpl_24 this reproduces the official
  (child, parent) edge pairs exactly; for berkeley_mhad_43, whose official pairs are
  unordered, it gives every non-root joint exactly one bone (spec section 6, item 7).
  A graph with several components (berkeley_mhad_43: 3; smplx_42: the two isolated eye
  joints leyehf/reyehf) gets one root per extra component: its lowest-index joint.
- flip: from the joint names (see `_mirror_name`); middle joints map to themselves.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from msclr_core.conventions_table import TABLES
from msclr_core.errors import ConfigError


@dataclass(frozen=True)
class Convention:
    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]  # parents[j] = parent joint of j (0-based); -1 for roots
    # ST-GCN graph edges, 0-based; (child, parent) order except berkeley_mhad_43's official
    # unordered pairs: take bones from `parents` / `.bones`, never from the edge order
    edges: tuple[tuple[int, int], ...]
    center: int  # ST-GCN spatial-partition center joint, 0-based
    flip: tuple[int, ...]  # flip[j] = joint that j becomes under a left/right mirror
    unit: str = "m"  # native unit of the source: "m", "mm" or "px" (2D image pixels)
    dims: int = 3  # 2 or 3

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs from the parent array; roots have no bone."""
        return tuple((j, p) for j, p in enumerate(self.parents) if p >= 0)


class UnknownConventionError(ConfigError, KeyError):
    """An unknown convention name: a ConfigError (CLI exit 2) that is still a KeyError."""

    __str__ = Exception.__str__  # KeyError would quote the message


# --- derivations -------------------------------------------------------------------------

def parents_from_edges(num_joints: int, edges, center: int) -> tuple[int, ...]:
    """BFS tree over undirected `edges` rooted at `center`; extra components are rooted
    at their lowest-index joint. Returns the parent array (-1 for roots)."""
    neighbours: list[list[int]] = [[] for _ in range(num_joints)]
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    parents = [-2] * num_joints  # -2 = not reached yet
    for root in [center] + list(range(num_joints)):
        if parents[root] != -2:
            continue
        parents[root] = -1
        todo = deque([root])
        while todo:
            j = todo.popleft()
            for k in sorted(neighbours[j]):
                if parents[k] == -2:
                    parents[k] = j
                    todo.append(k)
    return tuple(parents)


# (left form, right form) pairs, tried in order. The lowercase one-letter prefix of the
# MeTRAbs names (lsho/rsho, lear/rear) counts only when the twin name exists, so a
# middle joint that merely starts with "l" or "r" stays in the middle.
_SIDE_PATTERNS = [
    (re.compile(r"^L-(.+)$"), "L-{}", "R-{}", True),  # NTU: L-shoulder
    (re.compile(r"^R-(.+)$"), "R-{}", "L-{}", True),
    (re.compile(r"^left_(.+)$"), "left_{}", "right_{}", True),  # COCO/MediaPipe: left_eye
    (re.compile(r"^right_(.+)$"), "right_{}", "left_{}", True),
    (re.compile(r"^(.+)_left$"), "{}_left", "{}_right", True),  # MediaPipe: mouth_left
    (re.compile(r"^(.+)_right$"), "{}_right", "{}_left", True),
    (re.compile(r"^L([A-Z].*)$"), "L{}", "R{}", True),  # OpenPose: LShoulder
    (re.compile(r"^R([A-Z].*)$"), "R{}", "L{}", True),
    (re.compile(r"^l([a-z].*)$"), "l{}", "r{}", False),  # MeTRAbs: lsho
    (re.compile(r"^r([a-z].*)$"), "r{}", "l{}", False),
]


def _mirror_name(name: str, names: set[str], convention: str) -> str:
    """The left/right twin of `name`, or `name` itself for a middle joint."""
    for pattern, _, twin_form, twin_required in _SIDE_PATTERNS:
        match = pattern.match(name)
        if not match:
            continue
        twin = twin_form.format(match.group(1))
        if twin in names:
            return twin
        if twin_required:
            raise ConfigError(f"convention {convention!r}: joint {name!r} has no twin {twin!r}")
    return name


def flip_from_names(joint_names, convention: str = "?") -> tuple[int, ...]:
    index = {n: i for i, n in enumerate(joint_names)}
    return tuple(index[_mirror_name(n, set(index), convention)] for n in joint_names)


def validate(conv: Convention) -> None:
    """Raise ConfigError unless `conv` is self-consistent (used for every registry entry)."""
    where = f"convention {conv.name!r}"
    V = conv.num_joints
    if len(set(conv.joint_names)) != V:
        raise ConfigError(f"{where}: joint names are not unique")
    if len(conv.parents) != V or len(conv.flip) != V:
        raise ConfigError(f"{where}: parents/flip must have {V} entries")
    if not 0 <= conv.center < V:
        raise ConfigError(f"{where}: center {conv.center} out of range")
    for a, b in conv.edges:
        if not (0 <= a < V and 0 <= b < V) or a == b:
            raise ConfigError(f"{where}: bad edge ({a}, {b})")
    for j, p in enumerate(conv.parents):  # forest: every chain of parents reaches a root
        seen = {j}
        while p != -1:
            if not 0 <= p < V or p in seen:
                raise ConfigError(f"{where}: parent chain of joint {j} is invalid or cyclic")
            seen.add(p)
            p = conv.parents[p]
    if sorted(conv.flip) != list(range(V)) or any(conv.flip[conv.flip[j]] != j for j in range(V)):
        raise ConfigError(f"{where}: flip is not an involutive permutation")
    if conv.dims not in (2, 3) or conv.unit not in ("m", "mm", "px"):
        raise ConfigError(f"{where}: unsupported dims {conv.dims} / unit {conv.unit!r}")


def _parse_table(name: str, table: dict) -> Convention:
    names = tuple(table["joints"].split())
    index = {n: i for i, n in enumerate(names)}
    if "edges_1based" in table:
        pairs = re.findall(r"\((\d+),(\d+)\)", table["edges_1based"])
        edges = tuple((int(a) - 1, int(b) - 1) for a, b in pairs)
    else:  # chains from the center outwards: store each link as (child, parent)
        links = []
        for chain in table["chains"].split():
            joints = [index[j] for j in chain.split("-")]
            links += [(child, parent) for parent, child in zip(joints, joints[1:])]
        edges = tuple(links)
    center = index[table["center"]]
    conv = Convention(
        name=name,
        joint_names=names,
        parents=parents_from_edges(len(names), edges, center),
        edges=edges,
        center=center,
        flip=flip_from_names(names, name),
        unit=table["unit"],
        dims=table.get("dims", 3),
    )
    validate(conv)
    return conv


REGISTRY: dict[str, Convention] = {name: _parse_table(name, t) for name, t in TABLES.items()}


def get_convention(name: str | Convention) -> Convention:
    """The registered convention `name` (a Convention passes through unchanged)."""
    if isinstance(name, Convention):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownConventionError(f"unknown skeleton convention {name!r}; known: {known}") from None


def list_conventions() -> list[str]:
    return list(REGISTRY)
