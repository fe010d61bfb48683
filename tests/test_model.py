"""UnifiedSTGCN: shapes, shared vs per-convention parts, no padding leak, errors, grads,
bf16 autocast, SimAM drop, weight init."""

import pytest
import torch

from msclr_core.conventions import get_convention
from msclr_core.errors import ConfigError
from msclr_core.graph import adjacency
from msclr_core.model import UnifiedSTGCN, channel_plan, simam_drop

OFFICIAL = ["ntu-rgb+d", "smpl_24", "smplx_42", "berkeley_mhad_43"]
SMALL = dict(hidden_channels=8, hidden_dim=32, num_blocks=4, feature_dim=16)


def make(conventions=OFFICIAL, seed=0, **overrides):
    torch.manual_seed(seed)
    return UnifiedSTGCN(conventions, **{**SMALL, **overrides})


def clip(conv, n=2, t=16, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, t, get_convention(conv).num_joints, m, generator=g)


def is_per_convention(name: str) -> bool:
    return name.startswith(("data_bn.", "edge_importance."))


# ------------------------------------------------------------------ shapes
def test_default_channel_plan_is_the_official_quarter_width_stgcn():
    assert channel_plan(3, 16, 256, 10) == [
        (3, 16, 1), (16, 16, 1), (16, 16, 1), (16, 16, 1), (16, 32, 2),
        (32, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 256, 1),
    ]  # fmt: skip
    for n in range(1, 13):  # every depth: chains, ends at hidden_dim, at most two stride-2 blocks
        plan = channel_plan(3, 16, 256, n)
        assert len(plan) == n and plan[0][0] == 3 and plan[-1][1] == 256
        assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
        assert sum(s == 2 for _, _, s in plan) == min(n - 1, 2)


@pytest.mark.parametrize("t, m", [(16, 1), (16, 2), (50, 1), (50, 2)])
def test_output_shapes_for_every_official_convention(t, m):
    model = make()
    for conv in OFFICIAL:
        x = clip(conv, n=3, t=t, m=m)
        assert model(x, conv).shape == (3, 16)
        assert model.features(x, conv).shape == (3, 32)
        z, z_drop = model(x, conv, drop=True)
        assert z.shape == z_drop.shape == (3, 16)
        assert torch.isfinite(z).all() and torch.isfinite(z_drop).all()


def test_default_model_keeps_native_joints_and_halves_time_twice():
    torch.manual_seed(0)
    model = UnifiedSTGCN(["ntu-rgb+d", "smplx_42"])  # the paper's configuration
    fmap = model.feature_map(clip("smplx_42", n=2, t=50, m=2), "smplx_42")
    assert fmap.shape == (4, 256, 13, 42)  # N*M, hidden_dim, 50 -> 25 -> 13, native V
    assert model(clip("ntu-rgb+d", t=50), "ntu-rgb+d").shape == (2, 128)
    # official: block 1 has no residual and no dropout; dropout reaches blocks 2..N
    assert model.blocks[0].residual is None and model.blocks[0].tcn[-1].p == 0.0
    assert all(b.tcn[-1].p == 0.5 and b.residual is not None for b in model.blocks[1:])
    assert UnifiedSTGCN(["smpl_24"], head=None)(clip("smpl_24"), "smpl_24").shape == (2, 256)
    assert UnifiedSTGCN(["smpl_24"], head="linear", feature_dim=7)(clip("smpl_24"), "smpl_24").shape == (2, 7)


# ------------------------------------------------------------------ shared vs per convention
def test_per_convention_parts_have_native_shapes_and_adjacency_is_an_unpadded_buffer():
    model = make()
    for conv in OFFICIAL:
        V = get_convention(conv).num_joints
        assert model.data_bn[conv].num_features == 3 * V
        assert [tuple(p.shape) for p in model.edge_importance[conv]] == [(3, V, V)] * 4
        assert all(torch.equal(p, torch.ones(3, V, V)) for p in model.edge_importance[conv])
        buffers = dict(model.named_buffers())
        assert torch.equal(buffers[f"A_{conv}"], torch.from_numpy(adjacency(conv)))
    assert model.to(torch.float64).get_buffer("A_smpl_24").dtype == torch.float64  # moves with .to()


