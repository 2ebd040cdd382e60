"""benchmarks/separability.py's measures of how far two types sharing a cluster overlap."""

import numpy as np
import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def separability():
    with benchmark_script("separability") as module:
        yield module


def two_gaussians(distance: float, n: int = 600, d: int = 10, seed: int = 0):
    """``n`` points of each of two unit Gaussians ``distance`` apart along a random line."""
    rng = np.random.default_rng(seed)
    line = rng.normal(size=d)
    line /= np.linalg.norm(line)
    x = rng.normal(size=(2 * n, d))
    x[n:] += distance * line
    return x, np.repeat(["a", "b"], n)


@pytest.mark.parametrize("distance", [1.0, 3.0])
def test_separation_is_the_distance_in_within_type_sd(separability, distance):
    x, labels = two_gaussians(distance)
    assert separability.held_out_separation(3.0 * x, labels, seed=0) == pytest.approx(
        distance, abs=0.2
    )


def test_lda_accuracy_follows_the_overlap(separability):
    # an even mixture at distance D is classified right at Phi(D / 2)
    assert separability.lda_accuracy(*two_gaussians(4.0), seed=0) > 0.95
    assert abs(separability.lda_accuracy(*two_gaussians(0.0), seed=0) - 0.5) < 0.06


def test_overlapping_pair_shows_one_mode_and_a_far_pair_two(separability):
    assert separability.mode_pvalue(two_gaussians(1.0)[0], seed=0) > 0.05
    assert separability.mode_pvalue(two_gaussians(6.0)[0], seed=0) <= 0.01


def test_shared_clusters_are_those_holding_two_large_types(separability):
    clusters = np.repeat([0, 1, 2], 100)
    types = np.array(["A"] * 60 + ["B"] * 40 + ["C"] * 95 + ["D"] * 5 + ["E"] * 100)
    assert separability.shared_clusters(clusters, types, min_cells=30) == [(0, "A", "B")]
    assert separability.shared_clusters(clusters, types, min_cells=50) == []
