"""Batch offsets measured apart from each batch's mix of what a cluster holds.

The final alignment moves each batch's cells in a cluster by that batch's offset
there. Measured between centroids (:func:`deepbid.mixing.batch_offsets`), the
offset is the batch effect plus the difference between the batches' mixes of
whatever the cluster holds: two close types, a family of types, a gradient. A
batch that holds mostly one end of a cluster has its centroid at that end, and
removing the difference pulls each batch's end onto the other batches' ends: the
types that share the cluster blur into each other.

Here the cells of each cluster are fitted by a mixture of ``m`` isotropic
Gaussian components whose centres all batches share, whose weights each batch has
of its own (its mix), and which each batch sees shifted by one vector (its
offset)::

    h_j ~ sum_c pi_{b_j c} N(mu_c + delta_{b_j}, sigma^2 I)

A difference of mix moves a batch's weights, not its shift. The model is fitted
by expectation conditional maximisation (Meng & Rubin 1993): posteriors, then the
weights, the centres, the shifts and the variance, each given the others. A mix
and a shift can explain the same cells (a batch holding mostly one type, shifted
onto another type that the other batches hold), so the fit has more than one
optimum: it is started twice, from the codes as they are (training has mixed the
batches, so their types already lie close) and from the centroid offsets (the
offset as measured without the mixture), each with k-means++ components of the
cells so placed, and the start that ends with the higher likelihood is kept.

Every sum is taken through ``reduce`` (the trainer passes an all-reduce when the
cells are sharded over processes), so the fit is the same on one process as on
several.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from sklearn.cluster import kmeans_plusplus

from .cluster import Reduce, local

#: Most ECM iterations of one cluster's mixture.
ITERATIONS = 100
#: Stop when no shift moves by more than this share of the components' sd.
TOLERANCE = 1e-3
#: Cells of a cluster in the sample its components start from, at least per component.
START_CELLS = 10
_TINY = 1e-12


class ShiftedMixture(NamedTuple):
    """One cluster's mixture of shared components seen through each batch's shift."""

    #: ``(m, d)`` component centres, shared by the batches.
    centres: torch.Tensor
    #: ``(n_batches, m)`` each batch's component weights (its mix).
    weights: torch.Tensor
    #: ``(n_batches, d)`` each batch's shift (0 for a batch with no cells here).
    shifts: torch.Tensor
    #: The components' common variance per dimension.
    variance: float
    #: Log-likelihood of the cells (weighted by their mass) under the mixture.
    log_likelihood: float = float("nan")


def _squared_distances(y: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` squared distances of ``(n, d)`` points from ``(m, d)`` centres, without
    an ``(n, m, d)`` array."""
    return (
        y.square().sum(dim=1, keepdim=True) - 2 * y @ centres.T + centres.square().sum(dim=1)
    ).clamp_min(0.0)


