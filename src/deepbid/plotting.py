"""Figures of a finished integration: UMAPs before/after and the loss curves."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")  # figures are files; never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scanpy as sc  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from .neighbors import KNNTransformer  # noqa: E402


def log_pca(logx: sp.spmatrix | np.ndarray, n_comps: int = 50, seed: int = 0) -> np.ndarray:
    """The unintegrated embedding: PCA of the log-normalised matrix ``(n, f) -> (n, n_comps)``."""
    x = logx.toarray() if sp.issparse(logx) else np.asarray(logx)
    n_comps = min(n_comps, x.shape[0] - 1, x.shape[1] - 1)
    return PCA(n_components=n_comps, random_state=seed).fit_transform(x - x.mean(axis=0))


def umap(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-d UMAP ``(n, 2)`` of an ``(n, d)`` embedding (scanpy's UMAP on 15 neighbours
    from :mod:`deepbid.neighbors`)."""
    holder = ad.AnnData(np.zeros((embedding.shape[0], 1), dtype=np.float32))
    holder.obsm["X_rep"] = embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(holder, use_rep="X_rep", transformer=KNNTransformer(15, seed))
        sc.tl.umap(holder, random_state=seed)
    return holder.obsm["X_umap"]


def scatter(ax: plt.Axes, xy: np.ndarray, values: np.ndarray, title: str) -> None:
    """Draw ``(n, 2)`` points on ``ax``, one colour per category of ``values``."""
    ok = ~np.isnan(xy).any(axis=1)
    categories = sorted({str(v) for v in values[ok]}, key=lambda v: (len(v), v))
    colours = plt.get_cmap("tab20" if len(categories) > 10 else "tab10")
    for i, category in enumerate(categories):
        members = ok & (values.astype(str) == category)
        ax.scatter(
            *xy[members].T, s=4, color=colours(i % colours.N), label=category, rasterized=True
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(categories) <= 20:
        ax.legend(
            markerscale=3, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5)
        )


def umap_panels(
    xy: np.ndarray, colourings: dict[str, np.ndarray], title: str, path: str | os.PathLike
) -> Path:
    """One PNG of ``(n, 2)`` coordinates, one panel per named colouring."""
    fig, axes = plt.subplots(1, len(colourings), figsize=(5.2 * len(colourings), 4.2))
    for ax, (name, values) in zip(np.atleast_1d(axes), colourings.items(), strict=True):
        scatter(ax, xy, np.asarray(values), name)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


#: History entries that are bookkeeping, not losses: they get no panel.
NOT_LOSSES = frozenset({"steps", "seconds"})


def loss_panels(
    history: dict[str, dict[str, list[float]]],
) -> list[tuple[str, str, list[float]]]:
    """``(phase, term, per-epoch values)`` of every recorded loss term, in the history's
    order; step counts and epoch timings are left out."""
    return [
        (phase, term, values)
        for phase, terms in history.items()
        for term, values in terms.items()
        if len(values) > 0 and term not in NOT_LOSSES
    ]


def loss_curves(history: dict[str, dict[str, list[float]]], path: str | os.PathLike) -> Path:
    """One PNG with a panel per loss term of every training phase, against epoch."""
    panels = loss_panels(history)
    n_cols = 4
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 2.6 * n_rows), squeeze=False)
    for ax, (phase, term, values) in zip(axes.ravel(), panels, strict=False):
        ax.plot(np.arange(1, len(values) + 1), values, marker=".")
        ax.set_title(f"{phase}: {term}", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def composition(clusters: np.ndarray, batch: np.ndarray, path: str | os.PathLike) -> Path:
    """One PNG: per cluster, a stacked bar of the share of each batch, with cell counts."""
    table = pd.crosstab(pd.Series(clusters, name="cluster"), pd.Series(batch, name="batch"))
    table = table.loc[sorted(table.index, key=lambda v: (len(str(v)), str(v)))]
    shares = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(table) + 2.5), 3.6))
    bottom = np.zeros(len(shares))
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(shares.columns):
        ax.bar(
            shares.index.astype(str),
            shares[name],
            bottom=bottom,
            label=str(name),
            color=colours(i % colours.N),
        )
        bottom += shares[name].to_numpy()
    for x, n in enumerate(table.sum(axis=1)):
        ax.text(x, 1.01, str(n), ha="center", va="bottom", fontsize=7)
    ax.set_xlabel("deepbid cluster")
    ax.set_ylabel("share of cells")
    ax.set_ylim(0, 1.1)
    ax.legend(
        title="batch", fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def marker_dotplot(
    lognorm: ad.AnnData, groupby: str, path: str | os.PathLike, n_genes: int = 4
) -> Path:
    """One PNG: scanpy's dot plot of the top ``n_genes`` markers of each group, from the
    ranking in ``lognorm.uns["rank_genes_groups"]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plot = sc.pl.rank_genes_groups_dotplot(
            lognorm, groupby=groupby, n_genes=n_genes, dendrogram=False, show=False, return_fig=True
        )
        plot.savefig(path, dpi=110, bbox_inches="tight")
    plt.close("all")
    return Path(path)
