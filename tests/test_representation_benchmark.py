"""benchmarks/representation.py's scores: k-means with the true K, per-batch scoring, and
the depth of misassigned cells."""

import numpy as np
import pytest
from conftest import benchmark_script

from deepbid import metrics


@pytest.fixture(scope="module")
def representation():
    with benchmark_script("representation") as module:
        yield module


def test_kmeans_with_the_true_k_recovers_separated_types(representation):
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 40)
    centres = {"a": 0.0, "b": 10.0, "c": 20.0}
    x = np.array([centres[t] for t in labels])[:, None] + rng.normal(size=(120, 5))
    assert representation.kmeans_ari(x, labels, seed=0) == pytest.approx(1.0)
    # the same points with shuffled labels carry no structure k-means could find
    assert representation.kmeans_ari(x, rng.permutation(labels), seed=0) < 0.1


def test_within_batches_weights_batches_by_cells_and_skips_single_type_batches(
    representation,
):
    labels = np.array(["a", "a", "b", "b"] * 2 + ["a", "b", "a", "b"] * 2 + ["a"] * 5)
    batch = np.repeat(["x", "y", "z"], [8, 8, 5])
    found = np.concatenate([np.where(labels[:8] == "a", 0, 1), np.zeros(8, int), np.zeros(5)])
    score = representation.within_batches(metrics.ari, labels, batch, found)
    # batch x is recovered exactly (ARI 1), batch y not at all (ARI 0), batch z holds one
    # type and is left out: (8 * 1 + 8 * 0) / 16
    assert score == pytest.approx(0.5)


def test_error_depth_locates_misassigned_cells_by_library_size(representation):
    rng = np.random.default_rng(1)
    batch = np.repeat(["x", "y"], 50)
    labels = np.tile(np.repeat(["a", "b"], 25), 2)
    library = rng.permutation(np.arange(100.0))
    clusters = (labels == "b").astype(int)
    assert np.isnan(representation.error_depth(clusters, labels, library, batch))
    # the three shallowest "a" cells of each batch are put with "b"
    for name in ("x", "y"):
        a_cells = np.flatnonzero((batch == name) & (labels == "a"))
        clusters[a_cells[np.argsort(library[a_cells])[:3]]] = 1
    depth = representation.error_depth(clusters, labels, library, batch)
    assert depth < 25
    # the deepest instead: the percentile moves to the top
    clusters = (labels == "b").astype(int)
    for name in ("x", "y"):
        a_cells = np.flatnonzero((batch == name) & (labels == "a"))
        clusters[a_cells[np.argsort(library[a_cells])[-3:]]] = 1
    assert representation.error_depth(clusters, labels, library, batch) > 75
