"""MoCo negative queue: a ring buffer of past keys, identical on every rank.

Fixes the official enqueue (msclr-method.md §6.2): the write offset came from
`keys.device.index` (wrong on cuda:1, crashes on CPU, no DDP), and the pointer was advanced
outside `forward`. Here one `enqueue` call all-gathers the keys of every rank (rank order),
writes the global batch with wrap-around and advances the pointer.

The queue is a plain object, not an `nn.Module` buffer: DDP broadcasts every buffer on each
forward (128×32768 fp32 = 16 MiB per step) and `.half()` casts buffers. The owning module
(`builder.MSCLR`) moves it with the model and saves it in its checkpoint.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ConfigError


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collective_device(fallback: torch.device) -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU (and CUDA) tensors."""
    if "nccl" in str(dist.get_backend()).lower() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


def check_queue_size(size: int, global_batch: int, world_size: int | None = None) -> None:
    """Raise ConfigError unless `size` is a positive multiple of the global batch.

    With a multiple, every key stays in the queue for exactly size / global_batch steps and a
    write never splits oddly across the ring's end. Callable before training starts.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ConfigError(f"queue_size must be a positive integer, got {size!r}")
    if global_batch <= 0 or size % global_batch:
        where = "" if world_size is None else f" = {global_batch // world_size} per worker x world size {world_size}"
        raise ConfigError(
            f"queue_size={size} must be a multiple of the global batch size {global_batch}{where} "
            f"(e.g. queue_size={max(1, round(size / max(global_batch, 1))) * max(global_batch, 1)})"
        )


class MoCoQueue:
    """`queue`: Tensor[dim, size] of L2-normalised keys (columns); `ptr`: next column to write."""

    def __init__(self, dim: int, size: int, generator: torch.Generator | None = None, device=None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ConfigError(f"feature_dim must be a positive integer, got {dim!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ConfigError(f"queue_size must be a positive integer, got {size!r}")
        self.dim, self.size = dim, size
        gen_device = generator.device if generator is not None else "cpu"
        queue = F.normalize(torch.randn(dim, size, generator=generator, device=gen_device), dim=0)
        self.queue = queue.to(device if device is not None else gen_device)
        self.ptr = 0
        if _world_size() > 1:
            # A seeded generator already gives every rank the same queue; broadcasting rank 0's
            # copy also covers generator=None. This makes construction a collective: every
            # rank must build its queue (as it builds its model) at the same point.
            self._broadcast_from_rank0()

    @property
    def device(self) -> torch.device:
        return self.queue.device

    def _broadcast_from_rank0(self) -> None:
        buf = self.queue.to(_collective_device(self.queue.device))
        dist.broadcast(buf, src=0)
        self.queue.copy_(buf)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write this step's keys (all ranks', in rank order) at `ptr`; advance `ptr`."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be [batch, {self.dim}], got {tuple(keys.shape)}")
        # float32 before the collective: autocast may hand us bf16 keys, the queue stays fp32.
        keys = keys.detach().to(torch.float32)
        world = _world_size()
        if world > 1:
            local = keys.to(_collective_device(keys.device)).contiguous()
            parts = [torch.empty_like(local) for _ in range(world)]
            dist.all_gather(parts, local)
            keys = torch.cat(parts)
        batch = keys.shape[0]
        check_queue_size(self.size, batch, world if world > 1 else None)
        keys = keys.to(self.queue.device)
        first = min(batch, self.size - self.ptr)  # columns before the ring's end
        self.queue[:, self.ptr : self.ptr + first] = keys[:first].T
        self.queue[:, : batch - first] = keys[first:].T  # wrap-around (empty when it fits)
        self.ptr = (self.ptr + batch) % self.size

    def state_dict(self) -> dict:
        return {"queue": self.queue.detach().clone(), "ptr": int(self.ptr)}

    def load_state_dict(self, state: dict) -> None:
        queue, ptr = state["queue"], int(state["ptr"])
        if tuple(queue.shape) != (self.dim, self.size):
            raise ConfigError(
                f"checkpoint queue has shape {tuple(queue.shape)} but feature_dim={self.dim}, "
                f"queue_size={self.size}: resume with the same method.feature_dim and method.queue_size"
            )
        if not 0 <= ptr < self.size:
            raise ConfigError(f"checkpoint queue ptr={ptr} is outside [0, queue_size={self.size})")
        self.queue.copy_(queue)  # keeps our device and float32
        self.ptr = ptr

    def to(self, device) -> "MoCoQueue":
        """Move to `device`; the dtype stays float32 whatever the model is cast to."""
        self.queue = self.queue.to(device=device)
        return self

    def __repr__(self) -> str:
        return f"MoCoQueue(dim={self.dim}, size={self.size}, ptr={self.ptr}, device={self.device})"
