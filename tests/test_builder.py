"""MSCLR builder: key encoder copy and EMA, queue plumbing, the §1.4 losses, checkpoints."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from msclr_core.builder import MSCLR
from msclr_core.conventions import get_convention
from msclr_core.errors import ConfigError

CONVS = ["ntu-rgb+d", "smplx_42"]
TINY = dict(hidden_channels=8, hidden_dim=16, num_blocks=2, temporal_kernel=3, dropout=0.0)
B, T, QUEUE, DIM = 8, 16, 64, 16


def make(objective="aimclr", seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(feature_dim=DIM, queue_size=QUEUE, mining_epoch=2, **TINY)
    kwargs.update(overrides)
    return MSCLR(CONVS, objective=objective, **kwargs)


def clip(conv: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, T, get_convention(conv).num_joints, 2, generator=g)


def views(seed=0, conv_q="ntu-rgb+d", conv_k="smplx_42"):
    """x1, x2 in the query convention, x3 in the key convention (cross-convention pair)."""
    return clip(conv_q, seed), clip(conv_q, seed + 1), clip(conv_k, seed + 2)


def perturb_query_encoder(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def reference_aimclr(model, x1, x2, x3, conv_q, conv_k, epoch):
    """msclr-method.md §1.4 written out independently, on a copy of the model."""
    m = copy.deepcopy(model)
    queue = m.queue.queue.clone()  # negatives: the queue before this step's enqueue
    q = F.normalize(m.encoder_q(x2, conv_q), dim=1)
    q_e, q_ed = (F.normalize(z, dim=1) for z in m.encoder_q(x1, conv_q, drop=True))
    with torch.no_grad():
        for p_k, p_q in zip(m.encoder_k.parameters(), m.encoder_q.parameters()):
            p_k.copy_(m.momentum * p_k + (1 - m.momentum) * p_q)
        k = F.normalize(m.encoder_k(x3, conv_k), dim=1)

    def z(a):
        pos = torch.einsum("nc,nc->n", a, k).unsqueeze(1)
        return torch.cat([pos, torch.einsum("nc,ck->nk", a, queue)], dim=1) / m.temperature

    p = torch.softmax(z(q), dim=1).detach()
    d3m = 0.5 * (
        (-(p * torch.log(torch.softmax(z(q_e), dim=1))).sum(1)).mean()
        + (-(p * torch.log(torch.softmax(z(q_ed), dim=1))).sum(1)).mean()
    )
    mask = torch.zeros(B, 1 + queue.shape[1])
    mask[:, 0] = 1
    if epoch <= m.mining_epoch:
        info = F.cross_entropy(z(q), torch.zeros(B, dtype=torch.long))
    else:
        for a in (q, q_e, q_ed):  # topk = 1
            mask[torch.arange(B), 1 + (a @ queue).argmax(dim=1)] = 1
        info = -(torch.log_softmax(z(q), dim=1) * mask).sum(1).div(mask.sum(1)).mean()
    return info + d3m, info, d3m, mask.sum(1).mean()


def test_key_encoder_is_a_frozen_copy_of_the_query_encoder_at_step_0():
    model = make()
    sd_q, sd_k = model.encoder_q.state_dict(), model.encoder_k.state_dict()
    assert sd_q.keys() == sd_k.keys()
    assert all(torch.equal(sd_q[n], sd_k[n]) for n in sd_q)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    assert all(p.requires_grad for p in model.encoder_q.parameters())
    assert model.encoder_k.fc is not model.encoder_q.fc  # a copy, not shared modules
    # the queue is neither a parameter nor a buffer (DDP must not broadcast it)
    assert not any("queue" in n for n, _ in model.named_buffers())


def test_momentum_update_follows_the_formula_and_copies_buffers():
    model = make(momentum=0.9)
    perturb_query_encoder(model)
    bn_q = next(m for m in model.encoder_q.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    bn_q.running_mean.normal_()
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    params_q = [p.clone() for p in model.encoder_q.parameters()]
    model._momentum_update_key_encoder()
    for p_k, k0, q in zip(model.encoder_k.parameters(), before_k, params_q):
        torch.testing.assert_close(p_k, 0.9 * k0 + 0.1 * q)
    assert any(not torch.equal(p_k, k0) for p_k, k0 in zip(model.encoder_k.parameters(), before_k))
    for b_q, b_k in zip(model.encoder_q.buffers(), model.encoder_k.buffers()):
        assert torch.equal(b_q, b_k)
    assert all(torch.equal(q, p) for q, p in zip(params_q, model.encoder_q.parameters()))  # f_q untouched


@pytest.mark.parametrize("epoch", [1, 2, 3])  # mining_epoch = 2: epochs 1, 2 InfoNCE; 3 mining
def test_aimclr_loss_matches_the_spec(epoch):
    model = make()
    perturb_query_encoder(model)  # so that the momentum update changes f_k
    x1, x2, x3 = views()
    want, want_info, want_d3m, want_pos = reference_aimclr(model, x1, x2, x3, "ntu-rgb+d", "smplx_42", epoch)
    loss, stats = model(x1, x2, x3, "ntu-rgb+d", "smplx_42", epoch)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["loss_info"], want_info, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["loss_d3m"], want_d3m, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats["pos_count"], want_pos)
    assert set(stats) == {"loss", "loss_info", "loss_d3m", "acc", "pos_count"}
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def test_forward_enqueues_the_normalised_keys_and_advances_the_queue():
    model = make()
    x1, x2, x3 = views()
    before = model.queue.queue.clone()
    model(x1, x2, x3, "ntu-rgb+d", "smplx_42", epoch=1)
    assert model.queue.ptr == B
    written = model.queue.queue[:, :B]
    torch.testing.assert_close(written.norm(dim=0), torch.ones(B))
    with torch.no_grad():  # the key encoder after the update, same batch -> the same keys
        k = F.normalize(model.encoder_k(x3, "smplx_42"), dim=1)
    torch.testing.assert_close(written, k.T)
    assert torch.equal(model.queue.queue[:, B:], before[:, B:])
    for _ in range(QUEUE // B - 1):
        model(x1, x2, x3, "ntu-rgb+d", "smplx_42", epoch=1)
    assert model.queue.ptr == 0  # one full turn


def test_backward_reaches_encoder_q_only():
    model = make()
    loss, _ = model(*views(), "ntu-rgb+d", "smplx_42", epoch=1)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.encoder_q.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.queue.queue.grad is None and not model.queue.queue.requires_grad


def test_nearest_neighbour_mining_starts_after_mining_epoch():
    model = make(mining_epoch=2)
    x = views()
    before, after = copy.deepcopy(model), copy.deepcopy(model)
    loss_plain, stats_plain = before(*x, "ntu-rgb+d", "smplx_42", epoch=2)
    loss_mined, stats_mined = after(*x, "ntu-rgb+d", "smplx_42", epoch=3)
    assert stats_plain["pos_count"] == 1
    assert 2 <= stats_mined["pos_count"] <= 4
    assert not torch.isclose(loss_plain, loss_mined)
    torch.testing.assert_close(stats_plain["loss_d3m"], stats_mined["loss_d3m"])  # D3M unchanged
    topk3 = make(mining_epoch=2, topk=3)
    _, stats3 = topk3(*x, "ntu-rgb+d", "smplx_42", epoch=3)
    assert stats3["pos_count"] > stats_mined["pos_count"] and stats3["pos_count"] <= 10


def test_skeletonclr_ignores_x1_and_uses_the_queue():
    model = make("skeletonclr")
    _, x2, x3 = views()
    loss, stats = model(None, x2, x3, "ntu-rgb+d", "smplx_42", epoch=500)
    assert set(stats) == {"loss", "loss_info", "acc", "pos_count"} and stats["pos_count"] == 1
    torch.testing.assert_close(loss, stats["loss_info"])
    loss.backward()
    assert model.queue.ptr == B
    with pytest.raises(ValueError, match="x1"):
        make()(None, x2, x3, "ntu-rgb+d", "smplx_42", epoch=1)


@pytest.mark.parametrize("conv_q,conv_k", [("ntu-rgb+d", "smplx_42"), ("smplx_42", "ntu-rgb+d"), ("smplx_42", "smplx_42")])
def test_any_convention_pair_works(conv_q, conv_k):
    model = make()
    loss, stats = model(*views(conv_q=conv_q, conv_k=conv_k), conv_q, conv_k, epoch=1)
    assert torch.isfinite(loss) and 0 <= stats["acc"] <= 1


def test_to_moves_the_queue_but_never_casts_it():
    model = make()
    values = model.queue.queue.clone()
    model.to(torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert model.queue.queue.dtype == torch.float32 and torch.equal(model.queue.queue, values)
    model.half().to("cpu")
    assert model.queue.queue.dtype == torch.float32 and model.queue.device == torch.device("cpu")
    model.to("meta")  # a real device change that a CPU-only machine can do
    assert model.queue.device == torch.device("meta") and model.queue.queue.dtype == torch.float32


def test_forward_under_float64_model_still_enqueues_float32():
    model = make().double()
    x1, x2, x3 = (x.double() for x in views())
    loss, _ = model(x1, x2, x3, "ntu-rgb+d", "smplx_42", epoch=1)
    assert torch.isfinite(loss) and model.queue.queue.dtype == torch.float32 and model.queue.ptr == B


def test_autocast_keeps_the_loss_and_queue_in_float32():
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = model(*views(), "ntu-rgb+d", "smplx_42", epoch=3)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model.queue.queue.dtype == torch.float32 and model.queue.ptr == B
    torch.testing.assert_close(model.queue.queue[:, :B].norm(dim=0), torch.ones(B))


def test_state_dict_round_trip_restores_queue_and_ptr():
    model = make()
    model(*views(), "ntu-rgb+d", "smplx_42", epoch=1)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)  # weights_only: the queue state is plain tensors and ints
    assert "_extra_state" in state
    other = make(seed=5, queue_seed=7)
    assert not torch.equal(other.queue.queue, model.queue.queue)
    other.load_state_dict(state)
    assert torch.equal(other.queue.queue, model.queue.queue) and other.queue.ptr == B
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters()))
    with pytest.raises(ConfigError, match="queue_size"):
        make(queue_size=2 * QUEUE).load_state_dict(state)


def test_config_errors_name_the_field():
    for field, kwargs in [
        ("objective", dict(objective="simclr")),
        ("momentum", dict(momentum=1.5)),
        ("temperature", dict(temperature=0.0)),
        ("topk", dict(topk=0)),
        ("queue_size", dict(queue_size=0)),
    ]:
        with pytest.raises(ConfigError, match=field):
            make(**kwargs)


def test_a_few_sgd_steps_on_a_fixed_batch_reduce_the_infonce_loss():
    model = make("skeletonclr", momentum=0.9, temperature=0.2)
    x = views(seed=3)
    frozen_queue = model.queue.state_dict()

    def infonce_against_frozen_queue() -> float:
        # The training queue fills with this very batch's keys (hard duplicates of the
        # positives), so measure against the initial random queue on a throw-away copy.
        probe = copy.deepcopy(model)
        probe.queue.load_state_dict(frozen_queue)
        with torch.no_grad():
            return float(probe(*x, "ntu-rgb+d", "smplx_42", epoch=1)[1]["loss_info"])

    start = infonce_against_frozen_queue()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(30):
        loss, _ = model(*x, "ntu-rgb+d", "smplx_42", epoch=1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = infonce_against_frozen_queue()
    assert end < 0.8 * start, (start, end)  # 0.67 -> 0.42 here
