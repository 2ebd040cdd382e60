"""The batch-mixing estimator: full-data counts, an unbiased value at any number of
cells, and a minibatch surrogate whose gradient is the full-data divergence's."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from deepbid import cluster, mixing
from deepbid.metrics import lisi


def _latent(n_cells, n_batches, separated, seed=0, dim=8):
    """Cells around 20 type centres; batches share the distribution, or
    (``separated``) every batch sits far from the others."""
    rng = np.random.default_rng(seed)
    types = rng.normal(0, 4, (20, dim))
    batch = rng.integers(0, n_batches, n_cells)
    h = types[rng.integers(0, 20, n_cells)] + rng.normal(0, 1, (n_cells, dim))
    if separated:
        h = h + 100.0 * np.eye(n_batches, dim)[batch]
    return torch.tensor(h, dtype=torch.float64), torch.tensor(batch)


def _fine(h):
    """100 clusters and the temperature the trainer would use (membership 0.95)."""
    fitted = KMeans(100, n_init=1, max_iter=30, random_state=0).fit(h.numpy())
    centres = torch.from_numpy(fitted.cluster_centers_).to(h.dtype)
    labels = torch.from_numpy(fitted.labels_).long()
    return centres, cluster.calibrate_temperature(h, labels, centres.shape[0])


def _epoch_report(h, batch, n_batches, batch_size=128):
    """What the trainer reports for one epoch: the running value after folding in
    every minibatch, and the mean of the minibatch surrogate."""
    torch.manual_seed(0)
    centres, tau = _fine(h)
    counts = sum(
        mixing.batch_cluster_counts(cluster.memberships(part, centres, tau), b, n_batches)
        for part, b in zip(torch.split(h, 4096), torch.split(batch, 4096), strict=True)
    )
    overall = counts.sum(dim=1, keepdim=True) / counts.sum()
    estimate = mixing.BatchMix(counts, overall.expand_as(counts))
    exact = estimate.value()
    values = []
    for idx in torch.randperm(h.shape[0]).split(batch_size):
        p = cluster.memberships(h[idx], centres, tau)
        estimate.update(mixing.batch_cluster_counts(p, batch[idx], n_batches))
        values.append(float(mixing.surrogate(p, batch[idx], estimate.log_ratio())))
    return exact, estimate.value(), float(np.mean(values))


@pytest.mark.parametrize("n_cells", [2_000, 50_000])
@pytest.mark.parametrize("n_batches", [2, 3])
def test_mixed_batches_read_near_zero_at_any_size(n_cells, n_batches):
    exact, running, surrogate = _epoch_report(*_latent(n_cells, n_batches, False), n_batches)
    assert exact <= 0.02 and running <= 0.02


def test_separated_batches_read_the_true_mutual_information():
    n_batches = 3
    h, batch = _latent(10_000, n_batches, True)
    share = np.bincount(batch.numpy()) / len(batch)
    truth = -(share * np.log(share)).sum()  # batch-pure clusters: MI = H(batch)
    exact, running, surrogate = _epoch_report(h, batch, n_batches)
    for value in (exact, running, surrogate):
        assert value == pytest.approx(truth, rel=0.02)


def test_surrogate_gradient_is_the_full_data_gradient():
    """Summed over a partition of all cells into minibatches, the surrogate's
    gradient (log-ratios held fixed) equals autograd through the full-data
    divergence, for a global and for a per-cluster target."""
    h, batch = _latent(600, 2, False, seed=1)
    h = h + 2.0 * torch.nn.functional.one_hot(batch, 8).double()  # partly mixed
    centres, tau = _fine(h)
    for target_kind in ("global", "cluster"):
        leaf = h.clone().requires_grad_(True)
        counts = mixing.batch_cluster_counts(cluster.memberships(leaf, centres, tau), batch, 2)
        if target_kind == "global":
            target = (counts.sum(1, keepdim=True) / counts.sum()).expand_as(counts)
        else:
            target = torch.softmax(torch.randn(2, counts.shape[1], dtype=h.dtype), dim=0)
        (grad_full,) = torch.autograd.grad(mixing.divergence(counts, target.detach()), leaf)
        log_ratio = mixing.BatchMix(counts.detach(), target.detach()).log_ratio()
        leaf = h.clone().requires_grad_(True)
        total = sum(
            mixing.surrogate(cluster.memberships(leaf[idx], centres, tau), batch[idx], log_ratio)
            * len(idx)
            / h.shape[0]
            for idx in torch.arange(h.shape[0]).split(128)
        )
        (grad_surrogate,) = torch.autograd.grad(total, leaf)
        assert grad_full.abs().max() > 0
        torch.testing.assert_close(grad_surrogate, grad_full, rtol=1e-6, atol=1e-10)


def test_divergence_is_zero_at_target_and_positive_elsewhere():
    counts = torch.tensor([[30.0, 10.0], [30.0, 10.0]])
    even = torch.full((2, 2), 0.5)
    assert mixing.divergence(counts, even).item() == pytest.approx(0.0, abs=1e-9)
    pure = torch.tensor([[40.0, 0.0], [0.0, 20.0]])
    assert mixing.divergence(pure, even).item() == pytest.approx(np.log(2))
    own = mixing.cluster_batch_mix(pure)
    assert mixing.divergence(pure, own).item() == pytest.approx(0.0, abs=1e-9)


def test_running_counts_follow_the_codes_within_one_epochs_draw():
    # 100,000 cells, all of batch 0 in cluster 0 at the last full count; the codes
    # then move batch 0 into cluster 1, seen through minibatches of 100 cells
    old = torch.tensor([[50_000.0, 0.0], [25_000.0, 25_000.0]])
    new_minibatch = torch.tensor([[0.0, 50.0], [25.0, 25.0]])
    target = torch.full((2, 2), 0.5)
    follows = mixing.BatchMix(old.clone(), target, horizon=10_000)
    lags = mixing.BatchMix(old.clone(), target)
    for _ in range(100):  # one epoch's draw: 10,000 cells
        follows.update(new_minibatch)
        lags.update(new_minibatch)
    moved = lambda mix: float(mix.counts[0, 1] / mix.counts[0].sum())  # noqa: E731
    assert moved(follows) > 1 - np.exp(-1) - 0.01  # one time constant
    assert moved(lags) < 0.11  # a tenth of the way with the whole data's horizon
    for mix in (follows, lags):  # both stay counts over all 100,000 cells
        assert abs(float(mix.counts.sum()) - 100_000.0) < 1.0


def test_batch_offsets_measure_mapped_batches_against_the_reference_alone():
    """Two reference batches 1 apart in cluster 0, a query batch 5 away: the query's
    offset is from the reference's centroid, and the reference's offsets are those it
    has without the query; a batch that holds a cluster far below its usual share is
    not trusted there."""
    d = 3
    sums = torch.zeros(3, 2, d)
    counts = torch.tensor([[100.0, 100.0], [100.0, 100.0], [100.0, 100.0]])
    sums[0, 0, 0], sums[1, 0, 0], sums[2, 0, 0] = -0.5 * 100, 0.5 * 100, 5.0 * 100
    reference = mixing.batch_offsets(sums[:2], counts[:2])
    both = mixing.batch_offsets(sums, counts, n_reference=2)
    torch.testing.assert_close(both[:2], reference)
    torch.testing.assert_close(both[2, 0], torch.tensor([5.0, 0.0, 0.0]))
    torch.testing.assert_close(reference[:, 0, 0], torch.tensor([-0.5, 0.5]))
    rare, rare_sums = counts.clone(), sums.clone()
    rare[2, 0], rare_sums[2, 0, 0] = 10.0, 5.0 * 10  # a tenth of its share of cluster 0
    # trust = its share of cluster 0 (10 of 210) over its share of all cells (110 of 510)
    trust = (10 / 210) / (110 / 510)
    offset = mixing.batch_offsets(rare_sums, rare, n_reference=2)[2, 0, 0]
    assert offset.item() == pytest.approx(trust * 5.0, rel=1e-5)


def test_remove_offsets_weights_each_cell_by_its_memberships():
    rng = np.random.default_rng(0)
    h = torch.tensor(rng.normal(size=(50, 4)), dtype=torch.float32)
    p = torch.softmax(torch.tensor(rng.normal(size=(50, 3)), dtype=torch.float32), dim=1)
    batch = torch.tensor(rng.integers(0, 2, 50))
    offsets = torch.tensor(rng.normal(size=(2, 3, 4)), dtype=torch.float32)
    expected = torch.stack(
        [h[j] - sum(p[j, k] * offsets[batch[j], k] for k in range(3)) for j in range(50)]
    )
    torch.testing.assert_close(mixing.remove_offsets(h, p, batch, offsets), expected)


def test_batch_spreads_are_corrected_medians_per_batch_and_cluster():
    rng = np.random.default_rng(0)
    n = 400
    distances = torch.tensor(rng.gamma(5.0, size=n), dtype=torch.float64)
    batch = torch.tensor(rng.integers(0, 2, n))
    labels = torch.tensor(rng.integers(0, 2, n))
    labels[(batch == 1) & (labels == 1)] = 0
    lone = int(torch.nonzero(batch == 1)[0, 0])
    labels[lone] = 1  # batch 1 holds one cell of cluster 1
    spreads = mixing.batch_spreads(distances, batch, labels, n_batches=3, k=2)
    for b in range(2):
        for k in range(2):
            d = distances[(batch == b) & (labels == k)].numpy()
            if d.size > 1:
                expected = np.median(d) * d.size / (d.size - 1)
                assert spreads[b, k].item() == pytest.approx(expected)
    assert torch.isnan(spreads[1, 1])  # one cell: no spread
    assert torch.isnan(spreads[2]).all()  # a batch without cells


def test_batch_scales_bring_each_batch_to_the_reference_spread():
    """Two reference batches of spreads 4 and 16 (mean 10), a query of spread 2.5:
    each is scaled by sqrt(10 / its spread); the reference's scales are those it has
    without the query; a missing spread leaves its batch unscaled, and a batch holding
    a cluster far below its usual share is scaled only as far as it is trusted."""
    counts = torch.full((3, 2), 100.0)
    spreads = torch.tensor([[4.0, 1.0], [16.0, 1.0], [2.5, float("nan")]])
    reference = mixing.batch_scales(spreads[:2], counts[:2])
    both = mixing.batch_scales(spreads, counts, n_reference=2)
    torch.testing.assert_close(both[:2], reference)
    torch.testing.assert_close(both[:, 0], torch.tensor([10 / 4, 10 / 16, 10 / 2.5]).sqrt())
    torch.testing.assert_close(both[:, 1], torch.ones(3))
    rare = counts.clone()
    rare[2, 0] = 10.0
    trust = (10 / 210) / (110 / 510)
    scale = mixing.batch_scales(spreads, rare, n_reference=2)[2, 0]
    assert scale.item() == pytest.approx(1 + trust * (2.0 - 1), rel=1e-5)


def test_remove_offsets_scales_each_cell_about_its_batch_centroids():
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(50, 4)))
    p = torch.softmax(torch.tensor(rng.normal(size=(50, 3))), dim=1)
    batch = torch.tensor(rng.integers(0, 2, 50))
    offsets = torch.tensor(rng.normal(size=(2, 3, 4)))
    scales = torch.tensor(rng.uniform(0.5, 2.0, size=(2, 3)))
    centroids = torch.tensor(rng.normal(size=(2, 3, 4)))

    def moved(j, k):
        b = batch[j]
        return (scales[b, k] - 1) * (h[j] - centroids[b, k]) - offsets[b, k]

    expected = torch.stack([h[j] + sum(p[j, k] * moved(j, k) for k in range(3)) for j in range(50)])
    got = mixing.remove_offsets(h, p, batch, offsets, scales, centroids)
    torch.testing.assert_close(got, expected)


def test_scaling_mixes_a_batch_whose_cloud_is_tighter():
    """One cluster in 100 dimensions, two batches around the same centre, one 10 %
    tighter: in so many dimensions each batch's cells are their own nearest
    neighbours; scaled to the common median spread, they mix."""
    rng = np.random.default_rng(2)
    h = torch.tensor(np.vstack([rng.normal(size=(300, 100)), 0.9 * rng.normal(size=(300, 100))]))
    batch = torch.repeat_interleave(torch.tensor([0, 1]), 300)
    p = torch.ones(600, 1, dtype=h.dtype)
    labels = torch.zeros(600, dtype=torch.long)
    sums, counts = mixing.batch_cluster_sums(h, p, batch, 2)
    centroids = mixing.batch_centroids(sums, counts)
    spreads = mixing.batch_spreads(
        mixing.centroid_distances(h, labels, batch, centroids), batch, labels, 2, 1
    )
    scales = mixing.batch_scales(spreads, counts)
    offsets = mixing.batch_offsets(sums, counts)
    scaled = mixing.remove_offsets(h, p, batch, offsets, scales, centroids)
    names = np.repeat(["a", "b"], 300)
    before = np.median(lisi(h.numpy(), names))
    after = np.median(lisi(scaled.numpy(), names))
    assert before < 1.3 and after > 1.8
