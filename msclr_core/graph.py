"""ST-GCN graph: the "spatial" partition of a convention's skeleton graph.

adjacency(conv) returns A of shape (K=3, V, V), float32, with A[k][j, i] the weight of
the message from joint j to joint i (ST-GCN aggregates as x @ A[k]):

- the graph is the undirected `conv.edges` plus self-links, column-normalised
  (A @ D^-1 with D the column sums, ST-GCN's `normalize_digraph`);
- K = 3 subsets, by comparing the hop distance to the center of the two end joints:
  A[0] = self-links ("root", hop 0),
  A[1] = hop-1 links between joints equally far from the center + links from a joint
         farther from the center (centripetal),
  A[2] = links from a joint closer to the center (centrifugal).

partition="official" reproduces ST-GCN's `max_hop=1` quirk used by the paper: hop
distances are only known up to 1, so every joint more than one hop from the center is at
"infinity", and a link between two such joints compares inf == inf and lands in A[1].
For NTU this leaves 8 nonzeros in A[2]. partition="hop" uses the true BFS distances.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

import numpy as np

from msclr_core.conventions import Convention, get_convention
from msclr_core.errors import ConfigError

PARTITIONS = ("official", "hop")


def hop_to_center(conv: Convention, max_hop: int | None = None) -> np.ndarray:
    """Hop distance of every joint to conv.center (inf beyond max_hop or unreachable)."""
    neighbours: list[list[int]] = [[] for _ in range(conv.num_joints)]
    for a, b in conv.edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    dist = np.full(conv.num_joints, np.inf)
    dist[conv.center] = 0
    todo = deque([conv.center])
    while todo:
        j = todo.popleft()
        if max_hop is not None and dist[j] >= max_hop:
            continue
        for k in neighbours[j]:
            if dist[k] == np.inf:
                dist[k] = dist[j] + 1
                todo.append(k)
    return dist


def normalized_adjacency(conv: Convention) -> np.ndarray:
    """(V, V) edges + self-links, each column divided by its sum (A @ D^-1)."""
    A = np.eye(conv.num_joints)
    for a, b in conv.edges:
        A[a, b] = A[b, a] = 1
    return A / A.sum(axis=0, keepdims=True)  # every column holds at least its self-link


@lru_cache(maxsize=None)
def _spatial(conv: Convention, partition: str) -> np.ndarray:
    dist = hop_to_center(conv, max_hop=1 if partition == "official" else None)
    norm = normalized_adjacency(conv)
    link = (norm > 0) & ~np.eye(conv.num_joints, dtype=bool)  # hop-1 pairs [j, i]
    d_from, d_to = dist[:, None], dist[None, :]  # hop of j (row), of i (column)
    # inf == inf is True here, as in ST-GCN: far joints fall into the root subset.
    root = np.diag(np.diag(norm))
    same_or_centripetal = np.where(link & (d_from >= d_to), norm, 0.0)
    centrifugal = np.where(link & (d_from < d_to), norm, 0.0)
    return np.stack([root, same_or_centripetal, centrifugal]).astype(np.float32)


def adjacency(conv: Convention | str, partition: str = "official") -> np.ndarray:
    """ST-GCN spatial-strategy adjacency (3, V, V) float32 of a convention (name or object)."""
    if partition not in PARTITIONS:
        raise ConfigError(f"unknown graph partition {partition!r}; expected one of {PARTITIONS}")
    return _spatial(get_convention(conv), partition).copy()  # callers may modify their copy
