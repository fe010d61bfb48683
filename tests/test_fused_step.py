"""The fused query views (MSCLR fused_views, view_batchnorm.batch_norm with groups) equal the plain
two-pass step: same loss, gradients, BatchNorm running statistics, key encoder and queue, in
float64, over a few SGD steps; and the channels-last gradients the CPU step relies on."""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from msclr_core.augment import aimclr_views
from msclr_core.builder import MSCLR
from msclr_core.conventions import get_convention
from msclr_core.model import UnifiedSTGCN
from msclr_core.view_batchnorm import batch_norm

CONVS = ["ntu-rgb+d", "smplx_42"]
# 3 blocks: a stride-2 block with a PointwiseConv residual and BN; mlp_bn: BNs in the head too
SMALL = dict(hidden_channels=4, hidden_dim=16, num_blocks=3, temporal_kernel=3, dropout=0.0, head="mlp_bn")
TIGHT = dict(rtol=1e-9, atol=1e-11)


def close(a, b):
    return torch.allclose(a, b, **TIGHT)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 tensors: one torch thread. Two OpenMP threads on a busy 2-core machine stall
    each other at every op (this file ran 4x slower with them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ batch_norm with groups
BN_CASES = {  # a fresh module per test: (module, shape of one view, memory format)
    "2d channels-last": (lambda: nn.BatchNorm2d(5), (4, 5, 6, 7), torch.channels_last),
    "2d contiguous": (lambda: nn.BatchNorm2d(5), (4, 5, 6, 7), torch.contiguous_format),
    "1d over (N, C, L)": (lambda: nn.BatchNorm1d(12), (3, 12, 9), torch.contiguous_format),
    "1d, affine-free": (lambda: nn.BatchNorm1d(6, affine=False), (4, 6), torch.contiguous_format),
    "cumulative average": (lambda: nn.BatchNorm1d(6, momentum=None), (4, 6), torch.contiguous_format),
}


@pytest.mark.parametrize("groups", [2, 3])
@pytest.mark.parametrize("case", list(BN_CASES))
def test_batch_norm_with_groups_equals_one_call_per_view(case, groups):
    make_bn, view_shape, memory_format = BN_CASES[case]
    shape = (view_shape[0] * groups, *view_shape[1:])
    torch.manual_seed(0)
    bn = make_bn().double().train()
    if bn.affine:
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
    ref = copy.deepcopy(bn)
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=memory_format)
    grad = torch.randn(shape, dtype=torch.float64)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(2):  # twice: the second call starts from updated running statistics
        want = torch.cat([ref(part) for part in x_ref.chunk(groups)])
        got = batch_norm(bn, x_new, groups)
        assert close(got, want)
        (want * grad).sum().backward()
        (got * grad).sum().backward()
    assert close(x_new.grad, x_ref.grad)
    if bn.affine:
        assert close(bn.weight.grad, ref.weight.grad) and close(bn.bias.grad, ref.bias.grad)
    assert close(bn.running_mean, ref.running_mean) and close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 2 * groups
    assert got.is_contiguous(memory_format=memory_format)
    with torch.no_grad():  # eval mode: running statistics, views or not
        assert torch.equal(batch_norm(bn.eval(), x, groups), bn(x))


def test_batch_norm_refuses_unequal_views():
    with pytest.raises(ValueError, match="equal views"):
        batch_norm(nn.BatchNorm1d(3).train(), torch.randn(5, 3), 2)


