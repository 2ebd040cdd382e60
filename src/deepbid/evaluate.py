"""Fit a model and score it against the unintegrated baseline; draw the figures."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc

from . import metrics, plotting
from .api import write_results
from .errors import InputError
from .model import DeepBID
from .neighbors import KNNTransformer

#: Above this many cells the metrics, UMAPs and marker genes use a fixed random
#: sample of this many cells (the table's ``cells_scored``): LISI, Leiden and UMAP
#: of 20,000 cells take seconds, and their medians and pictures do not change.
SCORED_CELLS = 20_000


def scored_sample(n_cells: int, seed: int) -> np.ndarray:
    """Sorted indices of the cells that are scored and drawn: all up to
    :data:`SCORED_CELLS`, a seeded random sample of that many above."""
    if n_cells <= SCORED_CELLS:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, SCORED_CELLS, replace=False))


def evaluate(
    adata: ad.AnnData,
    model: DeepBID,
    batch_key: str,
    *,
    layer: str | None,
    label_key: str | None,
    figures: Path | None,
    denoised: bool | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Fit ``model`` on ``adata`` and write its results there (in place, see
    :func:`deepbid.write_results`); score it against the unintegrated PCA and draw
    figures, both on :func:`scored_sample`'s cells.

    Returns
    -------
    The metrics table (rows ``unintegrated PCA + Leiden``, ``deepbid``) and the indices of
    the scored cells in ``adata``.
    """
    if label_key is not None and label_key not in adata.obs.columns:
        raise InputError(f"label_key {label_key!r} not found in adata.obs")
    start = time.perf_counter()
    model.fit(adata, batch_key, layer=layer)
    write_results(adata, model, denoised=denoised)
    seconds = time.perf_counter() - start  # what deepbid.integrate() takes
    n_cells = model.train_view.n_total
    cells = np.flatnonzero(model.train_view.cells)[scored_sample(n_cells, model.seed)]
    batch = adata.obs[batch_key].astype(str).to_numpy()[cells]
    labels = adata.obs[label_key].astype(str).to_numpy()[cells] if label_key else None
    # read afresh: under torch.distributed the training view holds only a shard
    scored = model.data_view(adata[cells])
    before = plotting.log_pca(scored.logx, seed=model.seed)
    before_clusters = leiden(before, model.seed)
    after = adata.obsm["X_deepbid"][cells]
    clusters = adata.obs["deepbid_cluster"].astype(str).to_numpy()[cells]
    table = pd.DataFrame(
        [
            {
                "method": "unintegrated PCA + Leiden",
                "n_clusters": len(set(before_clusters)),
                **metrics.scores(before, before_clusters, batch, labels),
            },
            {
                "method": "deepbid",
                "n_clusters": len(set(clusters)),
                **metrics.scores(after, clusters, batch, labels),
                "seconds": seconds,
            },
        ]
    ).set_index("method")
    table["cells_scored"] = len(cells)
    if figures is not None:
        colourings = {"batch": batch, "deepbid cluster": clusters}
        if labels is not None:
            colourings["label"] = labels
        shown = "" if len(cells) == n_cells else f", {len(cells):,} of {n_cells:,} cells"
        _draw(figures, model, before, after, colourings, shown)
    return table, cells


def _draw(
    figures: Path,
    model: DeepBID,
    before: np.ndarray,
    after: np.ndarray,
    colourings: dict[str, np.ndarray],
    shown: str,
) -> None:
    """UMAPs of the ``(n, d)`` embeddings ``before`` and ``after`` integration, each
    coloured by every ``(n,)`` array of ``colourings``, the loss curves and the choice
    of K, in
    ``figures``; ``shown`` tells a sample of cells in the titles."""
    figures.mkdir(parents=True, exist_ok=True)
    plotting.umap_panels(
        plotting.umap(before, model.seed),
        colourings,
        f"before integration (PCA of log-normalised HVGs{shown})",
        figures / "umap_before.png",
    )
    plotting.umap_panels(
        plotting.umap(after, model.seed),
        colourings,
        f"after deepbid{shown}",
        figures / "umap_after.png",
    )
    plotting.loss_curves(model.history, figures / "loss_curves.png")
    plotting.k_choice(model.k_estimate, model.cluster_count, figures / "k_choice.png")


def leiden(embedding: np.ndarray, seed: int, resolution: float = 1.0) -> np.ndarray:
    """Leiden clusters (scanpy defaults: 15 neighbours, from :mod:`deepbid.neighbors`)
    of an ``(n, d)`` embedding."""
    holder = ad.AnnData(np.zeros((embedding.shape[0], 1), dtype=np.float32))
    holder.obsm["X_rep"] = embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.neighbors(holder, use_rep="X_rep", transformer=KNNTransformer(15, seed))
        sc.tl.leiden(
            holder, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=-1
        )
    return holder.obs["leiden"].astype(str).to_numpy()
