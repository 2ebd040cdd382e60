"""Mapping cells of new batches onto a trained model, without retraining the reference.

As scArches does for scVI, a new batch gets only what a batch owns in the
network — a decoder input column (:meth:`~deepbid.module.Autoencoder.add_batches`)
and a shift of the first encoder layer — and only those are trained, on the
query's cells, with the NB likelihood (so the decoder column takes up the new
batch's technical effect) and the distance of the query's membership-weighted
cluster centroids from the reference's fixed centres
(:func:`~deepbid.losses.centroid_alignment`: the shift moves the query as a group
onto the reference's clusters). Every
weight the training batches use stays as it was: the reference's embedding,
clusters and denoised values do not change.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import cluster, losses
from .data import DataView
from .module import Autoencoder
from .settings import Settings
from .train import Trainer


def train_new_batches(
    module: Autoencoder,
    view: DataView,
    n_old: int,
    centres: torch.Tensor,
    temperature: float,
    log_weights: torch.Tensor | None,
    settings: Settings,
    device: torch.device,
    seed: int,
    progress: bool,
) -> dict[str, dict[str, list[float]]]:
    """Train the parameters of batches ``n_old...`` of ``module`` on ``view``'s cells.

    Parameters
    ----------
    module
        The trained network after ``add_batches``, on ``device``.
    view
        The query cells, batch codes in the extended model's categories.
    n_old
        Number of training batches; their parameters are left unchanged.
    centres, temperature, log_weights
        The reference's clusters ``(K, d)``, eq. (14)'s temperature and ``(K,)`` log
        proportions, all held fixed.
    settings
        The reference's settings, with ``epochs`` resolved for the query's size.

    Returns
    -------
    The loss history of the mapping, ``{"map": {term: per-epoch values}}``.
    """
    latent_dim = centres.shape[1]
    shift_mask = torch.zeros_like(module.batch_shift)
    shift_mask[n_old:] = 1
    params = [module.batch_shift]
    handles = [module.batch_shift.register_hook(lambda grad: grad * shift_mask)]
    if module.conditional:
        column_mask = torch.zeros_like(module.dec1.weight)
        column_mask[:, latent_dim + n_old :] = 1
        params.append(module.dec1.weight)
        handles.append(module.dec1.weight.register_hook(lambda grad: grad * column_mask))
    centres = centres.to(device)
    log_weights = None if log_weights is None else log_weights.to(device)

    def step(x, counts, sf, batch, idx):
        h = module.encode(x, batch)
        # the likelihood trains the decoder column only: fitted through the encoder
        # shift too, it would write the new batch's effect into the latent code
        mu, theta = module.nb_params(module.decode_hidden(h.detach(), batch), sf)
        p = cluster.memberships(h.detach(), centres, temperature, log_weights)
        return {
            "nb": losses.nb_loss(counts, mu, theta),
            "align": losses.centroid_alignment(h, centres, p),
        }

    # only the new batch's parameters need gradients: without this, every step would
    # also compute the gradient of each weight of the network, most of its backward
    trained = {id(param) for param in params}
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in trained]
    for param in frozen:
        param.requires_grad_(False)
    trainer = Trainer(module, settings, device, seed)
    try:
        with tqdm(
            total=settings.epochs, desc="deepbid map", unit="epoch", disable=not progress
        ) as bar:
            trainer.run_epochs(view, "map", "epochs", params, step, bar)
    finally:
        for handle in handles:
            handle.remove()
        for param in frozen:
            param.requires_grad_(True)
    return trainer.history
