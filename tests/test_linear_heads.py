"""LinearHeads: the closed-form SGD step equals nn.Linear + cross-entropy + torch.optim.SGD."""

import pytest
import torch
import torch.nn.functional as F

from msclr_core.linear_heads import LinearHeads, stack_features

C = 6


def _data(dims, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    feats = [torch.randn(n, d, generator=g, dtype=torch.float64) * 3 for d in dims]
    return feats, y


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.0, 0.0), (0.9, 1e-2)])
def test_step_matches_autograd_and_torch_sgd(momentum, weight_decay):
    dims = [5, 7]  # different widths: the 5-d head is zero-padded to 7
    feats, y = _data(dims)
    heads = LinearHeads(dims, C, momentum=momentum, weight_decay=weight_decay,
                        generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    init = torch.Generator().manual_seed(1)  # the same draws, head by head, as the official init
    ref = [torch.nn.Linear(d, C).double() for d in dims]
    with torch.no_grad():
        for lin, d in zip(ref, dims):
            lin.weight.copy_(torch.randn(C, d, generator=init, dtype=torch.float64) * 0.01)
            lin.bias.zero_()
    opt = torch.optim.SGD([p for lin in ref for p in lin.parameters()], lr=0.5, momentum=momentum,
                          weight_decay=weight_decay)
    x, onehot = stack_features(feats), torch.eye(C, dtype=torch.float64)[y]
    order = torch.Generator().manual_seed(2)
    for step in range(30):
        lr = 0.5 if step < 20 else 0.05  # a step decay, as the probe's milestones
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randperm(len(y), generator=order)[:16 if step % 3 else 11]  # a short batch too
        loss = sum(F.cross_entropy(lin(f[idx]), y[idx]) for lin, f in zip(ref, feats))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum = heads.step(x[:, idx], onehot[idx], lr)
        assert loss_sum.item() == pytest.approx(loss.item() * len(idx), rel=1e-12)
    for k, (lin, d) in enumerate(zip(ref, dims)):
        torch.testing.assert_close(heads.weight[k, :, :d], lin.weight.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(heads.bias[k], lin.bias.detach(), rtol=1e-10, atol=1e-12)
        assert torch.all(heads.weight[k, :, d:] == 0)  # padding never moves
        torch.testing.assert_close(heads.logits(x)[k], lin(feats[k]).detach(), rtol=1e-10, atol=1e-12)


def test_a_head_trains_bitwise_as_it_would_alone():
    """The ensemble's summed loss gives each head its own gradient; with per-head matmuls the
    rounding is that of the lone head too, so an ensemble member and a lone probe agree exactly."""
    feats, y = _data([64, 64], n=400)  # shapes where a batched matmul rounds differently
    feats = [f.float() for f in feats]
    onehot = torch.eye(C)[y]
    pair = LinearHeads([64, 64], C, generator=torch.Generator().manual_seed(3))
    alone = LinearHeads([64], C, generator=torch.Generator().manual_seed(3))
    x2, x1 = stack_features(feats), stack_features(feats[:1])
    order = torch.Generator().manual_seed(4)
    for _ in range(100):
        idx = torch.randperm(len(y), generator=order)[:128]
        pair.step(x2[:, idx], onehot[idx], 3.0)
        alone.step(x1[:, idx], onehot[idx], 3.0)
    assert torch.equal(pair.weight[0], alone.weight[0]) and torch.equal(pair.bias[0], alone.bias[0])
    assert not torch.equal(pair.weight[0], pair.weight[1])


def test_stack_features_pads_with_zeros():
    a, b = torch.ones(3, 2), torch.full((3, 4), 2.0)
    out = stack_features([a, b])
    assert out.shape == (2, 3, 4)
    assert torch.equal(out[0, :, :2], a) and torch.all(out[0, :, 2:] == 0) and torch.equal(out[1], b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_matches_cpu():
    """The same heads trained on a GPU follow the CPU run (benchmarks/gpu_check.sh runs this)."""
    feats, y = _data([32, 32], n=300)
    x, onehot = stack_features([f.float() for f in feats]), torch.eye(C)[y]
    runs = {}
    for dev in ("cpu", "cuda"):
        heads = LinearHeads([32, 32], C, generator=torch.Generator().manual_seed(5), device=dev)
        order = torch.Generator().manual_seed(6)
        for _ in range(20):
            idx = torch.randperm(len(y), generator=order)[:64]
            heads.step(x[:, idx].to(dev), onehot[idx].to(dev), 0.1)
        runs[dev] = heads.logits(x.to(dev)).cpu()
    torch.testing.assert_close(runs["cuda"], runs["cpu"], rtol=1e-4, atol=1e-4)
