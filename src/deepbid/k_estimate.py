"""Estimating the number of clusters and the starting partition of fuzzy k-means.

The number of clusters is usually unknown. :func:`estimate_partition` runs
Leiden over a grid of resolutions on two graphs of the pretrained latent
codes: the plain kNN graph, and a batch-balanced one (every cell linked to its
nearest cells *in every batch*). It scores each partition by how well it
separates cells within their own batch (mean within-batch silhouette) and
keeps the finest partition whose score is within
:data:`SILHOUETTE_TOLERANCE` of the best, among those whose number of clusters
another partition of the scan gives too (:func:`reproduced`: a count found at
one resolution alone comes and goes with the order of the cells). Silhouette favours the coarsest
strong division, so a partition the rest of the scan reproduces least (its mean
ARI with the other partitions in the scan's lowest quarter,
:func:`scan_outliers`) is not chosen however it scores. Each graph covers the other's
failure: the balanced graph joins a type that only one batch holds to its
nearest type of another batch (DC: CD141 and CD1C cells), the plain graph
divides types by batch where the batch effect is strong. The within-batch
score cannot see a division by batch (every batch keeps its clusters whole),
so a partition that merely divides clusters of a coarser one along batch
lines (:func:`splits_by_batch`) is never chosen. A given ``n_clusters`` starts
from Leiden on the batch-balanced graph at a resolution that gives that many
clusters (:func:`partition_with_k`), k-means where no resolution does. All work on
any ``(n, d)`` embedding, so the rule can be judged apart from deepbid's own
embedding.

Silhouette favours the coarsest strong division, so where types nest in groups
(RNA mixtures of three cell lines, families of close types) the scan keeps the
groups. :func:`find_divisions` then looks inside each cluster of the final
embedding: a cluster whose cells show two modes along the line between its two
halves (Silverman's test, :mod:`deepbid.modality`, on cells held out from finding
the line) is divided, and so on within its parts. A real type's own continuous
variation (depth, cell cycle) has one mode, however strongly it scores. The parts
of one cluster are then refitted together (k-means from the parts' means), as one
cut at a time leaves each boundary where its own 2-means put it.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import NamedTuple

import igraph
import numpy as np
import scipy.sparse as sp
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.neighbors import NearestNeighbors

from . import distributed, modality, neighbors
from .cluster import gathered_sample, nearest

#: Leiden resolutions tried when the number of clusters is estimated.
RESOLUTIONS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)
#: Neighbours of each cell in the kNN graph (scanpy's default).
NEIGHBOURS = 15
#: Neighbours of each cell taken from every batch in the batch-balanced graph.
NEIGHBOURS_PER_BATCH = 5
#: Cells per batch used to score a partition (silhouette is quadratic in cells).
SILHOUETTE_CELLS = 1000
#: Silhouette differences below this are within seed-to-seed noise (measured on
#: the pretrained embeddings of the shared data sets: about 0.01-0.03).
SILHOUETTE_TOLERANCE = 0.01
#: A part of a divided cluster counts as a batch's share of it when at least this
#: share of its cells lie in batches where it is the largest part.
BATCH_SPLIT_SHARE = 0.8
#: A division along batch lines is a batch effect unless its parts lie farther apart
#: than this many times the distance between batches within shared clusters.
BATCH_SPLIT_SEPARATION = 2.0
#: A partition whose agreement with the rest of the scan falls below this quantile of
#: the scan's agreements is set aside. A coarse division of hierarchical data (endocrine
#: against exocrine pancreas cells) can recur at two or three low resolutions: then its
#: agreements are no outliers of the scan (Tukey's fence missed K = 3 on three donors,
#: agreement 0.39 against a fence of 0.33), yet they lie in its lowest quarter.
AGREEMENT_QUANTILE = 0.25
#: Resolutions bracketing the search for a given number of clusters, and its steps.
RESOLUTION_RANGE = (0.005, 10.0)
RESOLUTION_STEPS = 25
#: The search for a given number of clusters stops once it has a partition of that
#: many and brackets the lowest resolution giving it within this factor.
RESOLUTION_PRECISION = 2 ** (1 / 6)
#: Cells the number of clusters is estimated on (the graph, Leiden and PCA
#: scale with it); the other cells join the nearest centre of that partition.
ESTIMATE_CELLS = 20_000
#: Most cells of a cluster that its test of modes draws on (half find the line, half
#: are tested along it).
MODE_CELLS = 2000
#: Components of a cluster's own PCA in which it is cut in two: its strongest
#: directions; 2-means in more of them is led by noise.
MODE_COMPONENTS = 10
#: Fewest cells in each part of a division: 15 held-out cells per mode are the
#: fewest a kernel density can show a mode with.
MODE_MIN_CELLS = 30
#: Leading principal components of a cluster tested for two modes besides its 2-means
#: line. 2-means follows the direction of most spread: a type's own unimodal spread
#: (depth, say) can hold more of it than the axis between two types, and 2-means then
#: cuts along that spread while the types' axis, one of the first components, shows
#: the two modes (families scenario at 2,000 cells: types 4 sd apart on the second
#: component, 2-means along the first).
MODE_DIRECTIONS = 3
#: Level of the test of modes per cluster, shared by its directions (Bonferroni).
MODE_ALPHA = 0.01
#: Random halvings of a cluster that its test of modes is repeated on. One halving
#: makes the verdict a draw: a cluster near the level is divided on one seed and
#: not on the next (a sub-state of a CellBench cell line: 35-50 % of halvings
#: reject it, against all of them for the families scenario's types). The
#: halvings' p-values are aggregated as twice their median (Meinshausen, Meier and
#: Buhlmann 2009), still a test at the level; odd, so the median is one halving's.
MODE_SPLITS = 9
#: Bootstrap draws of each direction's test: the smallest p-value of a halving,
#: directions / (draws + 1), must reach half the level (the median's factor 2).
MODE_BOOTSTRAP = 799


def _pca(h: np.ndarray, seed: int, n_components: int = 50) -> np.ndarray:
    n_components = min(n_components, h.shape[0] - 1, h.shape[1])
    return PCA(n_components=n_components, random_state=seed).fit_transform(h)


def knn_graph(x: np.ndarray, k: int = NEIGHBOURS) -> sp.csr_matrix:
    """Symmetric unweighted kNN adjacency ``(n, n)`` of the ``(n, d)`` points (exact kNN)."""
    n = x.shape[0]
    k = min(k + 1, n)
    _, idx = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return neighbors.adjacency(np.repeat(np.arange(n), k), idx.ravel(), n)


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
    return neighbors.adjacency(np.concatenate(rows), np.concatenate(cols), n)


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


class _IgraphRandom:
    """igraph's random-number interface drawn from a numpy ``RandomState``: the stream
    ``scanpy.tl.leiden`` gives igraph for the same seed, so partitions equal scanpy's."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.RandomState(seed)

    def getrandbits(self, k: int) -> int:
        return self._rng.tomaxint() & ((1 << k) - 1)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b + 1)

    def random(self) -> float:
        return self._rng.random()

    def gauss(self, mu: float, sigma: float) -> float:
        return self._rng.normal(mu, sigma)


