"""Report plots from the saved test lists: NDCG@K curves and exposure Lorenz curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from evaluation.metrics import lorenz_curve, ranking_metrics  # noqa: E402
from evaluation.report import load_lists  # noqa: E402


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ndcg_curves(lists: dict, truth: sp.csr_matrix, path: Path, max_k: int = 50) -> Path:
    """NDCG@K for K = 1..max_k, one line per model."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (users, items) in lists.items():
        k_max = min(max_k, items.shape[1])
        ks = list(range(1, k_max + 1))
        m = ranking_metrics(items[:, :k_max], truth[users], ks)
        ax.plot(ks, [m[f"ndcg@{k}"] for k in ks], label=name, lw=2 if name == "pipeline" else 1.2)
    return _save(fig, ax, path, "K", "NDCG@K (test)", "Ranking quality by list length")


def plot_lorenz(lists: dict, n_items: int, path: Path, k: int = 10) -> Path:
    """Exposure Lorenz curves of the top-k lists: the closer to the diagonal, the fairer."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="equal exposure")
    for name, (_, items) in lists.items():
        x, y = lorenz_curve(items[:, :k], n_items)
        ax.plot(x, y, label=name, lw=2 if name == "pipeline" else 1.2)
    return _save(fig, ax, path, "share of catalog (least exposed first)", f"share of top-{k} impressions",
                 "Exposure concentration")


def write_plots(out_dir: Path, truth: sp.csr_matrix) -> list[Path]:
    """Both plots for every model whose test lists were saved; [] when none were."""
    lists = load_lists(out_dir)
    if not lists:
        return []
    return [plot_ndcg_curves(lists, truth, out_dir / "ndcg_at_k.png"),
            plot_lorenz(lists, truth.shape[1], out_dir / "exposure_lorenz.png")]
