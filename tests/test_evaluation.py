"""Evaluation math on synthetic features with known answers, and feature extraction with the real encoder."""

import numpy as np
import pytest
import torch

from msclr_core import evaluation as E
from msclr_core.errors import ConfigError, DataError

C, D = 10, 32


def draw(mu, n, noise, g):
    """n samples of class c ~ N(mu_c, noise^2 I), classes uniform."""
    y = torch.randint(0, len(mu), (n,), generator=g)
    return mu[y] + noise * torch.randn(n, mu.shape[1], generator=g), y


def clusters(n_train=600, n_test=300, n_val=0, noise=1.2, seed=0):
    """Gaussian clusters, centres mu_c ~ N(0, I): (x_train, y_train, x_test, y_test[, x_val, y_val]).
    noise=1.2 leaves ~3% of test samples on the wrong side, so the > 0.9 bars are not trivial."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, D, generator=g)
    sizes = (n_train, n_test, n_val) if n_val else (n_train, n_test)
    return tuple(t for n in sizes for t in draw(mu, n, noise, g))


FAST = dict(epochs=30, milestones=(20,), eval_every=5)


# ---------------------------------------------------------------- linear probe / kNN


def test_linear_probe_learns_clusters_and_reports_last_epoch():
    xtr, ytr, xte, yte = clusters()
    res = E.linear_probe(xtr, ytr, xte, yte, C, **FAST)
    assert res.top1 > 0.9
    assert res.top5 >= res.top1
    assert res.test_logits.shape == (300, C)
    assert [h["epoch"] for h in res.history] == [5, 10, 15, 20, 25, 30]
    assert res.history[-1]["test_top1"] == res.top1  # the reported number is the last epoch's
    assert res.history[-1]["train_loss"] < 0.1
    assert res.best_val_epoch is None and res.history[-1]["val_top1"] is None
    assert res.protocol["reported_epoch"] == "last" and res.protocol["frozen"] is True
    assert res.protocol["epochs"] == 30 and res.protocol["lr"] == 3.0


def test_linear_probe_on_random_labels_is_near_chance():
    xtr, _, xte, _ = clusters()
    g = torch.Generator().manual_seed(1)
    ytr, yte = torch.randint(0, C, (600,), generator=g), torch.randint(0, C, (300,), generator=g)
    assert E.linear_probe(xtr, ytr, xte, yte, C, **FAST).top1 < 0.25
    assert E.knn_accuracy(xtr, ytr, xte, yte) < 0.25


def test_linear_probe_with_val_reports_last_epoch_and_best_val():
    xtr, ytr, xte, yte, xva, yva = clusters(n_val=200)
    res = E.linear_probe(xtr, ytr, xte, yte, C, val=(xva, yva), eval_every=1, epochs=12, milestones=(8,))
    vals = [h["val_top1"] for h in res.history]
    assert len(vals) == 12 and all(v is not None for v in vals)
    assert res.best_val_top1 == max(vals)
    best_row = next(h for h in res.history if h["epoch"] == res.best_val_epoch)
    assert best_row["val_top1"] == max(vals) and res.test_top1_at_best_val == best_row["test_top1"]
    assert res.top1 == res.history[-1]["test_top1"]  # still the last epoch, not the best one
    assert res.protocol["best_on_validation"] is True


def test_linear_probe_is_deterministic_given_seed():
    xtr, ytr, xte, yte = clusters(noise=1.5)
    a = E.linear_probe(xtr, ytr, xte, yte, C, seed=3, epochs=5)
    b = E.linear_probe(xtr, ytr, xte, yte, C, seed=3, epochs=5)
    c = E.linear_probe(xtr, ytr, xte, yte, C, seed=4, epochs=5)
    assert torch.equal(a.test_logits, b.test_logits) and a.history == b.history
    assert not torch.equal(a.test_logits, c.test_logits)


def test_standardize_makes_the_probe_affine_invariant():
    xtr, ytr, xte, yte = clusters()
    shift, scale = 50.0, 20.0
    res = E.linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte, C, standardize=True, **FAST)
    ref = E.linear_probe(xtr, ytr, xte, yte, C, standardize=True, **FAST)
    assert res.top1 > 0.9 and res.protocol["standardize"] is True
    assert torch.allclose(res.test_logits, ref.test_logits, rtol=1e-3, atol=1e-3)
    raw = E.linear_probe(xtr * scale + shift, ytr, xte * scale + shift, yte, C, **FAST)
    assert not torch.allclose(raw.test_logits, ref.test_logits, atol=1e-2)  # off by default


def test_knn_on_clusters():
    xtr, ytr, xte, yte = clusters()
    assert E.knn_accuracy(xtr, ytr, xte, yte, k=20, num_classes=C, batch_size=64) > 0.9
    # chunking does not change the answer
    assert E.knn_accuracy(xtr, ytr, xte, yte, batch_size=7) == E.knn_accuracy(xtr, ytr, xte, yte)


def test_knn_weights_votes_by_similarity():
    # one neighbour of class 0 almost identical, two of class 1 far away: exp(sim/t) lets class 0 win
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    ytr = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 0.05]])
    assert E.knn_accuracy(train, ytr, test, torch.tensor([0]), k=3, temperature=0.07) == 1.0
    assert E.knn_accuracy(train, ytr, test, torch.tensor([1]), k=3, temperature=100.0) == 1.0  # ~uniform votes


# ---------------------------------------------------------------- ensemble


def test_ensemble_of_independent_views_beats_each_view():
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(C, D, generator=g)
    ytr, yte = torch.randint(0, C, (600,), generator=g), torch.randint(0, C, (300,), generator=g)

    def view(y):  # each "convention" sees the class centre through its own independent noise
        return mu[y] + 2.0 * torch.randn(len(y), D, generator=g)

    train = {"ntu-rgb+d": view(ytr), "smplx_42": view(ytr)}
    test = {"ntu-rgb+d": view(yte), "smplx_42": view(yte)}
    res = E.ensemble_probe(train, ytr, test, yte, C, **FAST)
    singles = [res.per_convention[c]["top1"] for c in train]
    assert 0.3 < max(singles) < 0.9  # the task is hard enough for the ensemble to matter
    assert res.top1 >= max(singles) + 0.05  # measured: 0.77 and 0.72 alone, 0.92 together
    assert res.top1 == res.history[-1]["test_top1"]
    assert torch.allclose(res.test_logits, E.ensemble_logits(res.convention_logits))
    # with a frozen encoder the summed loss trains each head exactly as it would alone
    alone = E.linear_probe(train["ntu-rgb+d"], ytr, test["ntu-rgb+d"], yte, C, **FAST)
    assert torch.allclose(res.convention_logits["ntu-rgb+d"], alone.test_logits, atol=1e-5)
    assert res.per_convention["ntu-rgb+d"]["top1"] == alone.top1


def test_ensemble_logits_is_the_mean():
    a, b = torch.tensor([[1.0, 3.0]]), torch.tensor([[3.0, -1.0]])
    assert torch.equal(E.ensemble_logits({"a": a, "b": b}), torch.tensor([[2.0, 1.0]]))
    with pytest.raises(DataError):
        E.ensemble_logits({"a": a, "b": torch.zeros(2, 2)})


# ---------------------------------------------------------------- fusion and metrics


def test_fuse_streams_weights_exact():
    j, b, m = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[5.0, 1.0]])
    fused = E.fuse_streams({"joint": j, "bone": b, "motion": m})
    assert torch.allclose(fused, torch.tensor([[0.6 + 2.0, 1.2 + 0.4]]))
    assert torch.allclose(E.fuse_streams({"joint": j, "motion": m}), torch.tensor([[2.6, 0.4]]))  # subset
    custom = E.fuse_streams({"joint": j, "bone": b}, weights={"joint": 1.0, "bone": 0.5, "motion": 9.0})
    assert torch.allclose(custom, torch.tensor([[1.0, 1.0]]))  # motion weight ignored: no motion logits
    with pytest.raises(ConfigError, match="velocity"):
        E.fuse_streams({"velocity": j})
    with pytest.raises(ConfigError, match="bone"):
        E.fuse_streams({"joint": j, "bone": b}, weights={"joint": 1.0})


def test_topk_accuracy_exact():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    y = torch.tensor([2, 0, 0, 1])
    assert E.topk_accuracy(logits, y, 1) == pytest.approx(1 / 4)
    assert E.topk_accuracy(logits, y, 2) == pytest.approx(3 / 4)
    assert E.topk_accuracy(logits, y, 5) == 1.0  # k clipped to the number of classes
    assert E.topk_accuracy(logits.numpy(), y.numpy(), 1) == pytest.approx(1 / 4)
    with pytest.raises(DataError, match="y"):
        E.topk_accuracy(logits, torch.tensor([0, 1, 3, 0]))


def test_confusion_matrix():
    y = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    cm = E.confusion_matrix(pred, y, 3)
    assert cm.sum() == 6 and list(cm.sum(1)) == [2, 1, 3]  # row = true label
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert np.trace(cm) / cm.sum() == pytest.approx(E.topk_accuracy(np.eye(3)[pred], y, 1))


def test_bad_inputs_name_the_field():
    xtr, ytr, xte, yte = clusters(n_train=20, n_test=10)
    with pytest.raises(DataError, match="train_y"):
        E.linear_probe(xtr, ytr[:5], xte, yte, C, epochs=1)
    with pytest.raises(DataError, match="test_y"):
        E.linear_probe(xtr, ytr, xte, yte + C, C, epochs=1)
    with pytest.raises(ConfigError):
        E.linear_probe(xtr, ytr, xte, yte, C, epochs=0)
    with pytest.raises(ConfigError, match="unknown"):
        E.ensemble_probe({"a": xtr}, ytr, {"a": xte}, yte, C, epoch=1)


# ---------------------------------------------------------------- feature extraction (real encoder)


@pytest.fixture(scope="module")
def tiny_encoder():
    model = pytest.importorskip("msclr_core.model")
    torch.manual_seed(0)
    return model.UnifiedSTGCN(["ntu-rgb+d"], hidden_channels=8, hidden_dim=32, num_blocks=2, head=None)


def test_extract_features_with_real_encoder(tiny_encoder):
    enc = tiny_encoder
    x = np.random.default_rng(0).normal(size=(10, 3, 16, 25, 2)).astype(np.float32)
    enc.train()
    f = E.extract_features(enc, x, "ntu-rgb+d", batch_size=4)
    assert f.shape == (10, 32) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert enc.training  # the training flag is restored
    assert torch.equal(f, E.extract_features(enc, x, "ntu-rgb+d", batch_size=4))  # deterministic
    # eval-mode BN and no dropout: every sample is encoded on its own, whatever the batch
    assert torch.allclose(f, E.extract_features(enc, torch.from_numpy(x), "ntu-rgb+d", batch_size=10), atol=1e-5)
    enc.eval()
    bone = E.extract_features(enc, x, "ntu-rgb+d", stream="bone", batch_size=3)
    assert not enc.training and bone.shape == (10, 32) and not torch.allclose(bone, f)
    with pytest.raises(ConfigError):
        E.extract_features(enc, x, "ntu-rgb+d", stream="velocity")


def test_extract_features_from_memmap_bf16(tiny_encoder, tmp_path):
    x = np.random.default_rng(1).normal(size=(6, 3, 16, 25, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    f32 = E.extract_features(tiny_encoder, mm, "ntu-rgb+d", batch_size=4)
    assert torch.allclose(f32, E.extract_features(tiny_encoder, x, "ntu-rgb+d"), atol=1e-5)
    bf = E.extract_features(tiny_encoder, mm, "ntu-rgb+d", dtype=torch.bfloat16)
    assert bf.dtype == torch.float32 and torch.allclose(bf, f32, rtol=0.1, atol=0.05)
