"""Figures of a finished integration: UMAPs before/after, the loss curves, the choice
of the number of clusters, the batch composition of the clusters, marker genes."""

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

from . import k_estimate, train  # noqa: E402
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


#: Lines drawn per training phase: its total and its largest terms.
TERMS_PER_PHASE = 4
#: Panels of the loss figure at most: the latest phases, one each.
MAX_PHASES = 5


def loss_panels(
    history: dict[str, dict[str, list[float]]],
) -> list[tuple[str, dict[str, list[float]]]]:
    """One ``(phase, {term: per-epoch values})`` per training phase, in the order the
    phases ran (the last :data:`MAX_PHASES`): its ``total`` and its
    :data:`TERMS_PER_PHASE` largest weighted loss terms, without the bookkeeping
    (:data:`deepbid.train.NOT_TERMS`). ``history`` may come from a file, whose keys are
    sorted: the order is taken from :data:`deepbid.train.PHASES`."""
    known = [phase for phase in train.PHASES if phase in history]
    phases = known + [phase for phase in history if phase not in train.PHASES]
    panels = []
    for phase in phases[-MAX_PHASES:]:
        record = history[phase]
        if len(record.get("total", [])) == 0:
            continue
        terms = [name for name in record if name not in train.NOT_TERMS]
        largest = sorted(terms, key=lambda t: -float(np.mean(np.abs(record[t]))))
        drawn = ["total", *largest[:TERMS_PER_PHASE]]
        panels.append((phase, {term: list(record[term]) for term in drawn}))
    return panels


def loss_curves(history: dict[str, dict[str, list[float]]], path: str | os.PathLike) -> Path:
    """One PNG, one small panel per training phase: its total loss and main weighted
    terms against epoch (log scale where every value is positive)."""
    panels = loss_panels(history)
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(2.9 * max(len(panels), 1), 2.5), squeeze=False
    )
    for ax, (phase, terms) in zip(axes.ravel(), panels, strict=False):
        for term, values in terms.items():
            style = {"color": "black", "linewidth": 2} if term == "total" else {}
            ax.plot(np.arange(1, len(values) + 1), values, label=term, **style)
        if all(min(values) > 0 for values in terms.values()):
            ax.set_yscale("log")
        ax.set_title(phase, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def k_choice(k_estimation: dict[str, dict], n_clusters: int, path: str | os.PathLike) -> Path:
    """One PNG of how the number of clusters came about.

    One panel per scan of the K rule (on the pretrained codes, and again on the
    trained ones): each Leiden partition's within-batch silhouette against its
    resolution, per graph, labelled with its cluster count; the chosen one is a star,
    partitions set aside (batch splits, outliers of the scan) are crosses. A last panel
    gives each cluster tested for two modes after training with its p-value, the
    divided ones in red. With K given, the panel says so.

    Parameters
    ----------
    k_estimation
        ``model.k_estimate`` or ``uns["deepbid"]["k_estimation"]``: per stage
        (``"pretrained"``, ``"trained"``, ``"divided"``) the report of
        :mod:`deepbid.k_estimate`.
    n_clusters
        The final number of clusters.
    path
        PNG to write.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    scans = [(s, r) for s, r in k_estimation.items() if "score" in r and len(r["score"])]
    divided = k_estimation.get("divided", {})
    tested = len(divided.get("cluster", [])) > 0
    n_panels = max(len(scans), 1) + tested
    fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.3), squeeze=False)
    axes = list(axes.ravel())
    for ax, (stage, report) in zip(axes, scans, strict=False):
        _scan_panel(ax, stage, report)
    if not scans:
        start = k_estimation.get("pretrained", {}).get("resolution", np.nan)
        how = (
            "k-means start"
            if np.isnan(start)
            else f"Leiden start at resolution {float(start):.3g}\n(batch-balanced graph)"
        )
        axes[0].axis("off")
        axes[0].text(0.5, 0.5, f"K given\n{how}", ha="center", va="center", fontsize=11)
    if tested:
        ax = axes[-1]
        p_values = np.maximum(np.asarray(divided["p_value"], dtype=float), 1e-4)
        colours = ["tab:red" if d else "tab:grey" for d in np.asarray(divided["divided"])]
        ax.bar(np.arange(p_values.size), p_values, color=colours)
        ax.set_yscale("log")
        ax.axhline(k_estimate.MODE_ALPHA, color="black", linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(p_values.size), [str(c) for c in divided["cluster"]], fontsize=7)
        ax.set_xlabel("cluster tested for two modes", fontsize=8)
        ax.set_ylabel("p-value (red: divided)", fontsize=8)
    fig.suptitle(f"{n_clusters} clusters", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _scan_panel(ax: plt.Axes, stage: str, report: dict) -> None:
    """Score against resolution of one K-rule scan (see :func:`k_choice`)."""
    graph = np.asarray(report["graph"]).astype(str)
    resolution = np.asarray(report["resolution"], dtype=float)
    score = np.asarray(report["score"], dtype=float)
    counts = np.asarray(report["n_clusters"])
    set_aside = np.asarray(report["batch_split"], dtype=bool)
    if "outlier" in report:
        set_aside |= np.asarray(report["outlier"], dtype=bool)
    for name, colour in zip(sorted(set(graph)), ("tab:blue", "tab:orange"), strict=False):
        on = graph == name
        ax.plot(resolution[on], score[on], color=colour, label=f"{name} graph", marker=".")
        for r, y, k in zip(resolution[on], score[on], counts[on], strict=True):
            ax.annotate(str(k), (r, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.scatter(resolution[set_aside], score[set_aside], marker="x", color="black", zorder=3)
    chosen = int(report["chosen"])
    ax.scatter(resolution[chosen], score[chosen], marker="*", s=160, color="tab:red", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("Leiden resolution (labels: clusters)", fontsize=8)
    ax.set_ylabel("within-batch silhouette", fontsize=8)
    ax.set_title(f"K rule, {stage} codes: {counts[chosen]} chosen", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, frameon=False)


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