@contextmanager
def _seeded_igraph(seed: int):
    """igraph's random numbers drawn from ``seed`` inside the block, its own after."""
    igraph.set_random_number_generator(_IgraphRandom(seed))
    try:
        yield
    finally:
        igraph.set_random_number_generator(random)


def as_igraph(adjacency: sp.spmatrix) -> igraph.Graph:
    """The undirected weighted graph of an ``(n, n)`` symmetric adjacency, one edge per
    stored non-zero entry in storage order (as scanpy builds it for Leiden).

    A scan runs Leiden at many resolutions on one graph: built once, it is not
    rebuilt at each (in scanpy that is a third of the scan's time).
    """
    coo = sp.csr_matrix(adjacency)
    if not coo.has_canonical_format:  # one weight per pair, as indexing would read it
        coo = coo.copy()
        coo.sum_duplicates()
    coo = coo.tocoo()
    stored = coo.data != 0
    graph = igraph.Graph(
        n=adjacency.shape[0],
        # pairs of Python ints: igraph reads these several times faster than the
        # rows of a 2-column array's tolist()
        edges=list(zip(coo.row[stored].tolist(), coo.col[stored].tolist(), strict=True)),
        directed=False,
    )
    graph.es["weight"] = coo.data[stored].tolist()
    return graph


