"""Every term of eq. 11 is live: its gradient reaches the encoder, and training lowers it."""

import numpy as np
import pytest
import torch

from deepbid import cluster, losses
from deepbid.data import prepare
from deepbid.module import Autoencoder
from deepbid.train import Settings, Trainer, embed


@pytest.fixture()
def setup(small):
    view = prepare(small, "batch", n_top_genes=300)
    torch.manual_seed(0)
    module = Autoencoder(view.n_genes, view.n_batches, hidden_dim=64, latent_dim=16)
    idx = np.arange(0, view.n_cells, 2)[:96]  # cells are sorted by batch: stride for both
    x, counts, sf, batch = (torch.from_numpy(a) for a in view.rows(idx))
    assert len(torch.unique(batch)) == 2
    return view, module, x, counts, sf, batch


def _terms(module, x, counts, sf, batch, centres, p):
    out = module(x, batch, sf)
    h = out["h"]
    return {
        "nb": losses.nb_loss(counts, out["mu"], out["theta"]),
        "kmeans": losses.adaptive_kmeans(h, centres, p),
        "weights": losses.weight_penalty(module),
        "kl_within": losses.kl_within_batch(h, batch),
        "kl_mix": losses.kl_batch_mix(cluster.memberships(h, centres), batch, 2),
    }


@pytest.mark.parametrize("term", ["nb", "kmeans", "weights", "kl_within", "kl_mix"])
def test_each_term_reaches_encoder(setup, term):
    view, module, x, counts, sf, batch = setup
    with torch.no_grad():
        h = module.encode(x)
    centres = h[[0, 50, 90]].clone()  # fixed during the step, as in training
    p = cluster.memberships(h, centres)
    value = _terms(module, x, counts, sf, batch, centres, p)[term]
    module.zero_grad()
    value.backward()
    for layer in (module.enc1, module.enc2):
        assert layer.weight.grad is not None
        assert layer.weight.grad.abs().sum() > 0, f"{term} does not reach {layer}"


def test_kl_mix_gradient_moves_cells_towards_mixing(setup):
    """A small step along -grad(KL2) lowers KL2: the term can act on the embedding."""
    view, module, x, counts, sf, batch = setup
    with torch.no_grad():
        h0 = module.encode(x).double()
    # one centre per batch: memberships then differ by batch and KL2 is positive
    centres = torch.stack([h0[batch == b].mean(0) for b in (0, 1)])
    h = h0.clone().requires_grad_(True)
    before = losses.kl_batch_mix(cluster.memberships(h, centres, 0.01), batch, 2)
    before.backward()
    step = 1e-3 * h.grad / h.grad.norm()
    after = losses.kl_batch_mix(cluster.memberships(h - step, centres, 0.01), batch, 2)
    assert before.item() > 1e-3
    assert after.item() < before.item()


def test_training_lowers_loss_on_real_data(small):
    """One epoch of the clustering phase on real counts lowers the full objective."""
    view = prepare(small, "batch", n_top_genes=300)
    torch.manual_seed(0)
    module = Autoencoder(view.n_genes, view.n_batches, hidden_dim=64, latent_dim=16)
    settings = Settings(
        hidden_dim=64, latent_dim=16, batch_size=64, layer_epochs=1, pretrain_epochs=2, epochs=3
    )
    trainer = Trainer(module, settings, torch.device("cpu"), seed=0)

    class Bar:
        def update(self, n):
            pass

        def set_postfix_str(self, *args, **kwargs):
            pass

    trainer.pretrain(view, Bar())
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, view.n_cells)
    trainer.cluster(view, embed(module, view, torch.device("cpu")), labels, Bar())
    total = trainer.history["cluster"]["total"]
    assert total[-1] < total[0]
    assert trainer.history["pretrain"]["nb"][-1] < trainer.history["pretrain"]["nb"][0]
    for term in ("nb", "kmeans", "weights", "kl_within", "kl_mix"):
        assert np.isfinite(trainer.history["cluster"][term]).all()
