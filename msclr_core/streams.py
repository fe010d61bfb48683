"""Input streams of a skeleton sequence: joint, motion, bone (spec section 1.6).

All take and return N x C x T x V x M tensors at the convention's native V.
Bones use the convention's own parent array (b_j = x_j - x_parent(j), roots 0): the
official linear evaluation applied NTU's bone list to every format (spec section 6,
item 6); here each convention always brings its own.
"""

from __future__ import annotations

import torch

from msclr_core.conventions import Convention, get_convention
from msclr_core.errors import ConfigError, DataError

STREAMS = ("joint", "motion", "bone")


def motion(x: torch.Tensor) -> torch.Tensor:
    """m_t = x_{t+1} - x_t along T; the last frame is 0."""
    out = torch.zeros_like(x)
    out[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return out


def bone(x: torch.Tensor, conv: Convention) -> torch.Tensor:
    """b_j = x_j - x_parents[j] along V; a root is its own "parent", so its bone is 0."""
    parent = [p if p >= 0 else j for j, p in enumerate(conv.parents)]
    return x - x[:, :, :, parent]


def to_stream(x: torch.Tensor, conv: Convention | str, stream: str) -> torch.Tensor:
    """The `stream` ("joint" | "motion" | "bone") of x (N x C x T x V x M), same shape."""
    if stream not in STREAMS:
        raise ConfigError(f"unknown stream {stream!r}; expected one of {STREAMS}")
    conv = get_convention(conv)
    if x.dim() != 5 or x.shape[3] != conv.num_joints:
        raise DataError(
            f"expected N x C x T x {conv.num_joints} x M for convention {conv.name!r}, "
            f"got shape {tuple(x.shape)}", field="V")
    if stream == "joint":
        return x
    if stream == "motion":
        return motion(x)
    return bone(x, conv)
