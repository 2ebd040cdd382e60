"""Estimating the number of clusters and the starting partition of fuzzy k-means.

The number of clusters is usually unknown. :func:`estimate_partition` runs
Leiden on a batch-balanced kNN graph of the pretrained latent codes (every
cell is linked to its nearest neighbours *in every batch*, so clusters are not
split by batch), over a grid of resolutions, scoring each partition by how
well it separates cells within their own batch (mean within-batch silhouette)
and keeping the finest partition whose score is within
:data:`SILHOUETTE_TOLERANCE` of the best. A given ``n_clusters`` uses k-means
instead. Both work on any ``(n, d)`` embedding, so the rule can be judged
apart from deepbid's own embedding.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from . import distributed
from .cluster import gathered_sample, nearest

#: Leiden resolutions tried when the number of clusters is estimated.
RESOLUTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)
#: Neighbours of each cell taken from every batch for the K-estimation graph.
NEIGHBOURS_PER_BATCH = 5
#: Cells per batch used to score a partition (silhouette is quadratic in cells).
SILHOUETTE_CELLS = 1000
#: Silhouette differences below this are within seed-to-seed noise (measured on
#: the pretrained embeddings of the shared data sets: about 0.01-0.03).
SILHOUETTE_TOLERANCE = 0.01
#: Cells the number of clusters is estimated on (the graph, Leiden and PCA
#: scale with it); the other cells join the nearest centre of that partition.
ESTIMATE_CELLS = 20_000


def _pca(h: np.ndarray, seed: int, n_components: int = 50) -> np.ndarray:
    n_components = min(n_components, h.shape[0] - 1, h.shape[1])
    return PCA(n_components=n_components, random_state=seed).fit_transform(h)


def batch_balanced_graph(x: np.ndarray, batch: np.ndarray, k: int) -> sp.csr_matrix:
    """Symmetric kNN adjacency linking each cell to its ``k`` nearest cells of every batch.

    ``(n, d), (n,) -> (n, n)`` sparse, with about ``n * k * n_batches`` edges.
    """
    n = x.shape[0]
    rows, cols = [], []
    for code in np.unique(batch):
        members = np.flatnonzero(batch == code)
        k_b = min(k + 1, members.size)
        _, idx = NearestNeighbors(n_neighbors=k_b).fit(x[members]).kneighbors(x)
        rows.append(np.repeat(np.arange(n), k_b))
        cols.append(members[idx.ravel()])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    keep = rows != cols
    graph = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    graph = graph.maximum(graph.T)
    graph.data[:] = 1.0
    return graph


def within_batch_silhouette(
    x: np.ndarray, labels: np.ndarray, batch: np.ndarray, seed: int
) -> float:
    """Cell-weighted mean over batches of the silhouette of ``labels`` among that batch's cells.

    Batches holding a single label are skipped; ``-1`` when none qualifies.
    """
    rng = np.random.default_rng(seed)
    scores, weights = [], []
    for code in np.unique(batch):
        members = np.flatnonzero(batch == code)
        if members.size > SILHOUETTE_CELLS:
            members = rng.choice(members, SILHOUETTE_CELLS, replace=False)
        n_labels = np.unique(labels[members]).size
        if n_labels < 2 or n_labels >= members.size:
            continue
        scores.append(silhouette_score(x[members], labels[members]))
        weights.append(members.size)
    return float(np.average(scores, weights=weights)) if scores else -1.0


def estimate_partition(h: np.ndarray, batch: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """Estimate the number of clusters and a starting partition (see module docstring).

    Returns
    -------
    ``(labels (n,), report)``, the report giving each resolution's cluster
    count and score.
    """
    x = _pca(h, seed)
    graph = batch_balanced_graph(x, batch, NEIGHBOURS_PER_BATCH)
    holder = ad.AnnData(np.zeros((h.shape[0], 1), dtype=np.float32))
    partitions, report = [], {"resolution": [], "n_clusters": [], "score": []}
    for resolution in RESOLUTIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.tl.leiden(
                holder,
                resolution=resolution,
                adjacency=graph,
                random_state=seed,
                flavor="igraph",
                n_iterations=-1,
                directed=False,
            )
        labels = holder.obs["leiden"].cat.codes.to_numpy().astype(np.int64)
        n_clusters = int(labels.max()) + 1
        score = within_batch_silhouette(x, labels, batch, seed) if n_clusters > 1 else -1.0
        partitions.append(labels)
        report["resolution"].append(resolution)
        report["n_clusters"].append(n_clusters)
        report["score"].append(score)
    scores, counts = np.array(report["score"]), np.array(report["n_clusters"])
    # the finest partition whose score is within noise of the best: merging two
    # real cell types is worse than splitting one, which a user can undo
    near_best = np.flatnonzero(scores >= scores.max() - SILHOUETTE_TOLERANCE)
    chosen = near_best[np.argmax(counts[near_best])]
    report["chosen"] = int(chosen)
    return partitions[chosen], report


def initial_partition(
    h: np.ndarray, batch: np.ndarray, n_clusters: int | None, seed: int
) -> tuple[np.ndarray, dict]:
    """Hard starting labels ``(n,)`` for fuzzy k-means: k-means for a given K, else estimated.

    Up to :data:`ESTIMATE_CELLS` cells (in all processes together) are
    partitioned directly; beyond that a random sample is, and every cell takes
    the label of the nearest centre of the sample's partition.
    """
    if not distributed.active() and h.shape[0] <= ESTIMATE_CELLS:
        return _partition(h, batch, n_clusters, seed)
    sample_h, sample_batch = gathered_sample((h, batch), ESTIMATE_CELLS, seed)
    result = None
    if distributed.rank() == 0:
        labels, report = _partition(sample_h, sample_batch, n_clusters, seed)
        onehot = np.eye(labels.max() + 1, dtype=sample_h.dtype)[labels]
        result = ((onehot.T @ sample_h) / onehot.sum(axis=0)[:, None], report)
    found, report = distributed.broadcast_object(result)
    labels = nearest(torch.from_numpy(h), torch.from_numpy(found)).numpy()
    return labels, report


def _partition(
    h: np.ndarray, batch: np.ndarray, n_clusters: int | None, seed: int
) -> tuple[np.ndarray, dict]:
    if n_clusters is None:
        return estimate_partition(h, batch, seed)
    labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(h)
    return labels, {}
