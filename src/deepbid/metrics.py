"""Integration and clustering scores: arrays in, numbers out."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from .neighbors import knn


def _same_length(*arrays: np.ndarray) -> None:
    """Raise ``ValueError`` unless every array has as many rows as the first: a label
    array of other cells would otherwise be scored silently (or fail deep in numpy)."""
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) > 1:
        raise ValueError(f"the arrays must describe the same cells; their lengths: {lengths}")


def ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same cells.

    Parameters
    ----------
    labels_true, labels_pred
        ``(n,)`` labels of the same cells, of any hashable type.

    Returns
    -------
    float
        1 for identical partitions, about 0 for independent ones.

    Raises
    ------
    ValueError
        When the arrays differ in length (scikit-learn's check).
    """
    return float(adjusted_rand_score(labels_true, labels_pred))


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information of two labelings (arithmetic mean normalisation).

    Parameters
    ----------
    labels_true, labels_pred
        ``(n,)`` labels of the same cells, of any hashable type.

    Returns
    -------
    float
        In [0, 1]; 1 for identical partitions.

    Raises
    ------
    ValueError
        When the arrays differ in length (scikit-learn's check).
    """
    return float(normalized_mutual_info_score(labels_true, labels_pred))


def _calibrated_weights(dist: np.ndarray, perplexity: float, n_steps: int = 50) -> np.ndarray:
    """Neighbour weights ``exp(-beta * dist)`` ``(n, k)``, each row's ``beta`` found by
    bisection so that its entropy is ``log(perplexity)`` (as in LISI)."""
    target = np.log(perplexity)
    dist = dist - dist[:, :1]  # shift by the nearest distance for numerical range
    beta = np.ones(dist.shape[0])
    lo = np.full_like(beta, 0.0)
    hi = np.full_like(beta, np.inf)
    for _ in range(n_steps):
        w = np.exp(-dist * beta[:, None])
        total = w.sum(axis=1)
        w /= total[:, None]
        entropy = np.log(total) + beta * (dist * w).sum(axis=1)
        too_flat = entropy > target
        lo = np.where(too_flat, beta, lo)
        hi = np.where(too_flat, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    return w


def lisi(x: np.ndarray, labels: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """Local inverse Simpson's index of ``labels`` for every cell of the ``(n, d)`` embedding.

    Korsunsky et al. 2019 (Harmony): the effective number of labels among a
    cell's ``3 * perplexity`` nearest neighbours (:func:`deepbid.neighbors.knn`:
    exact up to 50,000 cells, approximate above), weighted by ``exp(-beta * d)`` of
    their Euclidean distance ``d`` (not squared, as in ``harmonypy.compute_lisi``
    and scib-metrics; the test suite holds this function side by side with
    harmonypy's), ``beta`` calibrated to the perplexity. iLISI uses batch labels
    (higher is better mixing), cLISI cell types (1 is perfect separation).

    Parameters
    ----------
    x
        ``(n, d)`` embedding.
    labels
        ``(n,)`` batch labels (iLISI) or cell types (cLISI).
    perplexity
        Effective number of neighbours weighed (at most a third of ``n - 1``).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` scores between 1 and the number of labels.

    Raises
    ------
    ValueError
        When ``labels`` and ``x`` differ in length.
    """
    _same_length(x, labels)
    codes = pd.Categorical(labels).codes
    k = int(min(3 * perplexity, x.shape[0] - 1))
    idx, dist = knn(x, k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    w = _calibrated_weights(dist.astype(np.float64), min(perplexity, k / 3))
    share = np.zeros((x.shape[0], codes.max() + 1))
    np.add.at(share, (np.repeat(np.arange(x.shape[0]), k), codes[idx].ravel()), w.ravel())
    return 1.0 / (share**2).sum(axis=1)


def scores(
    embedding: np.ndarray,
    clusters: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    """The scores deepbid reports for one embedding and its clusters.

    Parameters
    ----------
    embedding
        ``(n, d)`` integrated embedding.
    clusters
        ``(n,)`` cluster labels.
    batch
        ``(n,)`` batch labels.
    labels
        ``(n,)`` known cell types, or ``None``.

    Returns
    -------
    dict
        ``ilisi_median``; with ``labels`` also ``ari`` and ``nmi`` of ``clusters``
        against them and ``clisi_median``.

    Raises
    ------
    ValueError
        When the arrays differ in length.
    """
    _same_length(embedding, clusters, batch, *([] if labels is None else [labels]))
    out = {"ilisi_median": float(np.median(lisi(embedding, batch)))}
    if labels is not None:
        out = {
            "ari": ari(labels, clusters),
            "nmi": nmi(labels, clusters),
            **out,
            "clisi_median": float(np.median(lisi(embedding, labels))),
        }
    return out


def batch_asw(x: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> float:
    """Batch average silhouette width (scib's definition), in [0, 1], 1 = well mixed.

    Within each cell type, the silhouette of the batch labels is computed for each
    cell, turned into ``1 - |s|`` and averaged over the cells of the type; the result
    is the mean over cell types present in more than one batch.

    Parameters
    ----------
    x
        ``(n, d)`` embedding.
    batch
        ``(n,)`` batch labels.
    labels
        ``(n,)`` cell types.

    Returns
    -------
    float
        In [0, 1]; NaN when no cell type is held by two batches.

    Raises
    ------
    ValueError
        When the arrays differ in length.
    """
    from sklearn.metrics import silhouette_samples

    _same_length(x, batch, labels)
    per_type = []
    for label in np.unique(labels):
        members = labels == label
        if np.unique(batch[members]).size < 2 or members.sum() < 3:
            continue
        s = silhouette_samples(x[members], batch[members])
        per_type.append(float(np.mean(1.0 - np.abs(s))))
    return float(np.mean(per_type)) if per_type else float("nan")


def graph_connectivity(x: np.ndarray, labels: np.ndarray, n_neighbors: int = 15) -> float:
    """Mean over cell types of the share of a type's cells in the largest strongly
    connected component of the directed kNN graph (``n_neighbors``, the cell itself
    included) restricted to that type; 1 is best.

    This is scib-metrics' definition (a cell's out-edges go to its own nearest
    neighbours, so a small group whose neighbours all lie elsewhere is cut off);
    the test suite checks the two agree.

    Parameters
    ----------
    x
        ``(n, d)`` embedding.
    labels
        ``(n,)`` cell types.
    n_neighbors
        Neighbours per cell, the cell itself included.

    Returns
    -------
    float
        In (0, 1].

    Raises
    ------
    ValueError
        When the arrays differ in length.
    """
    from scipy.sparse.csgraph import connected_components

    _same_length(x, labels)
    graph = NearestNeighbors(n_neighbors=min(n_neighbors, x.shape[0])).fit(x)
    adjacency = graph.kneighbors_graph(x)
    shares = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        _, component = connected_components(
            adjacency[members][:, members], directed=True, connection="strong"
        )
        shares.append(np.bincount(component).max() / members.size)
    return float(np.mean(shares))
