"""Batch statistics in the latent space: the paper's batch-mixing term (eq. 10),
estimated over all cells rather than one minibatch, and the final alignment's
per-batch offsets and scales within each cluster.

Weighted by cluster mass, eq. (10) is a divergence between the joint
distribution of batch and cluster and a target batch mix per cluster:
``D = sum_k w_k sum_B u_Bk log(u_Bk / t_Bk)``, with ``u_Bk`` batch ``B``'s share
of soft cluster ``k`` and ``w_k`` the cluster's share of cells. With the overall
batch mix as target (``t_Bk = v_B``) it is the mutual information between batch
and cluster. Counted on the 128 cells of a minibatch, its plug-in value is
biased by about ``(K - 1)(B - 1) / 2n`` nats and its gradient is mostly sampling
noise, so :class:`BatchMix` keeps the batch x cluster
counts of *all* cells: recounted exactly at every re-estimation, and between
recounts a running (exponentially weighted) count whose time constant is one
epoch. A minibatch then carries the divergence's exact per-cell gradient,
``d D / d p_jk = log(u_{b_j k} / t_{b_j k}) / n``, through the surrogate
:func:`surrogate`, whose mean over all cells is ``D`` itself.

Counts arrive already summed over processes (the trainer reduces them), so
nothing here talks to a process group.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
import torch

_TINY = 1e-12
#: Cells per chunk where a per-cell ``(n, d)`` temporary would be built.
_CHUNK = 65_536


def batch_cluster_counts(p: torch.Tensor, batch: torch.Tensor, n_batches: int) -> torch.Tensor:
    """Soft counts ``(n_batches, K)`` of batch and cluster from ``(n, K)`` memberships."""
    onehot = torch.nn.functional.one_hot(batch, n_batches).to(p.dtype)
    return onehot.T @ p


def cluster_batch_mix(counts: torch.Tensor) -> torch.Tensor:
    """Each cluster's batch mix ``u`` ``(n_batches, K)`` from soft counts: columns sum to 1."""
    return counts / counts.sum(dim=0, keepdim=True).clamp_min(_TINY)


