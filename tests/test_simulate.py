"""The simulator gives NB counts with known structure, which deepbid recovers."""

import numpy as np
import pandas as pd

from deepbid import DeepBID, metrics
from deepbid.datasets import simulate


def test_simulated_counts_have_types_batches_and_unequal_mixes():
    a = simulate(600, 300, n_batches=3, n_types=4, seed=3, chunk=250)
    b = simulate(600, 300, n_batches=3, n_types=4, seed=3, chunk=250)
    c = simulate(600, 300, n_batches=3, n_types=4, seed=4, chunk=250)
    assert a.shape == (600, 300)
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    assert np.all(a.X.data == np.round(a.X.data)) and a.X.data.min() > 0
    shares = pd.crosstab(a.obs["batch"], a.obs["cell_type"], normalize="index")
    assert shares.shape == (3, 4)
    assert (shares.max(axis=0) - shares.min(axis=0)).max() > 0.1


def test_deepbid_recovers_simulated_types_and_mixes_batches():
    adata = simulate(600, 500, n_batches=3, n_types=4, seed=1)
    model = DeepBID(seed=0, progress=False).fit(adata, "batch")
    scores = metrics.scores(
        model.latent(),
        model.clusters(),
        adata.obs["batch"].to_numpy(),
        adata.obs["cell_type"].to_numpy(),
    )
    assert model.centres.shape[0] == 4
    assert scores["ari"] > 0.95
    assert scores["ilisi_median"] > 1.8
