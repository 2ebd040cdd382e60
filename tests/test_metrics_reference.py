"""deepbid.metrics against the field's reference implementations, on the bundled data.

harmonypy (in the ``test`` extra) is the reference for LISI; scib-metrics (``benchmark``
extra) for batch ASW and graph connectivity, skipped where it is not installed.
"""

import numpy as np
import pandas as pd
import pytest

from deepbid import metrics, plotting
from deepbid.data import prepare


@pytest.fixture(scope="module")
def embeddings(mixology) -> dict[str, np.ndarray]:
    """PCA 50 of the bundled data's log-normalised HVGs, and its Harmony correction."""
    harmonypy = pytest.importorskip("harmonypy")
    pca = plotting.log_pca(prepare(mixology, "batch").logx, n_comps=50, seed=0)
    meta = pd.DataFrame({"batch": mixology.obs["batch"].astype(str).to_numpy()})
    z = np.asarray(harmonypy.run_harmony(pca, meta, "batch", verbose=False, random_state=0).Z_corr)
    return {"pca": pca, "harmony": z if z.shape[0] == pca.shape[0] else z.T}


@pytest.fixture(scope="module")
def obs(mixology) -> tuple[np.ndarray, np.ndarray]:
    return (
        mixology.obs["batch"].astype(str).to_numpy(),
        mixology.obs["cell_type"].astype(str).to_numpy(),
    )


@pytest.mark.parametrize("name", ["pca", "harmony"])
def test_lisi_agrees_with_harmonypy(embeddings, obs, name):
    from harmonypy import compute_lisi

    x = embeddings[name]
    batch, types = obs
    reference = compute_lisi(x, pd.DataFrame({"b": batch, "t": types}), ["b", "t"], perplexity=30)
    for column, labels in enumerate((batch, types)):
        ours = metrics.lisi(x, labels, perplexity=30)
        assert np.median(ours) == pytest.approx(np.median(reference[:, column]), rel=0.01)
        np.testing.assert_allclose(ours, reference[:, column], atol=1e-3)


@pytest.mark.parametrize("name", ["pca", "harmony"])
def test_batch_asw_and_graph_connectivity_agree_with_scib_metrics(embeddings, obs, name):
    scib_metrics = pytest.importorskip("scib_metrics")
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    x = embeddings[name]
    batch, types = obs
    distances, indices = NearestNeighbors(n_neighbors=15).fit(x).kneighbors(x)
    knn = NeighborsResults(indices=indices, distances=distances)
    assert metrics.batch_asw(x, batch, types) == pytest.approx(
        float(scib_metrics.silhouette_batch(x, types, batch)), rel=0.01
    )
    assert metrics.graph_connectivity(x, types) == pytest.approx(
        float(scib_metrics.graph_connectivity(knn, types)), rel=0.01
    )