def test_adding_a_convention_adds_only_its_own_parameters():
    one, two = make(["ntu-rgb+d"]), make(["ntu-rgb+d", "smplx_42"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    V, blocks = 42, SMALL["num_blocks"]
    assert count(two) - count(one) == 2 * 3 * V + blocks * 3 * V * V  # data-BN gamma/beta + importance
    shared_one = {k: p for k, p in one.named_parameters() if not is_per_convention(k)}
    shared_two = {k: p for k, p in two.named_parameters() if not is_per_convention(k)}
    assert shared_one.keys() == shared_two.keys()
    # Shared parts are initialised first: same seed, same shared weights, whatever conventions follow.
    assert all(torch.equal(shared_one[k], shared_two[k]) for k in shared_one)


def test_gradient_reaches_shared_blocks_and_only_the_used_convention():
    model = make(["ntu-rgb+d", "smplx_42"], dropout=0.0)
    used_by = {}
    for conv in ("ntu-rgb+d", "smplx_42"):
        model.zero_grad(set_to_none=True)
        z, z_drop = model(clip(conv), conv, drop=True)
        (z.square().sum() + z_drop.square().sum()).backward()
        used_by[conv] = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        other = "smplx_42" if conv == "ntu-rgb+d" else "ntu-rgb+d"
        assert not any(name.startswith((f"data_bn.{other}.", f"edge_importance.{other}.")) for name in used_by[conv])
        assert {f"data_bn.{conv}.weight", f"edge_importance.{conv}.0", f"edge_importance.{conv}.3"} <= used_by[conv]
    shared = {name for name, _ in model.named_parameters() if not is_per_convention(name)}
    # the very same Parameter objects are trained by both conventions
    assert shared <= used_by["ntu-rgb+d"] and shared <= used_by["smplx_42"]


def test_no_padding_leak_into_batchnorm_statistics():
    """Shared BN statistics after a smplx_42 step must not depend on which other conventions
    the model knows (the official zero-padding to V_max made them depend on V_max)."""
    multi = make(["ntu-rgb+d", "smplx_42", "berkeley_mhad_43"], dropout=0.0)
    alone = make(["smplx_42"], dropout=0.0, seed=1)
    alone.load_state_dict({k: v for k, v in multi.state_dict().items() if k in alone.state_dict()})

    widths = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: widths.append(out.shape[-1])) for b in multi.blocks]
    x = clip("smplx_42", n=4)
    multi.train()(x, "smplx_42")
    alone.train()(x, "smplx_42")
    for h in hooks:
        h.remove()
    assert widths == [42] * SMALL["num_blocks"]  # no padded joint exists anywhere
    stats_multi, stats_alone = multi.blocks.state_dict(), alone.blocks.state_dict()
    running = [k for k in stats_multi if "running_" in k]
    assert running and all(torch.equal(stats_multi[k], stats_alone[k]) for k in running)
    assert not torch.equal(stats_multi[running[0]], torch.zeros_like(stats_multi[running[0]]))  # stats did move


