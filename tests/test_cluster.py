import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from deepbid import cluster, k_estimate, metrics


def blobs(n_per=60, n_types=3, n_batches=2, dim=10, sep=6.0, shift=1.0, seed=0):
    """Cell types as Gaussian blobs ``sep`` apart; each batch shifted by ``shift``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_types, dim)) * sep
    offsets = rng.normal(size=(n_batches, dim)) * shift
    x, types, batches = [], [], []
    for t in range(n_types):
        for b in range(n_batches):
            x.append(means[t] + offsets[b] + rng.normal(size=(n_per, dim)))
            types += [t] * n_per
            batches += [b] * n_per
    return np.vstack(x).astype(np.float32), np.array(types), np.array(batches)


def test_memberships_and_centres_follow_eq13_eq14():
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    c = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    p = cluster.memberships(h, c)
    e5 = np.exp(-5.0)
    np.testing.assert_allclose(
        p.numpy(), [[1 / (1 + e5), e5 / (1 + e5)], [e5 / (1 + e5), 1 / (1 + e5)]], rtol=1e-6
    )
    np.testing.assert_allclose(
        cluster.centres(h, p).numpy(), (p.T @ h / p.sum(0)[:, None]).numpy(), rtol=1e-6
    )


def test_fuzzy_kmeans_recovers_blobs():
    x, types, _ = blobs()
    h = torch.from_numpy(x)
    rough = torch.nn.functional.one_hot(
        torch.from_numpy((types + (np.arange(len(types)) % 7 == 0)) % 3)
    ).float()
    _, p, _, _ = cluster.fuzzy_kmeans(h, rough)
    assert metrics.ari(types, p.argmax(1).numpy()) == 1.0


def test_mixture_recovers_unequal_blobs_their_shares_and_spread():
    """EM from rough memberships finds three unit-variance blobs holding 80, 15 and 5 %
    of the cells: the partition, the proportions and the shared variance."""
    rng = np.random.default_rng(0)
    sizes, dim = np.array([1600, 300, 100]), 8
    means = rng.normal(size=(3, dim)) * 4
    types = np.repeat(np.arange(3), sizes)
    z = torch.from_numpy(means[types] + rng.normal(size=(sizes.sum(), dim)))
    noisy = np.where(rng.random(types.size) < 0.3, rng.integers(0, 3, types.size), types)
    start = torch.nn.functional.one_hot(torch.from_numpy(noisy)).double() * 0.6 + 0.4 / 3
    mixture = cluster.fit_mixture(z, start)
    p = cluster.mixture_posteriors(z, mixture)
    assert metrics.ari(types, p.argmax(1).numpy()) == 1.0
    np.testing.assert_allclose(mixture.log_weights.exp().numpy(), sizes / sizes.sum(), atol=0.01)
    assert mixture.variance == pytest.approx(1.0, rel=0.05)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0)


def test_temperature_prevents_collapse_of_close_clusters():
    # separable clusters, but scaled to lie ~2 units apart: eq. 14 at temperature 1
    # is then nearly uniform and the fuzzy iteration collapses the centres
    x, types, _ = blobs(sep=2.0, dim=10)
    h = torch.from_numpy(x / 4)
    labels = torch.from_numpy(types)
    p0 = torch.nn.functional.one_hot(labels).float()
    c_plain, p_plain, _, _ = cluster.fuzzy_kmeans(h, p0, 1.0, False, max_iter=200)
    tau = cluster.calibrate_temperature(h, labels)
    assert tau < 1.0
    c_cal, p_cal, _, _ = cluster.fuzzy_kmeans(h, p0, tau, False, max_iter=200)
    assert torch.cdist(c_cal, c_cal).max() > 5 * torch.cdist(c_plain, c_plain).max()
    assert metrics.ari(types, p_cal.argmax(1).numpy()) > 0.9


def test_temperature_is_one_for_separated_clusters():
    x, types, _ = blobs(sep=10.0)
    assert cluster.calibrate_temperature(torch.from_numpy(x), torch.from_numpy(types)) == 1.0


def test_estimated_partition_finds_types_not_batches():
    x, types, batches = blobs(n_types=4, shift=2.0, seed=3)
    labels, report = k_estimate.estimate_partition(x, batches, seed=0)
    assert labels.max() + 1 == 4
    assert metrics.ari(types, labels) > 0.95
    assert len(report["resolution"]) == 2 * len(k_estimate.RESOLUTIONS)
    assert not any(report["outlier"])  # a scan that agrees with itself loses nothing


def test_leiden_on_a_graph_built_once_equals_scanpys():
    """The scan builds each graph once for all resolutions; its partitions are the ones
    ``scanpy.tl.leiden`` (which rebuilds the graph at every call) finds with the same
    seed, on both of the scan's graphs and on scanpy's own weighted neighbour graph."""
    x, _, batches = blobs(n_per=80, n_types=5, n_batches=3, sep=2.0, seed=3)
    holder = ad.AnnData(x)
    sc.pp.neighbors(holder, use_rep="X")
    graphs = {
        "knn": k_estimate.knn_graph(x),
        "batch-balanced": k_estimate.batch_balanced_graph(x, batches, 5),
        "scanpy": holder.obsp["connectivities"],
    }
    sizes = set()
    for adjacency in graphs.values():
        graph = k_estimate.as_igraph(adjacency)
        for resolution in k_estimate.RESOLUTIONS:
            for seed in (0, 3):
                sc.tl.leiden(
                    holder,
                    resolution=resolution,
                    adjacency=adjacency,
                    random_state=seed,
                    flavor="igraph",
                    n_iterations=-1,
                    directed=False,
                )
                expected = holder.obs["leiden"].cat.codes.to_numpy()
                labels = k_estimate.leiden(graph, resolution, seed)
                np.testing.assert_array_equal(labels, expected)
                sizes.add(labels.max() + 1)
    assert len(sizes) > 2  # the resolutions give different partitions


def test_scan_outlier_cannot_win_on_silhouette(monkeypatch):
    """Two groups of four close types (as endocrine and exocrine pancreas cells): the
    two groups outscore the eight types on silhouette, but only the lowest resolution
    of each graph finds them; the rest of the scan finds the types. The two-group
    partition is an outlier of the scan and is not chosen."""
    x, types, batches = blobs(n_per=30, n_types=8, n_batches=3, sep=1.0, shift=0.3, seed=2)
    x[types >= 4] += 8.0
    groups = (types >= 4).astype(np.int64)

    def scan(graph, resolution, seed=0):
        return groups if resolution == k_estimate.RESOLUTIONS[0] else types

    monkeypatch.setattr(k_estimate, "leiden", scan)
    labels, report = k_estimate.estimate_partition(x, batches, seed=0)
    scores, lowest = (
        np.array(report["score"]),
        np.array(report["resolution"]) == k_estimate.RESOLUTIONS[0],
    )
    assert scores[lowest].min() > scores[~lowest].max() + k_estimate.SILHOUETTE_TOLERANCE
    assert not any(report["batch_split"])  # every type in every batch, equally: ties
    assert report["outlier"] == lowest.tolist()
    np.testing.assert_array_equal(labels, types)


def test_coarse_division_recurring_at_low_resolutions_is_set_aside(monkeypatch):
    """The two groups of the test above, found at the two lowest resolutions of each
    graph: four partitions agree with each other, so no fence of the agreements flags
    them (Tukey's, 1.5 interquartile ranges below the first quartile, did not), but they
    are the quarter of the scan that the rest reproduces least and are not chosen."""
    x, types, batches = blobs(n_per=30, n_types=8, n_batches=3, sep=1.0, shift=0.3, seed=2)
    x[types >= 4] += 8.0
    groups = (types >= 4).astype(np.int64)
    low = k_estimate.RESOLUTIONS[:2]

    def scan(graph, resolution, seed=0):
        return groups if resolution in low else types

    monkeypatch.setattr(k_estimate, "leiden", scan)
    labels, report = k_estimate.estimate_partition(x, batches, seed=0)
    coarse = np.isin(report["resolution"], low)
    agreement = np.array(report["agreement"])
    q1, q3 = np.quantile(agreement, [0.25, 0.75])
    assert agreement[coarse].min() > q1 - 1.5 * (q3 - q1)  # inside Tukey's fence
    assert np.array(report["score"])[coarse].min() > np.array(report["score"])[~coarse].max()
    assert report["outlier"] == coarse.tolist()
    np.testing.assert_array_equal(labels, types)


@pytest.mark.parametrize("times_found", [1, 2])
def test_a_near_tie_the_scan_finds_once_is_not_chosen(monkeypatch, times_found):
    """Eight types, and one of them cut in two by the top resolutions only, scoring
    within noise of the eight (as pancreas at seed 1: K 10 at one resolution, K 9 at
    the rest). Found at one resolution the finer partition is the draw of a near-tie
    and the eight types are chosen; found at two, the finer one is."""
    x, types, batches = blobs(n_per=30, n_types=8, n_batches=3, sep=4.0, shift=0.3, seed=2)
    finer = types.copy()
    finer[(types == 0) & (np.arange(types.size) % 2 == 0)] = 8  # every batch in both parts
    top = k_estimate.RESOLUTIONS[-times_found:]

    pairs, seven = types // 2, np.minimum(types, 6)  # coarser partitions at low resolutions

    def scan(graph, resolution, seed=0):
        if graph is graphs["knn"] and resolution in top:
            return finer
        return {0: pairs, 1: pairs, 2: seven}.get(k_estimate.RESOLUTIONS.index(resolution), types)

    def score(x, labels, batch, seed):  # the finer partition a hair ahead
        return 0.5 + k_estimate.SILHOUETTE_TOLERANCE / 2 * (labels.max() == 8)

    graphs = {}
    real_as_igraph = k_estimate.as_igraph

    def as_igraph(adjacency):
        graph = real_as_igraph(adjacency)
        graphs.setdefault("knn", graph)  # the plain graph is built first
        return graph

    monkeypatch.setattr(k_estimate, "as_igraph", as_igraph)
    monkeypatch.setattr(k_estimate, "leiden", scan)
    monkeypatch.setattr(k_estimate, "within_batch_silhouette", score)
    labels, report = k_estimate.estimate_partition(x, batches, seed=0)
    counts = np.array(report["n_clusters"])
    assert not any(report["batch_split"])
    assert not np.array(report["outlier"])[counts == 9].any()  # it agrees with the scan
    assert np.array(report["score"])[counts == 9].min() == max(report["score"])
    assert np.array(report["reproduced"])[counts == 9].all() == (times_found == 2)
    np.testing.assert_array_equal(labels, finer if times_found == 2 else types)


def test_type_held_by_one_batch_keeps_its_own_cluster():
    """Two types, each captured by one batch only, lie closer to each other than to
    the shared types (as CD141 and CD1C dendritic cells in the DC data): the
    estimate keeps them apart instead of joining them across batches."""
    x, types, batches = blobs(n_types=4, shift=0.5, seed=5)
    x[types == 3] = x[types == 2] + np.random.default_rng(0).normal(3.0, 1.0, (1, x.shape[1]))
    only_one = ((types == 2) & (batches == 1)) | ((types == 3) & (batches == 0))
    x, types, batches = x[~only_one], types[~only_one], batches[~only_one]
    labels, _ = k_estimate.estimate_partition(x, batches, seed=0)
    assert labels.max() + 1 == 4
    assert metrics.ari(types, labels) > 0.95


def test_large_data_is_partitioned_on_a_sample(monkeypatch):
    x, types, batches = blobs(n_per=100, n_types=4, shift=2.0, seed=3)
    monkeypatch.setattr(k_estimate, "ESTIMATE_CELLS", 200)
    calls = []
    original = k_estimate.estimate_partition

    def spy(h, batch, seed):
        calls.append(h.shape[0])
        return original(h, batch, seed)

    monkeypatch.setattr(k_estimate, "estimate_partition", spy)
    labels, report = k_estimate.initial_partition(x, batches, None, seed=0)
    assert calls == [200]
    assert labels.shape == (len(x),) and labels.max() + 1 == 4
    assert metrics.ari(types, labels) > 0.95


def test_a_given_k_starts_from_leiden_which_keeps_small_types_that_kmeans_merges():
    """One broad type of 82 % of the cells and four small tight ones, two of them
    close, in two batches: k-means with K = 5 divides the broad type and merges the
    close pair; the batch-balanced Leiden at a resolution that gives 5 clusters finds
    the types. Where no resolution gives K, k-means does."""
    rng = np.random.default_rng(0)
    sizes, spreads = [1500, 100, 100, 80, 60], [2.0, 0.3, 0.3, 0.3, 0.3]
    centres = np.zeros((5, 20))
    centres[1, 0] = centres[2, 0] = centres[3, 2] = centres[4, 3] = 15.0
    centres[2, 1] = 3.0
    types = np.repeat(np.arange(5), sizes)
    x = centres[types] + rng.normal(size=(types.size, 20)) * np.asarray(spreads)[types, None]
    batches = rng.integers(0, 2, types.size)
    x[:, 5] += batches
    kmeans = KMeans(5, n_init=10, random_state=0).fit_predict(x)
    assert adjusted_rand_score(types, kmeans) < 0.5
    labels, report = k_estimate.partition_with_k(x, batches, 5, seed=0)
    assert labels.max() + 1 == 5 and adjusted_rand_score(types, labels) > 0.99
    assert np.isfinite(report["resolution"])
    labels, report = k_estimate.partition_with_k(x, batches, 400, seed=0)
    assert np.unique(labels).size == 400 and np.isnan(report["resolution"])


def test_a_given_k_starts_at_the_lowest_resolution_that_gives_it():
    """One broad type (78 % of the cells) and three small tight ones in two batches,
    K = 4 given. Leiden also gives 4 clusters at higher resolutions, by cutting the
    broad type and merging small ones (the first such resolution the bisection met
    scored ARI 0.57); the start is the lowest resolution that gives 4: a step below
    it gives fewer clusters."""
    rng = np.random.default_rng(30)
    n_small = rng.integers(3, 7)
    sizes = [int(rng.integers(800, 2000))] + [int(rng.integers(40, 150)) for _ in range(n_small)]
    spreads = [rng.uniform(1.5, 3.0)] + [rng.uniform(0.3, 0.8) for _ in range(n_small)]
    centres = np.zeros((len(sizes), 20))
    for i in range(1, len(sizes)):
        centres[i, rng.integers(0, 20)] = rng.uniform(6, 15)
    types = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[types] + rng.normal(size=(types.size, 20)) * np.asarray(spreads)[types, None]
    batches = rng.integers(0, 2, types.size)
    x[:, 5] += batches
    labels, report = k_estimate.partition_with_k(x, batches, len(sizes), seed=0)
    assert labels.max() + 1 == len(sizes) and adjusted_rand_score(types, labels) > 0.7
    graph = k_estimate.as_igraph(
        k_estimate.batch_balanced_graph(
            k_estimate._pca(x, 0), batches, k_estimate.NEIGHBOURS_PER_BATCH
        )
    )
    below = report["resolution"] / k_estimate.RESOLUTION_PRECISION
    assert k_estimate.leiden(graph, below, 0).max() + 1 < len(sizes)


def _divide(z, p, batch, seed):
    """The memberships and report of the divisions found, as a fit applies them."""
    divisions, report = k_estimate.find_divisions(z, p, batch, seed)
    assert k_estimate.new_parts(divisions) == sum(report["divided"])
    return k_estimate.divide(z, p, divisions), report


def _nested(seed=0, dim=20):
    """Cells of two clusters: the first holds two groups 4 sd apart along one direction
    (types of one family), the second one skewed group (a type with a long tail)."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    first = rng.normal(size=(600, dim))
    first[300:] += 4.0 * direction
    second = rng.normal(size=(400, dim)) + 15.0
    second[:, 0] += rng.gamma(2.0, 2.0, 400)
    z = np.vstack([first, second])
    groups = np.repeat([0, 1, 2], [300, 300, 400])
    batch = rng.integers(0, 2, z.shape[0])
    p = np.zeros((z.shape[0], 2))
    p[:600, 0], p[:600, 1] = 0.9, 0.1
    p[600:, 1] = 1.0
    return z, groups, batch, p


def test_a_cluster_of_two_groups_is_divided_and_one_of_a_skewed_group_is_not():
    z, groups, batch, p = _nested()
    divided, report = _divide(z, p, batch, seed=0)
    assert divided.shape == (z.shape[0], 3)
    # memberships move between the parts, none is made or lost
    np.testing.assert_allclose(divided.sum(axis=1), p.sum(axis=1))
    assert metrics.ari(groups, divided.argmax(axis=1)) > 0.95
    # the first test of each cluster: its parts are tested again after a division
    first = {c: report["cluster"].index(c) for c in (0, 1)}
    assert report["divided"][first[0]] and not report["divided"][first[1]]
    assert report["p_value"][first[0]] <= k_estimate.MODE_ALPHA


def test_the_parts_of_a_cluster_divided_twice_are_refitted_together():
    """Three groups 5 sd apart in one cluster: the first cut puts one group against
    the other two, its boundary at the midpoint of their means (inside the middle
    group); refitted together, the parts each hold one group."""
    rng = np.random.default_rng(0)
    direction = rng.normal(size=20)
    direction /= np.linalg.norm(direction)
    groups = np.repeat([0, 1, 2], 300)
    z = rng.normal(size=(900, 20)) + 5.0 * groups[:, None] * direction
    divided, report = _divide(z, np.ones((900, 1)), rng.integers(0, 2, 900), seed=0)
    assert divided.shape[1] == 3 and sum(report["divided"]) == 2
    assert metrics.ari(groups, divided.argmax(axis=1)) > 0.95


def test_no_division_by_batch_or_into_a_handful_of_cells():
    z, groups, _, p = _nested()
    # each group of the first cluster measured in its own batch: a batch effect
    by_batch = np.where(groups == 1, 1, 0)
    divided, report = _divide(z, p, by_batch, seed=0)
    assert divided.shape[1] == 2 and not any(report["divided"])
    # a second group of fewer cells than a part must hold stays where it is
    small = np.r_[np.arange(300), np.arange(300, 300 + k_estimate.MODE_MIN_CELLS // 2)]
    small = np.r_[small, np.arange(600, 1000)]
    divided, report = _divide(z[small], p[small], np.zeros(small.size, dtype=int), seed=0)
    assert divided.shape[1] == 2


def _two_groups(separation: float, seed: int) -> np.ndarray:
    """200 points in 10 dimensions: two unit-variance groups held 60 : 40, their means
    ``separation`` sd apart along the first axis."""
    y = np.random.default_rng(seed).standard_normal((200, 10))
    y[:120, 0] += separation
    return y


def test_a_verdict_near_the_level_does_not_rest_on_one_halving():
    """Groups 4.8 sd apart among 200 cells (a sub-state, say) lie so near the level that
    one random halving rejects one mode on about half the draws; repeated on
    MODE_SPLITS halvings, the test gives one verdict on at least 9 draws of 10. Groups
    8 sd apart are divided on every draw."""
    y = _two_groups(4.8, seed=2)
    alpha = k_estimate.MODE_ALPHA
    draws = range(10)
    one = [k_estimate._halving_test(y, np.random.default_rng(100 + r), r)[0] for r in draws]
    assert 0.2 <= np.mean(np.array(one) <= alpha) <= 0.8
    repeated = [k_estimate._mode_test(y, np.random.default_rng(100 + r), r)[0] for r in draws]
    rejected = np.mean(np.array(repeated) <= alpha)
    assert max(rejected, 1 - rejected) >= 0.9
    y = _two_groups(8.0, seed=2)
    for r in range(3):
        assert k_estimate._mode_test(y, np.random.default_rng(100 + r), r)[0] <= alpha
