"""Large-data behaviour: epochs scale with the data size, and training never
densifies more than a minibatch or a chunk of the count matrix."""

import numpy as np
import scipy.sparse as sp

from deepbid import DeepBID, train
from deepbid.model import DEFAULT_EPOCHS, FULL_EPOCH_CELLS, scaled_epochs


def test_epochs_are_the_papers_up_to_the_threshold_then_shrink():
    for name, (default, minimum) in DEFAULT_EPOCHS.items():
        assert scaled_epochs(name, 500) == default
        assert scaled_epochs(name, FULL_EPOCH_CELLS) == default
        assert scaled_epochs(name, 4 * FULL_EPOCH_CELLS) == -(-default // 4)
        assert scaled_epochs(name, 10**6) == minimum
    # above the threshold a phase passes the same number of cells, up to one epoch
    budget = DEFAULT_EPOCHS["pretrain_epochs"][0] * FULL_EPOCH_CELLS
    for n in (8_000, 20_000, 40_000):
        assert budget <= scaled_epochs("pretrain_epochs", n) * n < budget + n


def test_fit_records_the_epochs_it_ran(small):
    model = DeepBID(seed=0, progress=False, latent_dim=16, hidden_dim=64, n_top_genes=300)
    model.fit(small, "batch")
    assert model.settings.epochs == DEFAULT_EPOCHS["epochs"][0]
    assert len(model.history["cluster"]["total"]) == model.settings.epochs
    assert np.all(np.asarray(model.history["cluster"]["seconds"]) > 0)


def test_training_densifies_only_minibatches_and_chunks(small, monkeypatch):
    monkeypatch.setattr(train, "CHUNK", 50)
    largest = []
    original = sp.csr_matrix.toarray

    def recording(self, *args, **kwargs):
        largest.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", recording)
    model = DeepBID(
        seed=0,
        progress=False,
        latent_dim=16,
        hidden_dim=64,
        n_top_genes=300,
        batch_size=32,
        layer_epochs=1,
        pretrain_epochs=1,
        epochs=1,
    )
    model.fit(small, "batch")
    model.denoised()
    assert largest and max(largest) <= 50 < small.n_obs