def test_encoder_with_two_views_equals_two_calls():
    torch.manual_seed(0)
    enc = UnifiedSTGCN(CONVS, feature_dim=8, **SMALL).double().train()
    ref = copy.deepcopy(enc)
    g = torch.Generator().manual_seed(1)
    x2, x1 = (torch.randn(3, 3, 12, 42, 2, generator=g, dtype=torch.float64) for _ in range(2))
    z, z_drop = enc(torch.cat([x2, x1]), "smplx_42", drop=True, groups=2)
    q = ref(x2, "smplx_42")
    q_e, q_ed = ref(x1, "smplx_42", drop=True)
    assert close(z, torch.cat([q, q_e])) and close(z_drop, q_ed)
    (z.sum() + z_drop.pow(2).sum()).backward()
    (q.sum() + q_e.sum() + q_ed.pow(2).sum()).backward()
    for (name, p), p_ref in zip(enc.named_parameters(), ref.parameters()):
        assert (p.grad is None) == (p_ref.grad is None), name
        assert p.grad is None or close(p.grad, p_ref.grad), name
    for (name, b), b_ref in zip(enc.named_buffers(), ref.buffers()):
        assert torch.allclose(b.double(), b_ref.double(), **TIGHT), name


# ------------------------------------------------------------------ the step, fused vs plain
def _pair(objective, mining_epoch, **overrides):
    torch.manual_seed(0)
    kwargs = dict(feature_dim=8, queue_size=48, momentum=0.9, temperature=0.1, mining_epoch=mining_epoch, **SMALL)
    kwargs.update(overrides)
    fused = MSCLR(CONVS, objective=objective, fused_views=True, **kwargs).double()
    plain = copy.deepcopy(fused)
    plain.fused_views = False
    return fused, plain


def _step(model, optimizer, x1, x2, x3, conv_q, conv_k, epoch):
    loss, stats = model(x1, x2, x3, conv_q, conv_k, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer.step()
    return loss.detach(), stats, grads


@pytest.mark.parametrize("objective, mining_epoch", [("aimclr", 1000), ("aimclr", 1), ("skeletonclr", 1000)],
                         ids=["aimclr", "aimclr-mining", "skeletonclr"])
def test_fused_step_equals_the_plain_step_in_float64(objective, mining_epoch, device="cpu"):
    """Three SGD steps (momentum, weight decay), cross- and same-convention pairs, epochs before
    and after mining_epoch: every loss, statistic, gradient, parameter, BN running statistic
    (query and key encoder), the key encoder's EMA and the queue agree."""
    fused, plain = (m.to(device) for m in _pair(objective, mining_epoch))
    assert fused.fuses_views() == (objective == "aimclr") and not plain.fuses_views()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) for m in (fused, plain)]
    g = torch.Generator().manual_seed(0)
    for step, (conv_q, conv_k, epoch) in enumerate([("ntu-rgb+d", "smplx_42", 1), ("smplx_42", "smplx_42", 2),
                                                    ("smplx_42", "ntu-rgb+d", 2)]):
        x_q = torch.randn(8, 3, 12, get_convention(conv_q).num_joints, 2, generator=g, dtype=torch.float64)
        x_k = torch.randn(8, 3, 12, get_convention(conv_k).num_joints, 2, generator=g, dtype=torch.float64)
        x1, x2, x3 = (v.to(device) for v in aimclr_views(x_q, x_k, conv_q, conv_k, torch.Generator().manual_seed(step)))
        (loss_f, stats_f, grads_f), (loss_p, stats_p, grads_p) = (
            _step(m, o, x1, x2, x3, conv_q, conv_k, epoch) for m, o in zip((fused, plain), opts))
        assert close(loss_f, loss_p), step
        assert stats_f.keys() == stats_p.keys() and all(close(stats_f[k], stats_p[k]) for k in stats_f), step
        assert grads_f.keys() == grads_p.keys() and len(grads_f) > 0
        for name in grads_f:
            assert close(grads_f[name], grads_p[name]), (step, name)
    state_f, state_p = fused.state_dict(), plain.state_dict()
    for name, value in state_f.items():
        if name == "_extra_state":  # the queue
            assert state_f[name]["ptr"] == state_p[name]["ptr"] == 24
            assert close(state_f[name]["queue"], state_p[name]["queue"])
        else:  # parameters and buffers of both encoders: running statistics, num_batches_tracked
            assert torch.allclose(value.double(), state_p[name].double(), **TIGHT), name


