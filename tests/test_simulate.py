"""The simulator gives NB counts with known structure, which deepbid recovers."""

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans

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


def test_true_means_are_what_the_counts_were_drawn_from():
    a = simulate(900, 250, n_batches=3, n_types=4, batch_specific=1, seed=5, chunk=400)
    b = simulate(
        900, 250, n_batches=3, n_types=4, batch_specific=1, seed=5, chunk=400, true_means=True
    )
    assert (a.X != b.X).nnz == 0 and "true_mean" not in a.layers
    mean = b.layers["true_mean"]
    assert isinstance(mean, np.ndarray) and mean.dtype == np.float32 and mean.shape == (900, 250)
    np.testing.assert_allclose(mean.sum(axis=1), b.obs["library"], rtol=1e-4)
    # per gene, the counts' mean over cells is the true means' mean within sampling error
    # (NB variance mu + mu^2 / dispersion)
    counts = b.X.toarray()
    variance = (mean + mean.astype(np.float64) ** 2 / b.uns["simulate"]["dispersion"]).sum(axis=0)
    z = (counts.sum(axis=0) - mean.sum(axis=0)) / np.sqrt(variance)
    assert np.abs(z).max() < 5.5 and abs(z.mean()) < 0.3 and 0.7 < z.std() < 1.3


def test_true_means_follow_the_stored_parameters():
    a = simulate(400, 150, n_batches=2, n_types=3, seed=2, true_means=True)
    params = a.uns["simulate"]
    profile, scale = params["type_log_profile"], params["batch_log_scale"]
    assert profile.shape == (3, 150) and scale.shape == (2, 150)
    assert profile.dtype == np.float32 and scale.dtype == np.float32
    t = a.obs["cell_type"].str.removeprefix("type").astype(int).to_numpy()
    b = a.obs["batch"].str.removeprefix("batch").astype(int).to_numpy()
    logits = (profile[t] + scale[b]).astype(np.float64)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax /= softmax.sum(axis=1, keepdims=True)
    expected = softmax * a.obs["library"].to_numpy()[:, None]
    np.testing.assert_allclose(a.layers["true_mean"], expected, rtol=1e-4, atol=1e-9)
    # the counts follow: each cell's count total is close to its library size
    ratio = np.asarray(a.X.sum(axis=1)).ravel() / a.obs["library"].to_numpy()
    assert 0.95 < np.median(ratio) < 1.05


def test_families_put_their_types_close_together_and_far_from_other_families():
    a = simulate(300, 400, n_batches=2, n_types=6, families=2, family_difference=0.3, seed=7)
    profile = a.uns["simulate"]["type_log_profile"].astype(np.float64)
    distance = np.linalg.norm(profile[:, None] - profile[None], axis=-1)
    family = np.arange(6) * 2 // 6  # types 0-2 and 3-5
    same = family[:, None] == family[None]
    within = distance[same & ~np.eye(6, dtype=bool)]
    assert within.max() < 0.5 * distance[~same].min()
    # without families the types lie about as far apart as families do
    plain = simulate(300, 400, n_batches=2, n_types=6, seed=7).uns["simulate"]["type_log_profile"]
    spread = np.linalg.norm(plain[:, None] - plain[None], axis=-1)[~np.eye(6, dtype=bool)]
    assert within.max() < 0.5 * spread.min()


def test_mixtures_pool_the_pure_profiles_in_the_given_proportions():
    weights = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [68, 16, 16]]
    a = simulate(500, 300, n_batches=2, n_types=5, mixtures=weights, seed=4)
    profile = a.uns["simulate"]["type_log_profile"].astype(np.float64)
    expression = np.exp(profile - profile.max(axis=1, keepdims=True))
    expression /= expression.sum(axis=1, keepdims=True)
    # pooled RNA: each mix is the weighted sum of the pure types' expression
    np.testing.assert_allclose(expression[3], expression[:3].mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(expression[4], [0.68, 0.16, 0.16] @ expression[:3], rtol=1e-4)
    # the 68:16:16 mix lies nearer its main source than the other pure types do
    distance = np.linalg.norm(profile[4] - profile[:3], axis=1)
    pure = np.linalg.norm(profile[0] - profile[1:3], axis=1)
    assert distance[0] < distance[1:].min() and distance[0] < pure.min()
    assert set(a.obs["cell_type"]) == {f"type{t}" for t in range(5)}
    with pytest.raises(ValueError, match="5 rows"):
        simulate(100, 50, n_types=5, mixtures=weights[:4])
    with pytest.raises(ValueError, match="not combined"):
        simulate(100, 50, n_types=5, mixtures=weights, close_pairs=1)


def test_types_nested_in_families_are_found_by_dividing_clusters_with_two_modes(tmp_path):
    """The K rule's silhouette keeps close types of one family together; the final
    division of clusters whose cells show two modes finds the types."""
    # types this close within a family (0.45) that the K rule misses some of them; at
    # 0.4 (4 sd apart, 900 cells) half the random halvings of the test of modes reject
    # one mode, whichever way the offsets are measured: the verdict is a draw
    adata = simulate(2000, 500, n_batches=2, n_types=4, families=2, family_difference=0.45, seed=9)
    model = DeepBID(seed=0, progress=False).fit(adata, "batch")
    types = adata.obs["cell_type"].to_numpy()
    report = model.k_estimate["divided"]
    found = model.centres.shape[0]
    assert found < 4 and model.cluster_count == 4
    assert any(report["divided"])
    assert metrics.ari(types, model.clusters()) > 0.9
    # the parts, refitted together, are about as good as k-means with the true K on
    # the same embedding (a margin, not a ranking: both sit near 1)
    kmeans = KMeans(4, n_init=10, random_state=0).fit_predict(model.latent())
    assert metrics.ari(types, model.clusters()) >= metrics.ari(types, kmeans) - 0.05
    # the divisions are kept with the model: cells passed in again, or to the model
    # read back from its file, get the same clusters
    model.save(tmp_path / "model.pt")
    loaded = DeepBID.load(tmp_path / "model.pt", device="cpu")
    assert loaded.cluster_count == 4
    again = loaded.clusters(adata)
    assert (again == model.clusters()).mean() > 0.99
    np.testing.assert_allclose(loaded.latent(adata), model.latent(), atol=1e-4)
    # given K, the clusters are the fit's own
    given = DeepBID(n_clusters=2, seed=0, progress=False, epochs=2).fit(adata, "batch")
    assert given.cluster_count == 2 and "divided" not in given.k_estimate
