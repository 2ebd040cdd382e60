"""Shared fixtures: the bundled real dataset, subsampled, and small fast model settings."""

import anndata as ad
import numpy as np
import pytest

from deepbid.datasets import mixology_3cl

#: Small network and short schedule so that a full fit takes seconds on a CPU.
FAST = dict(
    latent_dim=16,
    hidden_dim=64,
    n_top_genes=300,
    layer_epochs=2,
    pretrain_epochs=4,
    epochs=4,
    decoder_epochs=2,
    batch_size=64,
    progress=False,
)


@pytest.fixture(scope="session")
def mixology() -> ad.AnnData:
    return mixology_3cl()


@pytest.fixture()
def small(mixology) -> ad.AnnData:
    """240 real cells (both protocols, 3 cell lines), genes detected in >= 10 cells."""
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(mixology.n_obs, 240, replace=False))
    sub = mixology[cells].copy()
    detected = np.asarray((sub.X > 0).sum(axis=0)).ravel() >= 10
    return sub[:, detected].copy()
