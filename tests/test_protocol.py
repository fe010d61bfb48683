"""The evaluation protocol: robust default probe, references, collapse detection, choices on
validation only. Known answers from Gaussian clusters and linearly separable clips."""

import warnings

import numpy as np
import pytest
import torch

from msclr_core import evaluation as E
from msclr_core import protocol as P
from msclr_core.errors import ConfigError
from msclr_core.model import UnifiedSTGCN

C, D = 10, 32
FAST = P.ProbeSettings(epochs=30, milestones=[20])


def clusters(n_train=600, n_test=300, seed=0, noise=1.2):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(C, D, generator=g)

    def draw(n):
        y = torch.randint(0, C, (n,), generator=g)
        return mu[y] + noise * torch.randn(n, D, generator=g), y

    return (*draw(n_train), *draw(n_test))


def test_collapsed_flags_a_constant_prediction_only():
    logits = torch.zeros(50, 4)
    logits[:, 2] = 1.0
    assert P.collapsed(logits)
    logits[:10, 0] = 5.0  # 80% one class: a skewed but working predictor is not flagged
    assert not P.collapsed(logits)
    assert not P.collapsed(torch.eye(4).repeat(10, 1))


@pytest.mark.parametrize("offset,scale", [(100.0, 0.01), (50.0, 1.0)])
def test_paper_probe_collapses_on_offset_features_and_the_standard_probe_does_not(offset, scale):
    """Features with a large common offset and a small signal (what a random-init ST-GCN gives):
    the paper's probe (raw features, lr 3.0) collapses to one class; the standard one reads them."""
    xtr, ytr, xte, yte = clusters()
    a, b = xtr * scale + offset, xte * scale + offset
    paper = E.linear_probe(a, ytr, b, yte, C, epochs=30, milestones=(20,))
    assert P.collapsed(paper.test_logits) and paper.top1 < 0.2
    choose = P.holdout(ytr.numpy(), 0.2, 0)
    std = P.fit_probe(a, ytr, b, yte, C, FAST, choose=choose)
    assert std.top1 > 0.9 and not P.collapsed(std.test_logits)
    assert std.protocol["probe"] == "standard" and std.protocol["lr_chosen_on"] == "validation"
    assert set(std.protocol["lr_scores"]) == {str(lr) for lr in FAST.lr_grid}


def test_probe_choices_never_look_at_test_labels():
    xtr, ytr, xte, yte = clusters(noise=2.5)
    choose = P.holdout(ytr.numpy(), 0.2, 0)
    a = P.fit_probe(xtr, ytr, xte, yte, C, FAST, choose=choose)
    shuffled = yte[torch.randperm(len(yte), generator=torch.Generator().manual_seed(1))]
    b = P.fit_probe(xtr, ytr, xte, shuffled, C, FAST, choose=choose)
    assert a.protocol["lr"] == b.protocol["lr"] and a.protocol["lr_scores"] == b.protocol["lr_scores"]
    assert torch.equal(a.test_logits, b.test_logits)  # same probe, only its test score differs
    assert b.top1 < 0.3 < a.top1