def fit_shifted_mixture(
    h: torch.Tensor,
    mass: torch.Tensor,
    batch: torch.Tensor,
    n_batches: int,
    centres: torch.Tensor | None,
    shifts: torch.Tensor,
    anchor: torch.Tensor,
    reference: ShiftedMixture | None = None,
    n_reference: int = 0,
    reduce: Reduce = local,
) -> ShiftedMixture:
    """ECM of one cluster's :class:`ShiftedMixture`.

    Parameters
    ----------
    h
        ``(n, d)`` codes of this process's cells of the cluster.
    mass
        ``(n,)`` each cell's weight (its membership of the cluster).
    batch
        ``(n,)`` integer batch codes.
    n_batches
        Number of batches.
    centres
        ``(m, d)`` starting component centres (:func:`starting_centres`); ``None``
        with ``reference``.
    shifts
        ``(n_batches, d)`` starting shifts (0, or the centroid offsets).
    anchor
        ``(n_batches,)`` weights of the batches whose weighted mean shift is 0 (the
        shifts are otherwise defined up to a common vector, which the centres take);
        unused with ``reference``, whose centres fix that vector.
    reference
        A fitted mixture whose centres, variance and first ``n_reference`` shifts
        stay fixed: the shifts of the batches from ``n_reference`` on are measured
        against it (batches mapped onto a trained model).
    n_reference
        Batches of ``reference``.

    Returns
    -------
    The fitted mixture.
    """
    h, mass = h.double(), mass.double()
    onehot = torch.nn.functional.one_hot(batch, n_batches).double() * mass[:, None]
    batch_mass = reduce(onehot.sum(dim=0))
    total = float(batch_mass.sum())
    shifts = shifts.double().clone()
    if reference is not None:
        centres, variance = reference.centres.double(), reference.variance
        shifts[:n_reference] = reference.shifts[:n_reference].double()
    else:
        centres = centres.double()
        variance = _variance(h, shifts[batch], centres, None, mass, reduce, total)
    m = centres.shape[0]
    weights = torch.full((n_batches, m), 1.0 / m, dtype=torch.float64)
    for _ in range(ITERATIONS):
        y = h - shifts[batch]
        logits = torch.log(weights[batch].clamp_min(_TINY)) - _squared_distances(y, centres) / (
            2 * variance
        )
        posteriors = torch.softmax(logits, dim=1)
        weighted = posteriors * mass[:, None]
        # one pseudo-cell spread over the components keeps a weight of 0 (and its log)
        # out of reach
        counts = reduce(onehot.T @ posteriors) + 1.0 / m
        weights = counts / counts.sum(dim=1, keepdim=True)
        if reference is None:
            centres = reduce(weighted.T @ y) / reduce(weighted.sum(dim=0)).clamp_min(_TINY)[:, None]
        residual = reduce(onehot.T @ (h - posteriors @ centres))
        new = residual / batch_mass.clamp_min(_TINY)[:, None]
        if reference is None:
            new -= (anchor[:, None] * new).sum(dim=0) / anchor.sum().clamp_min(_TINY)
        else:
            new[:n_reference] = shifts[:n_reference]
        new[batch_mass <= 0] = 0.0
        moved = float((new - shifts).abs().max())
        shifts = new
        if reference is None:
            variance = _variance(h, shifts[batch], centres, posteriors, mass, reduce, total)
        if moved < TOLERANCE * variance**0.5:
            break
    fitted = ShiftedMixture(centres, weights, shifts, variance)
    return fitted._replace(log_likelihood=_log_likelihood(h, mass, batch, fitted, reduce))


def _log_likelihood(
    h: torch.Tensor, mass: torch.Tensor, batch: torch.Tensor, mixture: ShiftedMixture, reduce
) -> float:
    """Mass-weighted log-likelihood of the ``(n, d)`` codes under ``mixture``."""
    y = h - mixture.shifts[batch]
    logits = torch.log(mixture.weights[batch].clamp_min(_TINY)) - _squared_distances(
        y, mixture.centres
    ) / (2 * mixture.variance)
    density = torch.logsumexp(logits, dim=1) - 0.5 * h.shape[1] * np.log(
        2 * np.pi * mixture.variance
    )
    return float(reduce((mass * density).sum()))


def _variance(
    h: torch.Tensor,
    shift: torch.Tensor,
    centres: torch.Tensor,
    posteriors: torch.Tensor | None,
    mass: torch.Tensor,
    reduce: Reduce,
    total: float,
) -> float:
    """The components' common variance per dimension: weighted mean squared distance
    of the shifted ``(n, d)`` codes from their components (from the nearest, where no
    ``posteriors`` are given yet)."""
    distances = _squared_distances(h - shift, centres)
    if posteriors is None:
        spread = distances.min(dim=1).values
    else:
        spread = (posteriors * distances).sum(dim=1)
    return max(float(reduce((mass * spread).sum())) / max(total * h.shape[1], _TINY), _TINY)


def starting_centres(
    aligned: np.ndarray, labels: np.ndarray, k: int, n_components: int, seed: int
) -> list[np.ndarray | None]:
    """k-means++ seeds ``(m, d)`` in each of the ``k`` clusters of ``labels`` from a
    sample of ``(n, d)`` codes with their centroid offsets removed; ``None`` for a
    cluster with fewer than :data:`START_CELLS` sampled cells per component (its
    centroid offsets stand)."""
    starts = []
    for cluster in range(k):
        members = aligned[labels == cluster]
        if members.shape[0] < START_CELLS * n_components:
            starts.append(None)
            continue
        seeds, _ = kmeans_plusplus(members, n_components, random_state=seed)
        starts.append(seeds)
    return starts
