"""Shared fixtures: the bundled real dataset, subsampled, and small fast model settings."""

import contextlib
import importlib
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from deepbid.datasets import mixology_3cl, simulate

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


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_script(name: str):
    """The script ``benchmarks/<name>.py`` as a module; ``benchmarks/`` is on the path only
    meanwhile (the scripts import their neighbours)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


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


def reference_and_query_data() -> tuple[ad.AnnData, ad.AnnData]:
    """Simulated: 3 batches; batch2 held out as the query (a batch never trained on)."""
    adata = simulate(
        n_cells=1500,
        n_genes=1000,
        n_batches=3,
        n_types=4,
        batch_strength=0.4,
        de_strength=3.0,
        de_fraction=0.2,
    )
    query_cells = (adata.obs["batch"] == "batch2").to_numpy()
    return adata[~query_cells].copy(), adata[query_cells].copy()