def divergence(counts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k KL(u_k || t_k)`` of ``(n_batches, K)`` counts against target mixes ``t``.

    Zero exactly when every cluster holds its target mix; with the overall batch
    mix as target, the mutual information between batch and cluster (nats).
    """
    mass = counts.sum(dim=0)
    u = cluster_batch_mix(counts)
    kl = (u * (torch.log(u.clamp_min(_TINY)) - torch.log(target.clamp_min(_TINY)))).sum(dim=0)
    return (mass / mass.sum().clamp_min(_TINY) * kl).sum()


def surrogate(p: torch.Tensor, batch: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """Minibatch term ``mean_j sum_k p_jk log(u_{b_j k} / t_{b_j k})`` with the full-data
    ``(n_batches, K)`` log-ratios held fixed.

    Over all cells its mean is :func:`divergence` and its gradient with respect
    to the memberships is the divergence's, so a minibatch gives an unbiased
    estimate of both at any number of cells.
    """
    return (p * log_ratio[batch]).sum(dim=1).mean()


def _running(
    total: torch.Tensor, part: torch.Tensor, n_cells: float, horizon: float
) -> torch.Tensor:
    """A running total over ``n_cells`` cells after folding in ``part``, the sum over
    ``n = part.sum()`` new cells, with a time constant of ``horizon`` cells:
    ``(1 - n/T) * total + (N/T) * part``."""
    n = float(part.sum())
    return (1.0 - n / horizon) * total + (n_cells / horizon) * part


class BatchMix:
    """Running full-data batch x cluster counts and the target mix of each cluster.

    Parameters
    ----------
    counts
        ``(n_batches, K)`` soft counts over all cells (exact, from a full pass).
    target
        ``(n_batches, K)`` target batch mix of each cluster (columns sum to 1).
    horizon
        Cells one epoch draws (default: all ``N``); see :meth:`update`.
    """

    def __init__(
        self, counts: torch.Tensor, target: torch.Tensor, horizon: float | None = None
    ) -> None:
        self.counts = counts
        self.target = target
        self.n_cells = float(counts.sum())
        self.horizon = self.n_cells if horizon is None else min(float(horizon), self.n_cells)

    def update(self, counts: torch.Tensor) -> None:
        """Fold in the ``(n_batches, K)`` counts of one minibatch (of all processes).

        The weight ``n / T`` (``T`` the horizon) gives the running count a time
        constant of one epoch: it follows the latent space as it moves, with the
        variance of a count over about ``T`` cells, not ``n``. On data larger than
        an epoch's draw a time constant of ``N`` cells would hold the counts at the
        start of the epoch while the codes move under them.
        """
        self.counts = _running(self.counts, counts, self.n_cells, self.horizon)

    def log_ratio(self) -> torch.Tensor:
        """``log(u_Bk / t_Bk)`` ``(n_batches, K)``: the per-cell gradient of :meth:`value`."""
        u = cluster_batch_mix(self.counts)
        return torch.log(u.clamp_min(_TINY)) - torch.log(self.target.clamp_min(_TINY))

    def value(self) -> float:
        """The divergence of the running counts from the targets, in nats, less its
        sampling bias (Miller-Madow).

        Counted over ``N`` cells, batches that are independent of the clusters
        still read about ``(K - T)(B - 1) / 2N`` nats (``T`` distinct targets,
        each estimated from the same cells): 0.05 nats for 100 clusters and 3
        batches at 2,000 cells. The correction is a constant, so it leaves the
        gradient alone.
        """
        n_batches, n_clusters = self.counts.shape
        filled = int((self.counts.sum(dim=0) >= 1).sum())
        n_targets = torch.unique(self.target, dim=1).shape[1]
        bias = max(filled - n_targets, 0) * (n_batches - 1) / (2 * self.n_cells)
        return max(float(divergence(self.counts, self.target)) - bias, 0.0)


def batch_cluster_sums(
    h: torch.Tensor, p: torch.Tensor, batch: torch.Tensor, n_batches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Membership-weighted sums ``(n_batches, K, d)`` of the ``(n, d)`` codes and the
    soft counts ``(n_batches, K)`` behind them, from ``(n, K)`` memberships."""
    onehot = torch.nn.functional.one_hot(batch, n_batches).to(p.dtype)
    weights = (onehot[:, :, None] * p[:, None, :]).reshape(h.shape[0], -1)  # (n, B * K)
    sums = (weights.T @ h).reshape(n_batches, p.shape[1], h.shape[1])
    return sums, weights.sum(dim=0).reshape(n_batches, p.shape[1])


def batch_trust(counts: torch.Tensor) -> torch.Tensor:
    """``(n_batches, K)`` trust in each batch's centroid in each cluster:
    ``min(1, u_Bk / v_B)``, its share of the cluster over its share of all cells.
    A batch far below its usual share of a cluster is more likely a few cells of
    a neighbouring type than the cluster's own cells seen through a batch effect;
    pulling them onto the cluster would merge that type into it."""
    u = cluster_batch_mix(counts)
    v = counts.sum(dim=1, keepdim=True) / counts.sum()
    return (u / v.clamp_min(_TINY)).clamp(max=1.0)


def batch_offsets(
    sums: torch.Tensor, counts: torch.Tensor, n_reference: int | None = None
) -> torch.Tensor:
    """``w_Bk (m_Bk - m_k)`` ``(n_batches, K, d)``: each batch's trusted offset from its
    cluster's centroid, from the membership-weighted sums ``(n_batches, K, d)`` and
    counts ``(n_batches, K)`` of :func:`batch_cluster_sums`.

    ``m_Bk`` is batch ``B``'s centroid in cluster ``k``, ``w_Bk`` its trust (see
    :func:`batch_trust`) and ``m_k`` the ``w n``-weighted mean of the centroids of the first
    ``n_reference`` batches (default: all), so that batches mapped onto a trained
    model are measured against the reference's centroids alone.
    """
    weights = batch_trust(counts)
    batch_mean = batch_centroids(sums, counts)
    mass = (weights * counts)[:n_reference, :, None]
    centre = (mass * batch_mean[:n_reference]).sum(dim=0) / mass.sum(dim=0).clamp_min(_TINY)
    return weights[:, :, None] * (batch_mean - centre[None])


def batch_centroids(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Centroids ``m_Bk`` ``(n_batches, K, d)`` of :func:`batch_cluster_sums`'s sums and
    counts (0 where a batch holds none of a cluster)."""
    return sums / counts.clamp_min(_TINY)[:, :, None]


def centroid_distances(
    h: torch.Tensor, labels: torch.Tensor, batch: torch.Tensor, centroids: torch.Tensor
) -> torch.Tensor:
    """Squared distance ``(n,)`` of each ``(n, d)`` code from the centroid of its batch
    in its hard cluster ``labels`` ``(n,)``, in chunks of cells."""
    parts = zip(*(torch.split(t, _CHUNK) for t in (h, labels, batch)), strict=True)
    return torch.cat([(c - centroids[b, k]).pow(2).sum(dim=1) for c, k, b in parts])


def batch_spreads(
    distances: torch.Tensor, batch: torch.Tensor, labels: torch.Tensor, n_batches: int, k: int
) -> torch.Tensor:
    """Median squared distance ``(n_batches, K)`` of each batch's cells in each cluster
    from their mean, from every cell's squared distance ``(n,)`` to the mean of its
    batch's cells in its hard cluster ``labels`` ``(n,)``; NaN where a batch holds
    fewer than two cells of a cluster.

    A median, not a variance: a few outlying cells set a cluster's variance but not
    where most of its cells, and so their neighbours, lie. Times ``n / (n - 1)``, as
    for a variance: ``n`` cells lie closer to their own mean than to the mean they
    were drawn around (one cell: at distance 0).
    """
    groups = pd.Series(distances.cpu().numpy()).groupby((batch * k + labels).cpu().numpy())
    n = groups.size()
    spread = (groups.median() * n / (n - 1)).where(n > 1)
    out = torch.full((n_batches * k,), float("nan"), dtype=distances.dtype)
    out[torch.tensor(spread.index.to_numpy())] = torch.as_tensor(
        spread.to_numpy(), dtype=distances.dtype
    )
    return out.reshape(n_batches, k)


def batch_scales(
    spreads: torch.Tensor, counts: torch.Tensor, n_reference: int | None = None
) -> torch.Tensor:
    """``1 + w_Bk (sqrt(r_k / r_Bk) - 1)`` ``(n_batches, K)``: the factor that brings
    batch ``B``'s spread ``r_Bk`` in cluster ``k`` (:func:`batch_spreads`) to the
    ``w n``-weighted mean ``r_k`` of the first ``n_reference`` batches' spreads, as
    far as the batch's centroid is trusted (``w``, see :func:`batch_trust`); 1 where
    either spread is missing.

    In the hundreds of latent dimensions the neighbours of a cell are set by the
    radius of each batch's cloud as much as by its centre: a batch whose cells lie
    a few per cent closer to their centroid is every other batch's nearest neighbour
    and its own.
    """
    weights = batch_trust(counts)
    known = torch.isfinite(spreads)
    mass = torch.where(known, weights * counts, 0.0)[:n_reference]
    reference = (mass * spreads[:n_reference].nan_to_num()).sum(dim=0) / mass.sum(dim=0)
    ratio = (reference[None] / spreads).sqrt()
    return torch.where(known & torch.isfinite(ratio), 1 + weights * (ratio - 1), 1.0)


def remove_offsets(
    h: torch.Tensor,
    p: torch.Tensor,
    batch: torch.Tensor,
    offsets: torch.Tensor,
    scales: torch.Tensor | None = None,
    centroids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(n, d)`` codes with each cell's batch offsets ``(n_batches, K, d)``
    removed, weighted by its memberships ``(n, K)``: ``h_j - sum_k p_jk o_{b_j k}``.

    With ``scales`` ``(n_batches, K)`` (:func:`batch_scales`) and the batches'
    ``centroids`` ``(n_batches, K, d)``, each cell's distance from its batch's
    centroid is scaled too: ``h_j + sum_k p_jk [(s_{b_j k} - 1)(h_j - m_{b_j k}) -
    o_{b_j k}]``.
    """
    out = h.clone()
    for b in torch.unique(batch).tolist():  # per batch: never an (n, K, d) array
        rows = batch == b
        out[rows] -= p[rows] @ offsets[b]
        if scales is not None:
            stretch = scales[b] - 1
            out[rows] += (p[rows] @ stretch)[:, None] * h[rows]
            out[rows] -= p[rows] @ (stretch[:, None] * centroids[b])
    return out


class FinalAlignment(NamedTuple):
    """What the final alignment measured in each batch and cluster, and what it removes."""

    #: ``(n_batches, K, d)`` membership-weighted sums of the codes
    #: (:func:`batch_cluster_sums`, each cell counted in its hard cluster).
    sums: torch.Tensor
    #: ``(n_batches, K)`` the soft counts behind ``sums``.
    counts: torch.Tensor
    #: ``(n_batches, K)`` median squared distances from the batch's mean (:func:`batch_spreads`).
    spreads: torch.Tensor
    #: ``(n_batches, K, d)`` trusted offsets (:func:`batch_offsets`).
    offsets: torch.Tensor
    #: ``(n_batches, K)`` spread factors (:func:`batch_scales`).
    scales: torch.Tensor


def final_alignment(
    sums: torch.Tensor,
    counts: torch.Tensor,
    spreads: torch.Tensor,
    n_reference: int | None = None,
) -> FinalAlignment:
    """The :class:`FinalAlignment` of measured ``sums``, ``counts`` and ``spreads``, its
    offsets and scales against the first ``n_reference`` batches (default: all)."""
    return FinalAlignment(
        sums,
        counts,
        spreads,
        batch_offsets(sums, counts, n_reference),
        batch_scales(spreads, counts, n_reference),
    )


def extended(
    reference: FinalAlignment, measured: FinalAlignment, n_reference: int
) -> FinalAlignment:
    """``reference``'s first ``n_reference`` batches unchanged, and ``measured``'s
    batches from ``n_reference`` on, their offsets and scales measured against the
    reference's centroids and spreads: the reference's embedding does not move."""
    sums, counts, spreads = (
        torch.cat([old[:n_reference], new[n_reference:]])
        for old, new in zip(reference[:3], measured[:3], strict=True)
    )
    new = final_alignment(sums, counts, spreads, n_reference)
    return new._replace(
        offsets=torch.cat([reference.offsets[:n_reference], new.offsets[n_reference:]]),
        scales=torch.cat([reference.scales[:n_reference], new.scales[n_reference:]]),
    )


def align(
    h: torch.Tensor, p: torch.Tensor, batch: torch.Tensor, measured: FinalAlignment, scaled: bool
) -> torch.Tensor:
    """The ``(n, d)`` codes ``h`` with ``measured``'s offsets removed, weighted by the
    memberships ``(n, K)`` of the clusters it was measured in, and with ``scaled`` the
    spreads matched too (:func:`remove_offsets`)."""
    centroids = batch_centroids(measured.sums, measured.counts) if scaled else None
    return remove_offsets(
        h, p, batch, measured.offsets, measured.scales if scaled else None, centroids
    )
