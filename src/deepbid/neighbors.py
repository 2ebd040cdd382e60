"""Nearest neighbours of an embedding, for Leiden, UMAP and LISI.

Exact (scikit-learn, brute force) up to :data:`EXACT_MAX_CELLS` cells, where it
is fast and the results match every published score; above, approximate with
pynndescent (NN-descent, the library UMAP and scanpy use), whose cost grows
about linearly with the cells where exact search grows with their square. The
approximate graph's recall against the exact one is tested.

scanpy's own pynndescent path returns a ``csr_array`` that its neighbour code
cannot read with scipy >= 1.15, so scanpy gets the graph through
:class:`KNNTransformer` instead.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.neighbors import NearestNeighbors

#: Largest number of cells searched exactly; above it the search is approximate.
EXACT_MAX_CELLS = 50_000


def knn(
    x: np.ndarray, k: int, seed: int = 0, exact: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest cells of every row of ``x`` ``(n, d)``, itself first.

    Parameters
    ----------
    k
        Neighbours per cell, the cell itself included.
    seed
        Seeds the approximate search.
    exact
        Force exact (``True``) or approximate (``False``) search; ``None``: exact up to
        :data:`EXACT_MAX_CELLS` cells.

    Returns
    -------
    ``(indices (n, k) int64, distances (n, k) float32)``, each row by increasing
    Euclidean distance.
    """
    k = min(k, x.shape[0])
    if exact is None:
        exact = x.shape[0] <= EXACT_MAX_CELLS
    if exact:
        dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    else:
        from pynndescent import NNDescent

        # UMAP's settings for the forest and the number of descent iterations
        index = NNDescent(
            np.ascontiguousarray(x, dtype=np.float32),
            n_neighbors=k,
            random_state=seed,
            n_trees=min(64, 5 + round(x.shape[0] ** 0.5 / 20.0)),
            n_iters=max(5, round(np.log2(x.shape[0]))),
        )
        idx, dist = index.neighbor_graph
    return _self_first(idx.astype(np.int64), dist.astype(np.float32))


def adjacency(rows: np.ndarray, cols: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric unweighted adjacency ``(n, n)`` of the links ``rows[i] -> cols[i]``:
    1 where either of two cells lists the other, a cell's link to itself dropped."""
    keep = rows != cols
    graph = sp.csr_matrix((np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(n, n))
    graph = graph.maximum(graph.T)
    graph.data[:] = 1.0  # a pair listed twice was summed
    return graph


def _self_first(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Put each cell first in its own row at distance exactly 0.

    Brute-force distances come from ``|x|^2 + |y|^2 - 2 x.y``, which leaves a cell
    a small non-zero distance to itself, and UMAP's connectivities read the
    nearest non-zero distance as the local scale; a duplicate cell can also come
    before the cell itself, and an approximate search can miss it.
    """
    cells = np.arange(idx.shape[0])
    is_self = idx == cells[:, None]
    found = is_self.any(axis=1)
    # rows without the cell drop their farthest neighbour to make room for it
    where = np.where(found, is_self.argmax(axis=1), idx.shape[1] - 1)
    order = np.argsort(np.arange(idx.shape[1])[None, :] != where[:, None], axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    idx[:, 0], dist[:, 0] = cells, 0.0
    return idx, dist


class KNNTransformer(TransformerMixin, BaseEstimator):
    """A scikit-learn neighbours transformer for ``sc.pp.neighbors(transformer=...)``.

    ``fit_transform(x)`` returns the ``(n, n)`` CSR matrix of distances from each
    cell to its ``n_neighbors`` nearest cells (itself included, at distance 0), as
    :func:`knn` finds them.
    """

    def __init__(self, n_neighbors: int = 15, random_state: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.random_state = random_state

    def fit(self, x: np.ndarray, y: None = None) -> KNNTransformer:
        self.n_samples_fit_ = x.shape[0]
        return self

    def fit_transform(self, x: np.ndarray, y: None = None) -> sp.csr_matrix:
        self.fit(x)
        idx, dist = knn(x, self.n_neighbors, self.random_state)
        n, k = idx.shape
        # one row per cell with its k entries in distance order (explicit zeros
        # kept), the layout scanpy reads without re-sorting
        return sp.csr_matrix((dist.ravel(), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
