"""Every term of eq. 11 is live: its gradient, taken through the trainer's own step,
reaches the encoder, and training lowers the objective."""

import numpy as np
import pytest
import torch
from conftest import FAST
from sklearn.cluster import KMeans

from deepbid.data import prepare
from deepbid.module import Autoencoder
from deepbid.settings import Settings
from deepbid.train import Trainer, _batch, embed

TERMS = ["nb", "kmeans", "weights", "kl_within", "kl_mix"]


class Bar:
    def update(self, n):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass


#: The paper's mixing term switched on (the default leaves ``kappa2`` off).
ALL_TERMS = dict(kappa2=2.0)


def _trainer(small, **overrides):
    """The small network and short schedule of the other tests (``FAST``), with every
    term of the objective on unless ``overrides`` switch it off."""
    settings = Settings.given(
        **{
            **{k: v for k, v in FAST.items() if k != "progress"},
            **ALL_TERMS,
            **overrides,
        }
    )
    view = prepare(small, "batch", n_top_genes=settings.n_top_genes)
    settings = settings.for_cells(view.n_cells)
    torch.manual_seed(0)
    module = Autoencoder(view.n_genes, view.n_batches, settings.hidden_dim, settings.latent_dim)
    return view, module, Trainer(module, settings, torch.device("cpu"), seed=0)


@pytest.fixture()
def started(small):
    """A trainer at the start of its clustering phase, from k-means clusters of the
    embedding (in which the two protocols lie apart, so the mixing term has
    something to mix)."""
    view, module, trainer = _trainer(small)
    h = embed(module, view, torch.device("cpu"))
    labels = KMeans(4, n_init=3, random_state=0).fit_predict(h.numpy())
    trainer.start_clustering(view, h, labels)
    return view, module, trainer


@pytest.mark.parametrize("term", [t for t in TERMS if t != "weights"])
def test_each_term_reaches_encoder_through_the_trainer_step(started, term):
    view, module, trainer = started
    idx = np.arange(0, view.n_cells, 2)[:96]  # cells are sorted by batch: stride for both
    terms = trainer.cluster_terms(*_batch(view, idx, torch.device("cpu")), idx)
    assert set(terms) == set(TERMS)
    module.zero_grad()
    terms[term].backward()
    for layer in (module.enc1, module.enc2):
        assert layer.weight.grad is not None
        assert layer.weight.grad.abs().sum() > 0, f"{term} does not reach {layer}"


def test_weight_penalty_trains_through_the_optimiser_and_is_recorded(small):
    """``L_O`` reaches the encoder through the clustering phase's own optimiser (its
    gradient is Adam's weight decay), shrinking the weights against a run without
    it; its recorded value is lambda2 times their squared norms during the epoch."""
    norms, recorded = {}, {}
    for lambda2 in (0.0, 1.0):
        view, module, trainer = _trainer(small, lambda2=lambda2, epochs=1)
        h = embed(module, view, torch.device("cpu"))
        labels = KMeans(3, n_init=3, random_state=0).fit_predict(h.numpy())
        start = sum(p.pow(2).sum().item() for n, p in module.named_parameters() if "rec" not in n)
        trainer.cluster(view, h, labels, Bar())
        norms[lambda2] = sum(p.pow(2).sum().item() for p in trainer.clustering_params)
        recorded[lambda2] = trainer.history["cluster"]["weights"][0]
    assert norms[1.0] < 0.97 * norms[0.0]
    assert recorded[0.0] == 0.0
    assert norms[1.0] <= recorded[1.0] <= start
    assert all(p is not module.rec.weight for p in trainer.clustering_params)


def test_switched_off_mixing_term_is_not_computed(small):
    view, module, trainer = _trainer(small, kappa2=0.0)
    trainer.start_clustering(view, embed(module, view, torch.device("cpu")), view.batch_codes)
    idx = np.arange(64)
    terms = trainer.cluster_terms(*_batch(view, idx, torch.device("cpu")), idx)
    assert set(terms) == {"nb", "kmeans", "weights", "kl_within"}


def test_training_lowers_loss_on_real_data(small):
    """The clustering phase on real counts lowers the full objective and records
    every term and the full-data mixing divergence per epoch."""
    view, module, trainer = _trainer(small)
    trainer.pretrain(view, Bar())
    labels = np.random.default_rng(0).integers(0, 3, view.n_cells)
    trainer.cluster(view, embed(module, view, torch.device("cpu")), labels, Bar())
    history = trainer.history["cluster"]
    assert history["total"][-1] < history["total"][0]
    assert trainer.history["pretrain"]["nb"][-1] < trainer.history["pretrain"]["nb"][0]
    for term in (*TERMS, "mixing_across_nats"):
        assert len(history[term]) == FAST["epochs"] and np.isfinite(history[term]).all()


@pytest.mark.parametrize("when", [0.5, 1.0])
@pytest.mark.parametrize("drawn, kept", [(4, 4), (2, 3)])
def test_the_partition_is_drawn_again_once_and_taken_only_if_finer(small, when, drawn, kept):
    """With K estimated the trainer draws the partition again once, after
    ``reestimate_at`` of the clustering epochs; fuzzy k-means restarts from a finer
    answer (4 clusters after 3) and ignores a coarser one (2)."""
    epochs = 4
    at = int(when * epochs)
    view, module, trainer = _trainer(small, epochs=epochs, reestimate_at=when)
    h = embed(module, view, torch.device("cpu"))
    calls = []

    def repartition(codes):
        calls.append(len(trainer.history.get("cluster", {}).get("total", [])) + 1)
        return KMeans(drawn, n_init=3, random_state=0).fit_predict(codes.numpy())

    labels = KMeans(3, n_init=3, random_state=0).fit_predict(h.numpy())
    trainer.cluster(view, h, labels, Bar(), repartition)
    assert calls == [at]
    counts = trainer.history["cluster"]["n_clusters"]
    assert counts == [3.0] * (at - 1) + [float(kept)] * (epochs - at + 1)
