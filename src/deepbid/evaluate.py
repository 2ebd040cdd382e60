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


def evaluate(
    adata: ad.AnnData,
    model: DeepBID,
    batch_key: str,
    *,
    layer: str | None,
    label_key: str | None,
    figures: Path | None,
    denoised: bool = True,
) -> tuple[ad.AnnData, pd.DataFrame]:
    """Fit ``model`` on a copy of ``adata``; score it against the unintegrated PCA; draw figures.

    Returns
    -------
    The annotated copy and the metrics table (rows ``unintegrated PCA``, ``deepbid``).
    """
    if label_key is not None and label_key not in adata.obs.columns:
        raise InputError(f"label_key {label_key!r} not found in adata.obs")
    start = time.perf_counter()
    model.fit(adata, batch_key, layer=layer)
    seconds = time.perf_counter() - start
    out = adata.copy()
    write_results(out, model, denoised=denoised)
    view = model.train_view
    cells = view.cells
    batch = out.obs[batch_key].astype(str).to_numpy()[cells]
    labels = out.obs[label_key].astype(str).to_numpy()[cells] if label_key else None
    before = plotting.log_pca(view.logx, seed=model.seed)
    before_clusters = leiden(before, model.seed)
    after = out.obsm["X_deepbid"][cells]
    clusters = out.obs["deepbid_cluster"].astype(str).to_numpy()[cells]
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
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        colourings = {"batch": batch, "deepbid cluster": clusters}
        if labels is not None:
            colourings["label"] = labels
        plotting.umap_panels(
            plotting.umap(before, model.seed),
            colourings,
            "before integration (PCA of log-normalised HVGs)",
            figures / "umap_before.png",
        )
        plotting.umap_panels(
            plotting.umap(after, model.seed),
            colourings,
            "after deepbid",
            figures / "umap_after.png",
        )
        plotting.loss_curves(model.history, figures / "loss_curves.png")
    return out, table


def leiden(embedding: np.ndarray, seed: int, resolution: float = 1.0) -> np.ndarray:
    """Leiden clusters (scanpy defaults: 15 neighbours) of an ``(n, d)`` embedding."""
    holder = ad.AnnData(np.zeros((embedding.shape[0], 1), dtype=np.float32))
    holder.obsm["X_rep"] = embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # exact kNN: scanpy's approximate path (pynndescent, above 4,096 cells)
        # fails on scipy >= 1.15 sparse arrays
        sc.pp.neighbors(holder, use_rep="X_rep", transformer="sklearn", random_state=seed)
        sc.tl.leiden(
            holder, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=-1
        )
    return holder.obs["leiden"].astype(str).to_numpy()