def test_views_fuse_by_default_only_where_exact_and_not_on_the_cpu():
    model = MSCLR(CONVS, objective="aimclr", feature_dim=8, queue_size=48, **SMALL)
    assert model.fused_views is None and not model.fuses_views()  # CPU: measured slower, see builder
    model.queue.queue = model.queue.queue.to("meta")  # stands for an accelerator here
    assert model.fuses_views()
    dropout = MSCLR(CONVS, objective="aimclr", feature_dim=8, queue_size=48, **{**SMALL, "dropout": 0.5})
    dropout.queue.queue = dropout.queue.queue.to("meta")
    assert not dropout.fuses_views()  # dropout masks would be drawn in another order
    assert dropout.eval().fuses_views()  # eval mode: no dropout, exact again
    dropout.fused_views = False  # an explicit setting wins
    assert not dropout.fuses_views()


def test_fused_views_with_dropout_train_and_match_in_eval_mode():
    fused, plain = _pair("aimclr", 1000, dropout=0.3)
    x1, x2, x3 = (torch.randn(4, 3, 12, 25, 2, dtype=torch.float64) for _ in range(3))
    with torch.no_grad():  # eval mode (running statistics, no dropout): the same function
        want, _ = plain.eval()(x1, x2, x3, "ntu-rgb+d", "ntu-rgb+d", 1)
        got, _ = fused.eval()(x1, x2, x3, "ntu-rgb+d", "ntu-rgb+d", 1)
    assert close(got, want)
    loss, _ = fused.train()(x1, x2, x3, "ntu-rgb+d", "ntu-rgb+d", 1)  # train mode: other masks, still a loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in fused.encoder_q.parameters()
                                        if p.grad is not None)


# ------------------------------------------------------------------ layouts
class _Layouts(TorchDispatchMode):
    """Records the memory layouts of the 4-D inputs of the backward's elementwise and BN ops."""

    OPS = ("threshold_backward", "native_batch_norm_backward", "add")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.OPS:
            four_d = [a for a in args if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[1] > 1]
            if len(four_d) >= 2:
                self.seen.append((func.__name__, [a.is_contiguous(memory_format=torch.channels_last)
                                                  for a in four_d]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("groups", [1, 2])
def test_backward_keeps_feature_map_gradients_channels_last(groups):
    """Every gradient of a block's feature map stays channels-last: mixed layouts sent the CPU's
    ReLU and BN backward to a slow path (the pooling, the strided residual's frame slice, the
    drop branch's view slice and the graph conv's matmul each returned contiguous ones)."""
    torch.manual_seed(0)
    enc = UnifiedSTGCN(CONVS, feature_dim=8, **SMALL).train()
    z, z_drop = enc(torch.randn(4 * groups, 3, 12, 42, 2), "smplx_42", drop=True, groups=groups)
    layouts = _Layouts()
    with layouts:
        (z.pow(2).sum() + z_drop.sum()).backward()
    assert len(layouts.seen) > 10
    mixed = [(op, cl) for op, cl in layouts.seen if not all(cl)]
    assert not mixed, mixed


# ------------------------------------------------------------------ CUDA (benchmarks/gpu_check.sh)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_fused_step_equals_the_plain_step():
    """On the GPU the per-view BN runs native_batch_norm(.out) where nn.BatchNorm may run cuDNN:
    the same maths in float64; under bf16 autocast (mixed BN: bf16 input, fp32 statistics) the
    fused step runs and its loss is the plain step's up to bf16 rounding."""
    test_fused_step_equals_the_plain_step_in_float64("aimclr", 1, device="cuda")
    fused, plain = (m.float().cuda() for m in _pair("aimclr", 1000))
    x_q = torch.randn(16, 3, 20, 25, 2, device="cuda")
    x1, x2, x3 = aimclr_views(x_q, x_q, "ntu-rgb+d", "ntu-rgb+d", torch.Generator(device="cuda").manual_seed(0))
    losses = []
    for model in (fused, plain):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model(x1, x2, x3, "ntu-rgb+d", "ntu-rgb+d", 1)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=0.03)
