"""The terms of DeepBID's objective (paper eq. 1-11), as pure tensor functions.

Each function returns a per-cell scale quantity (a mean over the cells it is
given), so that the weights of eq. 11 mean the same at every dataset size.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_EPS = 1e-8


def nb_nll(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Element-wise negative log-likelihood of the negative binomial, eq. (1)-(2).

    Parameters
    ----------
    x, mu, theta
        Counts, means and dispersions (inverse overdispersion), broadcastable.

    Returns
    -------
    ``-log NB(x | mu, theta)`` with the shape of the broadcast inputs.
    """
    tiny = torch.finfo(mu.dtype).tiny  # guards log(0) without biasing any positive value
    log_theta_mu = torch.log((theta + mu).clamp_min(tiny))
    return (
        torch.lgamma(theta)
        + torch.lgamma(x + 1.0)
        - torch.lgamma(x + theta)
        + theta * (log_theta_mu - torch.log(theta.clamp_min(tiny)))
        + x * (log_theta_mu - torch.log(mu.clamp_min(tiny)))
    )


def nb_loss(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``L_NB`` per cell: NB NLL summed over genes, averaged over the ``(n, f)`` cells."""
    return nb_nll(x, mu, theta).sum(dim=1).mean()


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``L_rec`` per cell: ``||x_j - x_hat_j||^2`` averaged over the ``(n, f)`` cells."""
    return (x - x_hat).pow(2).sum(dim=1).mean()


def adaptive_kmeans(h: torch.Tensor, centres: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Adaptive fuzzy k-means loss ``L_A``, eq. (3), per cell.

    Parameters
    ----------
    h
        ``(n, d)`` latent codes.
    centres
        ``(K, d)`` cluster centres ``C`` (held fixed).
    p
        ``(n, K)`` memberships ``P`` (held fixed).

    Returns
    -------
    ``mean_j sum_k d_jk p_jk ||h_j - c_k||^2`` with
    ``d_jk = (||h_j - c_k|| + 2) / (||h_j - c_k|| + 1)^2``.
    """
    r = torch.cdist(h, centres)
    return ((r + 2.0) / (r + 1.0).pow(2) * p * r.pow(2)).sum(dim=1).mean()


def weight_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Regulariser ``L_O``, eq. (4): the squared Frobenius norms of ``params`` (weights
    and biases), summed."""
    return sum(torch.linalg.vector_norm(param).pow(2) for param in params)


def kl_within_batch(h: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Self-training KL divergence within each batch, ``L_KL1``, eq. (7)-(9), per cell.

    Parameters
    ----------
    h
        ``(n, d)`` latent codes.
    batch
        ``(n,)`` integer batch codes; only cells of the same batch are compared, and
        batches with fewer than three cells of the ``n`` are left out.

    Returns
    -------
    ``sum_B sum_{i,j in B} p_ji log(p_ji / q_ji) / n`` where ``q`` are Student-t
    (1 d.o.f.) neighbour probabilities and ``p`` their sharpened target, held
    fixed (no gradient flows through ``p``).
    """
    # one (n, n) kernel masked to pairs of the same batch: every batch's q and p at
    # once, where a loop over batches costs a dozen small operations per batch
    same = batch[:, None] == batch[None, :]
    same &= (same.sum(dim=1) >= 3)[:, None]
    same.fill_diagonal_(False)
    kernel = torch.where(same, 1.0 / (1.0 + torch.cdist(h, h).pow(2)), 0.0)
    q = kernel / kernel.sum(dim=1, keepdim=True).clamp_min(_EPS)
    target = q.pow(2) / q.sum(dim=0, keepdim=True).clamp_min(_EPS)
    target = (target / target.sum(dim=1, keepdim=True).clamp_min(_EPS)).detach()
    return (target * (torch.log(target + _EPS) - torch.log(q + _EPS))).sum() / h.shape[0]


def centroid_alignment(h: torch.Tensor, centres: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Squared distance of each cluster's membership-weighted centroid of ``h`` from its
    centre, weighted by the clusters' shares of the memberships.

    ``h`` ``(n, d)``, ``centres`` ``(K, d)`` and ``p`` ``(n, K)`` held fixed; moves cells
    of a new batch as a group onto the clusters of the reference, leaving their spread
    within each cluster to the encoder.
    """
    mass = p.sum(dim=0)
    centroids = (p.T @ h) / mass.clamp_min(1e-12)[:, None]
    return (mass / mass.sum() * (centroids - centres).pow(2).sum(dim=1)).sum()
