"""Large-data behaviour: epochs scale with the data size, and training never
densifies more than a minibatch or a chunk of the count matrix."""

import numpy as np
import scipy.sparse as sp
from conftest import FAST

from deepbid import DeepBID, evaluate, metrics, plotting, train
from deepbid.settings import DEFAULT_EPOCHS, FULL_EPOCH_CELLS, Settings, scaled_epochs


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


def test_every_phase_passes_the_same_cells_at_any_size_above_the_threshold():
    """The epoch floor alone would triple the clustering steps from 33,334 cells on;
    by default an epoch at the floor draws only the cells that keep them."""
    for name, (default, _) in DEFAULT_EPOCHS.items():
        budget = default * FULL_EPOCH_CELLS
        for n in (8_000, 40_000, 100_000, 10**6):
            settings = Settings().for_cells(n)
            passed = getattr(settings, name) * min(n, settings.cells_per_epoch(name))
            assert budget <= passed < budget + min(n, settings.cells_per_epoch(name))
    # a set epoch_cells caps every phase, as before
    assert Settings(epoch_cells=100).cells_per_epoch("pretrain_epochs") == 100


def test_fit_records_the_epochs_it_ran(small):
    fast = {k: v for k, v in FAST.items() if "epochs" not in k}
    model = DeepBID(seed=0, **fast).fit(small, "batch")
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
    settings = {**FAST, "batch_size": 32, "layer_epochs": 1, "pretrain_epochs": 1, "epochs": 1}
    model = DeepBID(seed=0, **settings)
    model.fit(small, "batch")
    model.denoised()
    assert largest and max(largest) <= 50 < small.n_obs


def test_scores_and_figures_work_past_scanpys_exact_knn_limit():
    # above 4,096 cells scanpy switches to approximate kNN (pynndescent)
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(loc, 1.0, (2100, 8)) for loc in (0.0, 10.0)]).astype(np.float32)
    labels = np.repeat([0, 1], 2100)
    assert metrics.ari(labels, evaluate.leiden(x, seed=0, resolution=0.05)) > 0.99
    assert plotting.umap(x, seed=0).shape == (4200, 2)
