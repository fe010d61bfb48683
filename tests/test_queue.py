"""MoCoQueue: ring-buffer writes, pointer, validation, state, and a real 2-process gloo run."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from msclr_core.errors import ConfigError
from msclr_core.queue import MoCoQueue, check_queue_size


def keys_for(step: int, rank: int, batch: int, dim: int) -> torch.Tensor:
    """Recognisable keys: row i of rank r at step s is filled with 100*s + 10*r + i."""
    return (100 * step + 10 * rank + torch.arange(batch, dtype=torch.float32)).unsqueeze(1).repeat(1, dim)


def simulate(size: int, global_batches: list[list[float]]) -> tuple[list[float | None], int]:
    """Reference ring buffer on plain Python lists: column -> value written last."""
    cols: list[float | None] = [None] * size
    ptr = 0
    for batch in global_batches:
        for value in batch:
            cols[ptr] = value
            ptr = (ptr + 1) % size
    return cols, ptr


def test_initial_queue_is_normalised_and_seeded():
    a = MoCoQueue(8, 64, generator=torch.Generator().manual_seed(3))
    b = MoCoQueue(8, 64, generator=torch.Generator().manual_seed(3))
    c = MoCoQueue(8, 64, generator=torch.Generator().manual_seed(4))
    assert a.queue.shape == (8, 64) and a.queue.dtype == torch.float32 and a.ptr == 0
    torch.testing.assert_close(a.queue.norm(dim=0), torch.ones(64))
    assert torch.equal(a.queue, b.queue)
    assert not torch.allclose(a.queue, c.queue)


def test_enqueue_writes_columns_and_advances_ptr():
    q = MoCoQueue(3, 12, generator=torch.Generator().manual_seed(0))
    before = q.queue.clone()
    q.enqueue(keys_for(0, 0, 4, 3))
    assert q.ptr == 4
    assert torch.equal(q.queue[:, :4], keys_for(0, 0, 4, 3).T)
    assert torch.equal(q.queue[:, 4:], before[:, 4:])  # untouched
    q.enqueue(keys_for(1, 0, 4, 3))
    q.enqueue(keys_for(2, 0, 4, 3))
    assert q.ptr == 0  # a full turn
    q.enqueue(keys_for(3, 0, 4, 3))
    assert q.ptr == 4 and torch.equal(q.queue[:, :4], keys_for(3, 0, 4, 3).T)
    assert torch.equal(q.queue[:, 4:8], keys_for(1, 0, 4, 3).T)


def test_wrap_around_when_ptr_is_not_aligned():
    # Batches 4 then 6 then 6 (both divide 12): the third write covers columns 10, 11, 0..3.
    q = MoCoQueue(2, 12, generator=torch.Generator().manual_seed(0))
    sizes = [4, 6, 6, 4]
    for step, b in enumerate(sizes):
        q.enqueue(keys_for(step, 0, b, 2))
    expected, ptr = simulate(12, [keys_for(s, 0, b, 1)[:, 0].tolist() for s, b in enumerate(sizes)])
    assert q.ptr == ptr == 8
    assert q.queue[0].tolist() == expected
    assert torch.equal(q.queue[0], q.queue[1])


def test_keys_are_detached_and_stored_as_float32():
    q = MoCoQueue(4, 8, generator=torch.Generator().manual_seed(0))
    k = torch.randn(4, 4, requires_grad=True)
    q.enqueue((k * 2).to(torch.bfloat16))
    assert not q.queue.requires_grad and q.queue.grad_fn is None
    assert q.queue.dtype == torch.float32
    torch.testing.assert_close(q.queue[:, :4], (k * 2).to(torch.bfloat16).float().T.detach())


def test_bad_sizes_raise_config_error_naming_the_field():
    q = MoCoQueue(4, 12, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"queue_size=12.*global batch size 5"):
        q.enqueue(torch.randn(5, 4))
    assert q.ptr == 0  # nothing written
    with pytest.raises(ConfigError, match=r"queue_size=100.*128 = 32 per worker x world size 4"):
        check_queue_size(100, 128, world_size=4)
    with pytest.raises(ConfigError, match="queue_size"):
        check_queue_size(64, 128)  # batch larger than the queue
    check_queue_size(32768, 128)
    check_queue_size(256, 64, world_size=2)
    with pytest.raises(ConfigError, match="queue_size"):
        MoCoQueue(4, 0)
    with pytest.raises(ConfigError, match="feature_dim"):
        MoCoQueue(-1, 8)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        q.enqueue(torch.randn(4, 3))


def test_state_round_trip_and_copy_semantics():
    q = MoCoQueue(4, 16, generator=torch.Generator().manual_seed(1))
    q.enqueue(torch.randn(8, 4))
    state = q.state_dict()
    saved = state["queue"].clone()
    q.enqueue(torch.randn(8, 4))  # must not leak into the saved state
    assert torch.equal(state["queue"], saved) and state["ptr"] == 8

    r = MoCoQueue(4, 16, generator=torch.Generator().manual_seed(2))
    r.load_state_dict(state)
    assert torch.equal(r.queue, saved) and r.ptr == 8 and r.queue.dtype == torch.float32

    with pytest.raises(ConfigError, match="queue_size=32"):
        MoCoQueue(4, 32).load_state_dict(state)
    with pytest.raises(ConfigError, match="ptr"):
        r.load_state_dict({"queue": saved, "ptr": 16})


def test_to_moves_and_keeps_float32():
    q = MoCoQueue(4, 8, generator=torch.Generator().manual_seed(0))
    assert q.to("cpu") is q and q.device == torch.device("cpu") and q.queue.dtype == torch.float32


# ------------------------------------------------------------------ two processes, gloo


def _dist_worker(rank: int, world: int, rendezvous: str, out_dir: str, sizes: list[int]) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # generator=None draws differently per rank: broadcast must fix that
        q = MoCoQueue(3, 24)
        initial = q.queue.clone()
        for step, local in enumerate(sizes):
            q.enqueue(keys_for(step, rank, local, 3))
        error = ""
        try:
            q.enqueue(keys_for(99, rank, 5, 3))  # global batch 10 does not divide 24
        except ConfigError as exc:
            error = str(exc)
        torch.save({"initial": initial, "queue": q.queue, "ptr": q.ptr, "error": error}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_queues_agree_and_hold_both_ranks_keys(tmp_path):
    # Local batches 2, 3, 3, 2, 3, 3 -> global 4, 6, 6, 4, 6, 6 on a ring of 24 columns:
    # ptr 0 -> 4 -> 10 -> 16 -> 20 -> 2 (that write wraps: columns 20..23, 0, 1) -> 8.
    sizes = [2, 3, 3, 2, 3, 3]
    world = 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(
        _dist_worker,
        args=(world, str(tmp_path / "rendezvous"), str(tmp_path), sizes),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(world))
    assert torch.equal(r0["initial"], r1["initial"])  # rank 0's initial queue was broadcast
    assert torch.equal(r0["queue"], r1["queue"]) and r0["ptr"] == r1["ptr"]

    # Expected contents: each step's global batch is rank 0's keys, then rank 1's.
    global_batches = [
        keys_for(s, 0, b, 1)[:, 0].tolist() + keys_for(s, 1, b, 1)[:, 0].tolist() for s, b in enumerate(sizes)
    ]
    expected, ptr = simulate(24, global_batches)
    assert sum(2 * b for b in sizes) > 24  # the run really wrapped around
    assert r0["ptr"] == ptr
    for col, value in enumerate(expected):
        if value is None:  # never written: still the broadcast initial column
            assert torch.equal(r0["queue"][:, col], r0["initial"][:, col])
        else:
            assert r0["queue"][:, col].tolist() == [value] * 3, col
    assert "queue_size=24" in r0["error"] and "world size 2" in r1["error"]