def test_holdout_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(5), [10, 10, 10, 10, 1])
    fit, val = P.holdout(y, 0.2, 0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(y)
    assert np.bincount(y[val], minlength=5).tolist() == [2, 2, 2, 2, 0]  # a singleton class stays in fit
    assert np.array_equal(val, P.holdout(y, 0.2, 0)[1])
    assert not np.array_equal(val, P.holdout(y, 0.2, 1)[1])


def test_paper_probe_settings_and_bad_names():
    assert P.PAPER_PROBE.lr == 3.0 and P.PAPER_PROBE.epochs == 100 and P.PAPER_PROBE.milestones == [80]
    assert not P.PAPER_PROBE.standardize and P.ProbeSettings().standardize
    with pytest.raises(ConfigError, match="probe must be one of"):
        P.ProbeSettings(name="best")
    with pytest.raises(ConfigError, match="> 0"):
        P.ProbeSettings(lr_grid=[0.1, -1.0])


def separable_clips(n, seed, convs=("ntu-rgb+d", "h36m_17"), t=8):
    """Clips whose class lifts its own joint (class c: joint 3 + c up by 1 m): linear in the input."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, n)
    out = {}
    for conv, v in zip(convs, (25, 17)):
        x = g.normal(0, 0.1, (n, 3, t, v, 2)).astype(np.float32)
        x[np.arange(n), 1, :, 3 + y, 0] += 1.0
        out[conv] = x
    return out, y


def test_raw_reference_reads_linear_input_and_names_its_reader():
    tr, ytr = separable_clips(240, 0)
    te, yte = separable_clips(120, 1)
    s = P.EvalSettings(probe=FAST, knn_k=5)
    report = P.evaluate_raw({"train": tr, "test": te}, {"train": ytr, "test": yte}, 4, s)
    assert [r["convention"] for r in report.rows] == ["ntu-rgb+d", "h36m_17"]  # no ensemble row for raw
    for row in report.rows:
        assert row["model"] == "raw" and row["linear_top1"] > 0.9 and not row["collapsed"]
        scores = row["raw_val_scores"]
        # the reported reader is the better one on validation
        assert row["probe"].startswith("ridge") == (scores["ridge"] > scores["probe"])
    assert report.protocol["raw_train_samples"] == 240


def test_ridge_dual_solution_equals_the_primal_ridge_classifier():
    """The eigen-decomposed dual solve gives what scikit-learn's RidgeClassifier computes in the
    primal: w = (Xs'Xs + l2 * scale * I)^-1 Xs'(Y - mean Y) on z-scored X, +-1 targets."""
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(200, 20, generator=g) * 3 + 1, torch.randn(50, 20, generator=g) * 3 + 1
    y = torch.randint(0, 4, (200,), generator=g)
    for l2 in (1e-2, 1.0):
        got = P._ridge_logits(x, y, [xt], 4, [l2])[0][0].double()
        mean, std = x.mean(0), x.std(0)
        xs, xts = ((x - mean) / std).double(), ((xt - mean) / std).double()
        t = -torch.ones(200, 4, dtype=torch.float64)
        t[torch.arange(200), y] = 1.0
        scale = (xs * xs).sum() / 200  # mean of diag(Xs Xs')
        w = torch.linalg.solve(xs.T @ xs + l2 * scale * torch.eye(20, dtype=torch.float64), xs.T @ (t - t.mean(0)))
        assert torch.allclose(got, xts @ w + t.mean(0), atol=1e-4)


def test_evaluate_encoder_rows_ensemble_and_test_selected():
    tr, ytr = separable_clips(160, 0)
    te, yte = separable_clips(80, 1)
    torch.manual_seed(0)
    enc = UnifiedSTGCN(["ntu-rgb+d", "h36m_17"], head=None, hidden_channels=4, hidden_dim=16, num_blocks=2, dropout=0.0)
    s = P.EvalSettings(probe=FAST, knn_k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a collapse would warn: the standard probe must not collapse here
        report = P.evaluate_encoder(enc, {"train": tr, "test": te}, {"train": ytr, "test": yte}, 4, s, label="random-init")
    assert [(r["model"], r["convention"]) for r in report.rows] == [
        ("random-init", "ntu-rgb+d"), ("random-init", "h36m_17"), ("random-init", "ensemble")]
    for row in report.rows:
        assert row["test_selected_top1"] >= row["linear_top1"]  # the best test epoch includes the last
        assert row["probe"] == "standard" and row["probe_lr"] in FAST.lr_grid
        assert not row["collapsed"] and 0.0 <= row["linear_top1"] <= 1.0
    assert set(report.test_logits) == {"random-init/ntu-rgb+d", "random-init/h36m_17", "random-init/ensemble"}
    assert set(report.selected_logits) == set(report.test_logits)  # best-test-epoch logits, for --fuse
    for row in report.rows:  # the selected logits are the ones that scored test_selected_top1
        logits = report.selected_logits[f"random-init/{row['convention']}"]
        assert E.topk_accuracy(torch.as_tensor(logits), torch.as_tensor(yte), 1) == pytest.approx(row["test_selected_top1"])
    assert report.protocol["choices_on"].startswith("20% of train")


def test_real_val_split_reports_best_on_validation():
    xtr, ytr, xte, yte = clusters()
    xva, yva = clusters(n_train=200, n_test=1, seed=0)[:2]
    feats = {"train": {"a": xtr}, "test": {"a": xte}, "val": {"a": xva}}
    report = P.evaluate_features(feats, {"train": ytr, "test": yte, "val": yva}, C,
                                 P.EvalSettings(probe=FAST, knn_k=5), "pretrained")
    row = report.row("pretrained", "a")
    assert row["best_val_epoch"] is not None and row["test_top1_at_best_val"] is not None
    assert row["val_top1"] is not None and report.protocol["choices_on"] == "val split"