# ------------------------------------------------------------------ errors
def test_bad_inputs_raise_config_errors_that_name_the_problem():
    model = make(["ntu-rgb+d", "smplx_42"])
    with pytest.raises(ConfigError, match=r"'smpl_24'.*ntu-rgb\+d.*smplx_42"):
        model(clip("smpl_24"), "smpl_24")
    with pytest.raises(ConfigError, match=r"V=42.*\(2, 3, 16, 25, 2\)"):
        model(clip("ntu-rgb+d"), "smplx_42")
    with pytest.raises(ConfigError, match=r"C=3.*\(2, 2, 16, 25, 2\)"):
        model.features(clip("ntu-rgb+d")[:, :2], "ntu-rgb+d")
    with pytest.raises(ConfigError, match="not-a-skeleton"):
        UnifiedSTGCN(["not-a-skeleton"])
    for bad in (dict(temporal_kernel=4), dict(num_blocks=0), dict(head="conv"), dict(dropout=1.0), dict(in_channels=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            UnifiedSTGCN(["ntu-rgb+d"], **bad)
    with pytest.raises(ConfigError, match="duplicate"):
        UnifiedSTGCN(["ntu-rgb+d", "ntu-rgb+d"])


# ------------------------------------------------------------------ precision
def test_bf16_autocast_on_cpu_is_finite_and_close_to_fp32():
    model = make(["smplx_42"], dropout=0.0, head=None)
    x = clip("smplx_42", n=4)
    ref = model(x, "smplx_42")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_drop = model(x, "smplx_42", drop=True)
    assert torch.isfinite(low).all() and torch.isfinite(low_drop).all()
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


# ------------------------------------------------------------------ SimAM drop
def test_simam_drop_zeroes_the_salient_joint_and_rescales_the_rest():
    g = torch.Generator().manual_seed(0)
    x = 1.0 + 0.01 * torch.randn(2, 4, 8, 5, generator=g)
    x[:, :, :, 2] += 10.0  # joint 2 stands out in every channel and frame
    out = simam_drop(x)
    assert torch.equal(out[..., 2], torch.zeros_like(out[..., 2]))
    # one joint of five dropped by the spatial mask, the same entries by the elementwise
    # (temporal) mask: the rest is rescaled by 5/4 twice
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(out[..., keep], x[..., keep] * (5 / 4) ** 2)


def test_simam_drop_keeps_a_flat_map_and_never_divides_by_zero():
    flat = torch.full((2, 3, 4, 5), 0.7)
    torch.testing.assert_close(simam_drop(flat), flat)  # no entry stands out: nothing dropped
    x = torch.randn(2, 3, 4, 5)
    everything = simam_drop(x, keep_prob=0.5)  # sigmoid(y >= 0.5) > 0.62: all dropped
    assert torch.isfinite(everything).all() and torch.equal(everything, torch.zeros_like(x))


def test_drop_branch_goes_through_the_same_head():
    model = make(["ntu-rgb+d"], dropout=0.0)  # train mode: batch statistics, deterministic
    x = clip("ntu-rgb+d")
    z, z_drop = model(x, "ntu-rgb+d", drop=True)
    fmap = model.feature_map(x, "ntu-rgb+d")
    torch.testing.assert_close(z_drop, model.fc(model._pool(simam_drop(fmap), 2)))
    torch.testing.assert_close(z, model(x, "ntu-rgb+d"))
    assert (z - z_drop).norm() > 0.01 * z.norm()  # the drop did change the features


# ------------------------------------------------------------------ init
def test_weight_init_follows_the_spec():
    model = make(["ntu-rgb+d"], hidden_dim=512)
    w, b = model.fc[0].weight, model.fc[0].bias  # 512 x 512 Linear
    assert abs(w.std().item() - 0.02) < 0.001 and abs(w.mean().item()) < 0.001
    assert torch.equal(b, torch.zeros_like(b))
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(gammas.mean().item() - 1.0) < 0.01 and 0.01 < gammas.std().item() < 0.03
    conv = model.blocks[3].gcn.weight
    assert abs(conv.std().item() - 0.02) < 0.003


def test_every_gradient_has_its_parameters_layout():
    """DDP copies every gradient whose strides differ from its parameter's into its buckets,
    each step ("Grad strides do not match bucket view strides"). The channels-last blocks must
    leave every gradient in the parameter's own layout (the strided residual's 1x1 conv did not)."""
    torch.manual_seed(0)
    model = UnifiedSTGCN(["ntu-rgb+d", "smpl_24"], hidden_channels=8, hidden_dim=32, num_blocks=4, dropout=0.0)
    for conv, V in (("ntu-rgb+d", 25), ("smpl_24", 24)):
        model(torch.randn(4, 3, 16, V, 2), conv, drop=True)[1].sum().backward()
    mismatched = [(name, p.stride(), p.grad.stride()) for name, p in model.named_parameters()
                  if p.grad is not None and p.grad.stride() != p.stride()]
    assert not mismatched, mismatched


def _official_block(block, x, A):
    """The official ST-GCN block, written plainly: 1x1 conv to K*C_out, einsum with A over the
    joints, tcn, + a strided 1x1 conv residual, ReLU (contiguous memory, no reordering)."""
    n, _, t, v = x.shape
    y = block.gcn(x).view(n, block.num_subsets, block.c_out, t, v)
    y = torch.einsum("nkctv,kvw->nctw", y, A)
    if block.residual is None:
        res = 0
    elif isinstance(block.residual, torch.nn.Identity):
        res = x
    else:
        conv, bn = block.residual
        res = bn(torch.nn.functional.conv2d(x, conv.weight, conv.bias, stride=(block.stride, 1)))
    return torch.relu(block.tcn(y) + res)


@pytest.mark.parametrize("c_in, c_out, stride", [(3, 8, 1), (8, 8, 1), (8, 16, 2), (4, 8, 2)])
def test_block_computes_the_official_function(c_in, c_out, stride):
    """The reordered block (graph conv as matmuls in channels-last memory, the strided residual
    as frame slicing + PointwiseConv) gives the official block's outputs and gradients."""
    from msclr_core.model import STGCNBlock

    torch.manual_seed(0)
    block = STGCNBlock(c_in, c_out, stride=stride).double().train()
    A = torch.as_tensor(adjacency("ntu-rgb+d"), dtype=torch.float64) * (1 + torch.rand(3, 25, 25, dtype=torch.float64))
    x = torch.randn(4, c_in, 12, 25, dtype=torch.float64)
    x_ours = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.clone().requires_grad_()
    ours, ref = block(x_ours, A), _official_block(block, x_ref, A)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    grads = torch.randn_like(ref)
    got = torch.autograd.grad(ours, [x_ours, *block.parameters()], grads)
    want = torch.autograd.grad(ref, [x_ref, *block.parameters()], grads)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("inplace", [True, False])
def test_cpu_dropout_is_dropout(inplace):
    """The CPU Dropout's fast mask keeps nn.Dropout's function: drop with probability p, scale
    the survivors by 1/(1-p), gradient through the same mask, identity in eval mode, and the
    same draws again after the same torch.manual_seed."""
    from msclr_core.model import Dropout

    p = 0.3
    drop = Dropout(p, inplace=inplace).train()
    x = torch.randn(200, 50, 100) + 5.0  # no exact zeros before the drop
    torch.manual_seed(7)
    y = drop(x.clone())
    kept = y != 0
    assert abs((~kept).float().mean().item() - p) < 0.005  # 1M draws: sd 0.0005
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    torch.manual_seed(7)
    assert torch.equal(drop(x.clone()), y)
    a = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    out = drop(a * 1.0)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(a.grad, (out != 0).float() / (1 - p))
    assert drop(x.to(torch.bfloat16)).dtype == torch.bfloat16  # autocast's dtype is kept
    drop.eval()
    assert torch.equal(drop(x.clone()), x)


def test_mlp_bn_head_gives_distinct_projections_at_initialisation():
    """The official head maps every clip to nearly one direction at init (why short MoCo runs
    collapse: every key and queue entry looks alike); BN in the head centres the projections."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 20, 25, 2)
    cos = {}
    for head in ("mlp", "mlp_bn"):
        torch.manual_seed(0)
        model = UnifiedSTGCN(["ntu-rgb+d"], hidden_channels=4, hidden_dim=16, num_blocks=2, head=head, feature_dim=8)
        z = torch.nn.functional.normalize(model(x, "ntu-rgb+d"), dim=1)
        off_diagonal = (z @ z.T).sum() - z.shape[0]
        cos[head] = float(off_diagonal / (z.shape[0] * (z.shape[0] - 1)))
    assert cos["mlp"] > 0.9 and abs(cos["mlp_bn"]) < 0.2, cos
    features = UnifiedSTGCN(["ntu-rgb+d"], hidden_channels=4, hidden_dim=16, num_blocks=2, head="mlp_bn").features(x, "ntu-rgb+d")
    assert features.shape == (64, 16)  # evaluation reads the pooled features, never the head
