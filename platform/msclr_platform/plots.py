"""Figures logged as MLflow artifacts (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: list[dict], path: Path) -> Path:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h["loss"] for h in history], marker=".")
    ax[0].set(xlabel="epoch", ylabel="loss", title="pretraining loss")
    ax[1].plot(epochs, [h["lr"] for h in history], marker=".", color="tab:orange")
    ax[1].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def embedding_pca(features: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """2-D PCA of encoder features coloured by class (PCA: deterministic and fast, unlike t-SNE).
    The legend names each class (class_names[label]); a label without a name shows its index."""
    fig = embedding_pca_figure(features, labels, class_names, title)
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def embedding_pca_figure(features: np.ndarray, labels: np.ndarray, class_names: list[str], title: str):
    """The figure embedding_pca saves (open: the caller closes it)."""
    plt = _plt()
    x = features - features.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab20")
    for c in np.unique(labels):
        m = labels == c
        name = str(class_names[int(c)]) if 0 <= int(c) < len(class_names) else str(int(c))
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(int(c) % 20), label=name)
    ax.set(title=title, xlabel="PC1", ylabel="PC2")
    ax.legend(fontsize=6, markerscale=2, ncol=2, loc="best")
    fig.tight_layout()
    return fig


def confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=6)
    ax.set_yticks(ticks, class_names, fontsize=6)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_vs_param(table, param: str, metric: str, path: Path) -> Path:
    """One point per trial: the searched value against the metric (categories as labels)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    x = table[param]
    if x.map(lambda v: isinstance(v, (int, float))).all():
        ax.scatter(x, table[metric])
    else:
        cats = sorted(set(map(str, x)))
        ax.scatter([cats.index(str(v)) for v in x], table[metric])
        ax.set_xticks(range(len(cats)), cats, rotation=20, fontsize=7)
    ax.set(xlabel=param, ylabel=metric, title=f"{metric} vs {param}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learning_curves(summary: list[dict], conv: str, path: Path) -> Path:
    """Linear top-1 against the pretraining budget (mean ± std over seeds), one line per model,
    horizontal lines (± bands) for the raw, random-init and supervised references."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    epochs = [r["epochs"] for r in summary]
    for key, label in (("msclr", "MS-CLR"), ("msclr_ensemble", "MS-CLR ensemble"), ("single", "single skeleton")):
        if all(key in r for r in summary):
            mean = np.array([r[key]["mean"] for r in summary])
            std = np.array([r[key]["std"] for r in summary])
            ax.errorbar(epochs, mean, yerr=std, marker="o", capsize=3, label=label)
    for key, style in (("raw", "k--"), ("random-init", "r:"), ("supervised", "g-.")):
        ref = summary[0].get(key)
        if ref:
            ax.axhline(ref["mean"], linestyle=style[1:], color=style[0], label=f"{key} ({ref['mean']:.3f})")
            ax.axhspan(ref["mean"] - ref["std"], ref["mean"] + ref["std"], color=style[0], alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="pretraining epochs (equal steps for both models)", ylabel=f"linear top-1 ({conv}, test)",
           title="Learning study: synthetic benchmark, xsub")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