def leiden(graph: igraph.Graph, resolution: float, seed: int = 0) -> np.ndarray:
    """Leiden clusters ``(n,)`` (integers from 0) of a graph from :func:`as_igraph`:
    igraph's modularity Leiden iterated to convergence, the partition
    ``scanpy.tl.leiden(flavor="igraph", n_iterations=-1)`` finds with the same seed."""
    with _seeded_igraph(seed):
        part = graph.community_leiden(
            objective_function="modularity",
            weights="weight",
            resolution=resolution,
            n_iterations=-1,
        )
    # scanpy numbers clusters by their names' natural order, which for 0..K-1 is numeric
    return np.asarray(part.membership, dtype=np.int64)


def estimate_partition(h: np.ndarray, batch: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """Estimate the number of clusters and a starting partition (see module docstring).

    Returns
    -------
    ``(labels (n,), report)``, the report giving each resolution's cluster
    count, score, whether it divides a coarser partition by batch, and the
    index of the one chosen.
    """
    batch = np.unique(batch, return_inverse=True)[1]
    x = _pca(h, seed)
    partitions = []
    report = {"graph": [], "resolution": [], "n_clusters": [], "score": []}
    graphs = {
        "knn": as_igraph(knn_graph(x)),
        "batch-balanced": as_igraph(batch_balanced_graph(x, batch, NEIGHBOURS_PER_BATCH)),
    }
    for name, graph in graphs.items():
        for resolution in RESOLUTIONS:
            labels = leiden(graph, resolution, seed)
            n_clusters = int(labels.max()) + 1
            score = within_batch_silhouette(x, labels, batch, seed) if n_clusters > 1 else -1.0
            partitions.append(labels)
            report["graph"].append(name)
            report["resolution"].append(resolution)
            report["n_clusters"].append(n_clusters)
            report["score"].append(score)
    report["batch_split"] = [
        any(
            other.max() < labels.max() and splits_by_batch(labels, other, x, batch)
            for other in partitions
        )
        for labels in partitions
    ]
    scores, counts = np.array(report["score"]), np.array(report["n_clusters"])
    # a partition that only divides some clusters of a coarser one by batch scores
    # as well within batches as the coarser one; it must not win as "finer"
    scores[report["batch_split"]] = -np.inf
    # silhouette favours the coarsest strong division (endocrine against exocrine
    # pancreas cells, say): one low resolution can outscore the types that the rest
    # of the scan finds again and again
    report["agreement"], report["outlier"] = scan_outliers(partitions, np.isfinite(scores))
    scores[report["outlier"]] = -np.inf
    # the finest partition whose score is within noise of the best: merging two
    # real cell types is worse than splitting one, which a user can undo
    near_best = np.flatnonzero(scores >= scores.max() - SILHOUETTE_TOLERANCE)
    report["reproduced"] = reproduced(counts, np.isfinite(scores)).tolist()
    # among near-ties, a count the rest of the scan does not find again is the draw
    # of one resolution: another cell order finds it or not (pancreas, seed 1: K 10 at
    # the plain graph's top resolution alone, in one order of the cells and not the other)
    stable = near_best[np.asarray(report["reproduced"])[near_best]]
    if stable.size:
        near_best = stable
    finest = near_best[counts[near_best] == counts[near_best].max()]
    chosen = int(finest[np.argmax(scores[finest])])
    report["chosen"] = chosen
    return partitions[chosen], report


def reproduced(counts: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Whether each partition's number of clusters is found by another candidate of
    the scan (another resolution or the other graph).

    Parameters
    ----------
    counts
        ``(n_partitions,)`` clusters of each partition of the scan.
    candidate
        ``(n_partitions,)`` bool: which partitions may be chosen.

    Returns
    -------
    ``(n_partitions,)`` bool, ``False`` for partitions of one cluster.
    """
    voters = candidate & (counts > 1)
    found = np.array([(voters & (counts == count)).sum() for count in counts])
    return (counts > 1) & (found - voters.astype(int) >= 1)


def scan_outliers(
    partitions: list[np.ndarray], candidate: np.ndarray
) -> tuple[list[float], list[bool]]:
    """Each partition's agreement with the scan, and whether it is an outlier of it.

    A candidate's agreement is its mean ARI with the other candidates of two or
    more clusters; it is an outlier below the :data:`AGREEMENT_QUANTILE` quantile of
    those agreements (strictly: in a scan that agrees with itself nothing is). With
    fewer than three such candidates nothing is an outlier.

    Parameters
    ----------
    partitions
        ``(n,)`` integer labels of every partition of the scan.
    candidate
        ``(n_partitions,)`` bool: which partitions may be chosen (not batch splits).

    Returns
    -------
    ``(agreement, outlier)``, one entry per partition (agreement NaN and outlier
    ``False`` for non-candidates and partitions of one cluster).
    """
    voters = [i for i, labels in enumerate(partitions) if candidate[i] and labels.max() > 0]
    agreement = np.full(len(partitions), np.nan)
    outlier = np.zeros(len(partitions), dtype=bool)
    if len(voters) < 3:
        return agreement.tolist(), outlier.tolist()
    ari = np.eye(len(voters))
    for a, b in zip(*np.triu_indices(len(voters), 1), strict=True):
        ari[a, b] = ari[b, a] = adjusted_rand_score(partitions[voters[a]], partitions[voters[b]])
    agreement[voters] = (ari.sum(axis=1) - 1) / (len(voters) - 1)
    outlier[voters] = agreement[voters] < np.quantile(agreement[voters], AGREEMENT_QUANTILE)
    return agreement.tolist(), outlier.tolist()


def splits_by_batch(
    finer: np.ndarray,
    coarser: np.ndarray,
    x: np.ndarray,
    batch: np.ndarray,
    share: float = BATCH_SPLIT_SHARE,
    separation: float = BATCH_SPLIT_SEPARATION,
) -> bool:
    """Whether ``finer`` is ``coarser`` with some clusters divided by a batch effect.

    Each cluster of ``finer`` belongs to the ``coarser`` cluster it overlaps most.
    A divided cluster is divided along batch lines when every part holds at least
    ``share`` of its cells in batches where it is the largest part (each batch
    keeps its cells together); a part that shares its batches with its siblings
    (a rare subtype) makes the division real. Along batch lines, the division is
    still real when its parts lie more than ``separation`` times farther apart
    than the batches of the undivided clusters that several batches share (the
    batch effect as those clusters show it): two types that each only one batch
    holds (DC's CD141 and CD1C cells) are farther apart than the batch effect.

    Parameters
    ----------
    finer, coarser
        ``(n,)`` integer labels.
    x
        ``(n, d)`` the points both partitions were found on.
    batch
        ``(n,)`` integer batch codes.

    Returns
    -------
    ``False`` when ``finer`` divides nothing, or divides some cluster for real.
    """
    n_fine = finer.max() + 1
    overlap = np.zeros((n_fine, coarser.max() + 1))
    np.add.at(overlap, (finer, coarser), 1)
    parent = overlap.argmax(axis=1)
    divided = [p for p in np.unique(parent) if (parent == p).sum() > 1]
    if not divided:
        return False
    gaps = []
    for p in divided:
        parts = np.flatnonzero(parent == p)
        inside = np.isin(finer, parts)
        # (batches, parts): cells of each part in each batch
        table = np.zeros((batch.max() + 1, n_fine))
        np.add.at(table, (batch[inside], finer[inside]), 1)
        table = table[:, parts]
        # a tie is no batch's own part: the tied parts share that batch
        largest = table == table.max(axis=1, keepdims=True)
        largest &= largest.sum(axis=1, keepdims=True) == 1
        if ((table * largest).sum(axis=0) / table.sum(axis=0) < share).any():
            return False
        gaps.append(_spread(x[inside], finer[inside]))
    undivided = np.setdiff1d(np.unique(coarser), divided)
    shifts = [_spread(x[coarser == c], batch[coarser == c]) for c in undivided]
    shifts = [shift for shift in shifts if np.isfinite(shift)]
    if not shifts:  # every shared cluster is divided: nothing tells a type from a batch
        return True
    return bool(max(gaps) <= separation * np.median(shifts))


def _spread(x: np.ndarray, groups: np.ndarray, min_cells: int = 5) -> float:
    """Mean distance between the centroids of the ``groups`` holding at least
    ``min_cells`` of the ``(n, d)`` points; NaN with fewer than two such groups."""
    names, counts = np.unique(groups, return_counts=True)
    names = names[counts >= min_cells]
    if names.size < 2:
        return float("nan")
    centroids = np.stack([x[groups == name].mean(axis=0) for name in names])
    distances = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    return float(distances[np.triu_indices(names.size, 1)].mean())


def initial_partition(
    h: np.ndarray, batch: np.ndarray, n_clusters: int | None, seed: int, leiden_start: bool = True
) -> tuple[np.ndarray, dict]:
    """Hard starting labels ``(n,)`` for fuzzy k-means: estimated, or for a given K
    (:func:`partition_with_k`, or k-means without ``leiden_start``).

    Up to :data:`ESTIMATE_CELLS` cells (in all processes together) are
    partitioned directly; beyond that a random sample is, and every cell takes
    the label of the nearest centre of the sample's partition.
    """
    if not distributed.active() and h.shape[0] <= ESTIMATE_CELLS:
        return _partition(h, batch, n_clusters, seed, leiden_start)
    sample_h, sample_batch = gathered_sample((h, batch), ESTIMATE_CELLS, seed)
    result = None
    if distributed.rank() == 0:
        labels, report = _partition(sample_h, sample_batch, n_clusters, seed, leiden_start)
        onehot = np.eye(labels.max() + 1, dtype=sample_h.dtype)[labels]
        result = ((onehot.T @ sample_h) / onehot.sum(axis=0)[:, None], report)
    found, report = distributed.broadcast_object(result)
    labels = nearest(torch.from_numpy(h), torch.from_numpy(found)).numpy()
    return labels, report


def partition_with_k(
    h: np.ndarray, batch: np.ndarray, n_clusters: int, seed: int
) -> tuple[np.ndarray, dict]:
    """A starting partition ``(n,)`` of exactly ``n_clusters`` clusters, and a report of
    the resolution that gave it (NaN: k-means).

    Leiden on the batch-balanced graph of the K rule, at a resolution found by
    bisection on its logarithm, as a scanpy user tunes ``resolution`` to a known
    number of types. k-means on the codes, the paper's start, splits the large types
    of an unequal mix and merges the small ones (pancreas, 3 donors, K = 10 given, 8
    fits: ARI 0.835 after training from k-means, 0.904 from this start; from Leiden
    on the plain kNN graph 0.874; README, defaults table). Where no resolution gives
    ``n_clusters`` clusters, k-means does.

    The bisection goes on to the lowest resolution that gives ``n_clusters`` (within
    :data:`RESOLUTION_PRECISION`), not the first it meets: a higher one reaches the
    same count by cutting a large type and merging small ones (pancreas without donor
    human1, K = 10: a large type cut in two and a fragment of it left alone).
    """
    batch = np.unique(batch, return_inverse=True)[1]
    x = _pca(h, seed)
    graph = as_igraph(batch_balanced_graph(x, batch, NEIGHBOURS_PER_BATCH))
    low, high = np.log(RESOLUTION_RANGE)
    # a hit lowers the upper bracket to it, so every later hit is at a lower resolution
    lowest: tuple[float, np.ndarray] | None = None
    for _ in range(RESOLUTION_STEPS):
        middle = (low + high) / 2
        labels = leiden(graph, float(np.exp(middle)), seed)
        found = int(labels.max()) + 1
        if found == n_clusters:
            lowest = (middle, labels)
        low, high = (middle, high) if found < n_clusters else (low, middle)
        if lowest is not None and high - low < np.log(RESOLUTION_PRECISION):
            break
    if lowest is None:
        return _kmeans(h, n_clusters, seed), {"resolution": float("nan")}
    return lowest[1], {"resolution": float(np.exp(lowest[0]))}


def _partition(
    h: np.ndarray, batch: np.ndarray, n_clusters: int | None, seed: int, leiden_start: bool
) -> tuple[np.ndarray, dict]:
    if n_clusters is None:
        return estimate_partition(h, batch, seed)
    if leiden_start:
        return partition_with_k(h, batch, n_clusters, seed)
    return _kmeans(h, n_clusters, seed), {}


def _kmeans(h: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(h)


class Division(NamedTuple):
    """One cluster divided into parts by :func:`find_divisions`."""

    #: The cluster divided; its first part keeps its number.
    parent: int
    #: ``(m, d)`` the ``m`` parts' centres in the embedding.
    centres: np.ndarray


def find_divisions(
    z: np.ndarray, p: np.ndarray, batch: np.ndarray, seed: int
) -> tuple[list[Division], dict]:
    """The divisions of every cluster of ``p`` that has two modes, and a report.

    A cluster (cells whose largest membership it is) of at least
    ``2 * MODE_MIN_CELLS`` cells is looked at in its own PCA (:data:`MODE_COMPONENTS`):
    on half of its cells (at most :data:`MODE_CELLS` in all) 2-means draws a line
    between two centres and PCA finds the first :data:`MODE_DIRECTIONS` components;
    the other half, projected on each of these lines, is tested for one mode
    (:func:`deepbid.modality.unimodality_pvalue`, Bonferroni over the lines), and the
    p-values of :data:`MODE_SPLITS` such halvings are aggregated as twice their median.
    Held-out cells, because 2-means finds two groups in any cloud, and its own cells
    projected on its own line always show them. Below :data:`MODE_ALPHA` the cluster
    is divided by 2-means along the line that showed the modes, on all its cells,
    unless a part would hold fewer than
    :data:`MODE_MIN_CELLS` cells or the parts divide it by batch
    (:func:`splits_by_batch`); its parts are tested in turn. The final parts of each
    cluster are refitted by k-means on its cells in the embedding, started from the
    parts' means: every cell goes to the nearest part, which the boundaries of the
    successive 2-means cuts do not give.

    Parameters
    ----------
    z
        ``(n, d)`` points of this process's cells in which clusters are tested: the
        integrated embedding.
    p
        ``(n, K)`` memberships.
    batch
        ``(n,)`` integer batch codes.

    Returns
    -------
    ``(divisions, report)``: one division per cluster divided, in order of the
    cluster (its parts after the first are new clusters, numbered on from ``K``, see
    :func:`divide`); the report lists each cluster tested (parts included), its cells,
    the test's p-value and whether it was divided.
    """
    labels = p.argmax(axis=1)
    if distributed.active() or z.shape[0] > ESTIMATE_CELLS:
        sample = gathered_sample((z, labels, batch), ESTIMATE_CELLS, seed)
    else:
        sample = (z, labels, batch)
    found = None
    if distributed.rank() == 0:
        found = _divisions(*sample, p.shape[1], seed)
    return distributed.broadcast_object(found)


def divide(z: np.ndarray, p: np.ndarray, divisions: list[Division]) -> np.ndarray:
    """Memberships ``(n, K + new parts)``: each cell's membership of a divided cluster
    goes to the part whose centre is nearest it (``z`` ``(n, d)``, ``p`` ``(n, K)``)."""
    for parent, centres in divisions:
        route = nearest(torch.from_numpy(z), torch.from_numpy(centres)).numpy()
        parts = p[:, parent, None] * (route[:, None] == np.arange(1, centres.shape[0]))
        p = np.concatenate([p, parts], axis=1)
        p[route > 0, parent] = 0.0
    return p


def new_parts(divisions: list[Division]) -> int:
    """Number of clusters ``divisions`` add."""
    return sum(d.centres.shape[0] - 1 for d in divisions)


def _divisions(
    z: np.ndarray, labels: np.ndarray, batch: np.ndarray, k: int, seed: int
) -> tuple[list[Division], dict]:
    """The divisions of the ``k`` clusters of ``labels`` (see :func:`find_divisions`)
    and the report."""
    rng = np.random.default_rng(seed)
    labels = labels.copy()
    report = {"cluster": [], "cells": [], "p_value": [], "divided": []}
    parts, centres, pending = {}, {}, list(range(k))
    while pending:
        parent = pending.pop(0)
        members = np.flatnonzero(labels == parent)
        if members.size < 2 * MODE_MIN_CELLS:
            continue
        drawn = (
            np.arange(members.size)
            if members.size <= MODE_CELLS
            else rng.choice(members.size, MODE_CELLS, replace=False)
        )
        pca = PCA(min(MODE_COMPONENTS, drawn.size - 1, z.shape[1]), random_state=seed)
        y = pca.fit_transform(z[members[drawn]])
        p_value, line = _mode_test(y, rng, seed)
        route = None
        if p_value <= MODE_ALPHA:
            # cut along the direction that showed the modes
            two = KMeans(n_clusters=2, n_init=4, random_state=seed).fit(y @ line[:, None])
            coords = pca.transform(z[members]) @ line[:, None]
            route = nearest(torch.from_numpy(coords), torch.from_numpy(two.cluster_centers_))
            route = route.numpy()
            if np.bincount(route, minlength=2).min() < MODE_MIN_CELLS or splits_by_batch(
                route, np.zeros_like(route), coords, batch[members]
            ):
                route = None
        report["cluster"].append(parent)
        report["cells"].append(int(members.size))
        report["p_value"].append(float(p_value))
        report["divided"].append(route is not None)
        if route is None:
            continue
        child = k + len(parts)
        labels[members[route == 1]] = child
        root = parts[child] = parts.get(parent, parent)
        centres[root] = _refit(z, labels, [root] + [c for c, r in parts.items() if r == root], seed)
        pending += [parent, child]
    return [Division(root, c) for root, c in sorted(centres.items())], report


def _refit(z: np.ndarray, labels: np.ndarray, family: list[int], seed: int) -> np.ndarray:
    """The ``(m, d)`` centres of k-means on the cells of the ``m`` parts ``family`` of
    one cluster, from the parts' means; their cells' ``labels`` are set to the nearest
    part."""
    cells = np.flatnonzero(np.isin(labels, family))
    means = np.stack([z[labels == part].mean(axis=0) for part in family])
    fitted = KMeans(len(family), init=means, n_init=1, random_state=seed).fit(z[cells])
    labels[cells] = np.asarray(family)[fitted.labels_]
    return fitted.cluster_centers_.astype(z.dtype)


def _mode_test(y: np.ndarray, rng: np.random.Generator, seed: int) -> tuple[float, np.ndarray]:
    """P-value that the ``(n, c)`` points have one mode, and the ``(c,)`` direction that
    showed the most: :func:`_halving_test` on :data:`MODE_SPLITS` random halvings,
    aggregated as twice the median p-value; the direction is that of the halving
    with the smallest."""
    tested = [_halving_test(y, rng, seed) for _ in range(MODE_SPLITS)]
    p_values = np.array([p_value for p_value, _ in tested])
    return min(1.0, 2.0 * float(np.median(p_values))), tested[int(np.argmin(p_values))][1]


def _halving_test(y: np.ndarray, rng: np.random.Generator, seed: int) -> tuple[float, np.ndarray]:
    """P-value that the ``(n, c)`` points have one mode on one random halving, and the
    ``(c,)`` direction that showed the most: the line 2-means draws between two
    halves of them and their first :data:`MODE_DIRECTIONS` components, each found on
    one half of the points and tested on the other, the smallest p-value times the
    directions tested (Bonferroni); 1 where 2-means leaves a part too small to test."""
    order = rng.permutation(y.shape[0])
    fit, held = order[::2], order[1::2]
    two = KMeans(n_clusters=2, n_init=4, random_state=seed).fit(y[fit])
    if np.bincount(two.labels_, minlength=2).min() < MODE_MIN_CELLS // 2:
        return 1.0, np.eye(y.shape[1])[0]
    components = PCA(min(MODE_DIRECTIONS, y.shape[1]), random_state=seed).fit(y[fit])
    lines = [two.cluster_centers_[1] - two.cluster_centers_[0], *components.components_]
    tests = len(lines)
    # a halving matters only below half the level (the median's factor 2)
    level = MODE_ALPHA / (2 * tests)
    p_values = [
        modality.unimodality_pvalue(y[held] @ line, rng, MODE_BOOTSTRAP, level) for line in lines
    ]
    best = int(np.argmin(p_values))
    return min(1.0, tests * p_values[best]), lines[best] / np.linalg.norm(lines[best])
