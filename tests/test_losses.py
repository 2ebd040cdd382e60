import numpy as np
import pytest
import scipy.stats
import torch

from deepbid import losses


def test_nb_nll_matches_scipy():
    x, mu, theta = np.meshgrid(
        [0, 1, 3, 10, 250, 5000],
        [1e-3, 0.5, 4.0, 100.0, 3000.0],
        [0.05, 1.0, 10.0, 1e4],
        indexing="ij",
    )
    expected = -scipy.stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    got = losses.nb_nll(*(torch.tensor(a, dtype=torch.float64) for a in (x, mu, theta)))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_nb_nll_finite_at_extremes_in_float32():
    x = torch.tensor([0.0, 0.0, 1e5, 1e5])
    mu = torch.tensor([1e-12, 1e6, 1e-12, 1e6])
    theta = torch.tensor([1e-4, 1e4, 1e-4, 1e4])
    assert torch.isfinite(losses.nb_nll(x, mu, theta)).all()


def test_adaptive_kmeans_formula():
    rng = np.random.default_rng(0)
    h, c = rng.normal(size=(7, 3)), rng.normal(size=(2, 3))
    p = rng.dirichlet([1, 1], size=7)
    r = np.linalg.norm(h[:, None] - c[None], axis=2)
    expected = ((r + 2) / (r + 1) ** 2 * p * r**2).sum(axis=1).mean()
    got = losses.adaptive_kmeans(*(torch.tensor(a) for a in (h, c, p)))
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_weight_penalty_is_sum_of_squares():
    layer = torch.nn.Linear(4, 3)
    expected = (layer.weight**2).sum() + (layer.bias**2).sum()
    assert losses.weight_penalty(layer.parameters()).item() == pytest.approx(
        expected.item(), rel=1e-6
    )


def test_kl_within_batch_ignores_other_batches_and_is_nonnegative():
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(12, 4)))
    batch = torch.tensor([0] * 6 + [1] * 6)
    total = losses.kl_within_batch(h, batch)
    assert total.item() > 0
    # the loss of the whole is the cell-weighted sum of each batch's own loss
    parts = [losses.kl_within_batch(h[batch == b], batch[batch == b]) * 6 for b in (0, 1)]
    assert total.item() == pytest.approx(sum(p.item() for p in parts) / 12, rel=1e-10)
    # moving a cell of batch 1 far away changes nothing for batch 0's term
    h2 = h.clone()
    h2[7] += 100.0
    part0 = losses.kl_within_batch(h2[:6], batch[:6])
    assert part0.item() == pytest.approx(parts[0].item() / 6, rel=1e-10)


def test_kl_within_batch_leaves_out_batches_of_fewer_than_three_cells():
    rng = np.random.default_rng(2)
    h = torch.tensor(rng.normal(size=(8, 4)))
    batch = torch.tensor([0] * 6 + [1] * 2)
    alone = losses.kl_within_batch(h[:6], batch[:6]) * 6
    assert losses.kl_within_batch(h, batch).item() == pytest.approx(alone.item() / 8, rel=1e-10)
