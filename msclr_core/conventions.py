"""Skeleton conventions registry.

A convention is one way of writing down a human skeleton: an ordered list of joints,
an explicit parent array (bones point child -> parent, -1 marks a root), the ST-GCN
graph edges, the partition center, the left/right flip permutation (derived from the
joint names, never looked up by joint count), the native unit and dimensionality.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Convention:
    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]  # parents[j] = parent joint of j (0-based); -1 for roots
    edges: tuple[tuple[int, int], ...]  # ST-GCN graph edges, 0-based (child, parent) pairs
    center: int  # ST-GCN spatial-partition center joint, 0-based
    flip: tuple[int, ...]  # flip[j] = joint that j becomes under a left/right mirror
    unit: str = "m"  # native unit of the source: "m" or "mm"
    dims: int = 3  # 2 or 3

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(child, parent) pairs from the parent array; roots have no bone."""
        return tuple((j, p) for j, p in enumerate(self.parents) if p >= 0)


# Filled in below (one entry per convention); use get_convention / list_conventions.
REGISTRY: dict[str, Convention] = {}


def get_convention(name: str) -> Convention:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown skeleton convention {name!r}; known: {known}") from None


def list_conventions() -> list[str]:
    return list(REGISTRY)
