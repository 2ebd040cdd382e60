"""The shifted mixture measures a batch's offset apart from its mix of close types."""

import numpy as np
import pytest
import torch

from deepbid import DeepBID, mixing
from deepbid.settings import Settings

D = 10


def two_close_types(rng, shares, shift, n=600):
    """Cells of two types 4 sd apart, held in ``shares`` by each batch, each batch
    shifted by its row of ``shift``: codes, batches, types."""
    means = np.zeros((2, D))
    means[1, 0] = 4.0
    codes, batches, types = [], [], []
    for b, share in enumerate(shares):
        kind = (rng.random(n) < share).astype(int)
        codes.append(means[kind] + shift[b] + rng.standard_normal((n, D)))
        batches.append(np.full(n, b))
        types.append(kind)
    return (
        torch.tensor(np.concatenate(codes)),
        torch.tensor(np.concatenate(batches)),
        np.concatenate(types),
    )


def fitted(codes, batch, n_batches, seed=0, reference=None, n_reference=0):
    """All cells as one cluster, through the model's own measurement (both starts, the
    better likelihood kept): the shifts and components, and the centroid deviations."""
    model = DeepBID(seed=seed)
    model.settings = Settings(alignment_components=4)
    mass = torch.ones(codes.shape[0], 1, dtype=codes.dtype)
    sums, counts = mixing.batch_cluster_sums(codes, mass, batch, n_batches)
    _, deviations = mixing.batch_deviations(sums, counts)
    shifts, centres, variances = model._shifts(
        codes, mass, batch, sums, counts, reference, n_reference
    )
    measured = mixing.final_alignment(
        sums, counts, torch.ones(n_batches, 1), None, shifts, centres, variances
    )
    return measured, deviations[:, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_shift_leaves_out_a_difference_of_mix_that_the_centroids_hold(seed):
    rng = np.random.default_rng(seed)
    true = np.zeros((2, D))
    true[1] = [0.5, -1.0, 0.8] + [0.0] * (D - 3)
    codes, batch, _ = two_close_types(rng, [0.9, 0.1], true)
    measured, centroid = fitted(codes, batch, 2, seed)
    wanted = torch.tensor(true[1] - true[0])
    # batch 1 holds mostly the second type: its centroid sits 3.2 units nearer that
    # type along the axis the types differ on, on top of its shift
    assert (centroid[1] - centroid[0] - wanted).norm() > 2.5
    assert (measured.shifts[1, 0] - measured.shifts[0, 0] - wanted).norm() < 0.5
    # the offset removed is that shift, trusted as the centroid's was
    trust = mixing.batch_trust(measured.counts)[:, 0, None]
    assert torch.allclose(measured.offsets[:, 0], trust * measured.shifts[:, 0])


def test_equal_mixes_give_the_centroid_offsets():
    rng = np.random.default_rng(3)
    true = np.zeros((3, D))
    true[1, 2], true[2, 4] = 1.5, -2.0
    codes, batch, _ = two_close_types(rng, [0.5, 0.5, 0.5], true, n=2000)
    measured, centroid = fitted(codes, batch, 3)
    assert torch.allclose(measured.shifts[:, 0], centroid, atol=0.15)


def test_shifts_of_new_batches_are_measured_against_the_reference_components():
    rng = np.random.default_rng(4)
    true = np.zeros((3, D))
    true[1, 1], true[2, 3] = 1.0, 1.5
    codes, batch, _ = two_close_types(rng, [0.8, 0.3, 0.1], true)
    old = batch < 2
    reference, _ = fitted(codes[old], batch[old], 3)
    mapped, _ = fitted(codes, batch, 3, reference=reference, n_reference=2)
    assert torch.equal(mapped.shifts[:2], reference.shifts[:2])
    assert torch.equal(mapped.centres, reference.centres)
    # batch 2 holds the first type almost alone, the reference mostly the second
    wanted = torch.tensor(true[2] - true[0])
    assert (mapped.shifts[2, 0] - mapped.shifts[0, 0] - wanted).norm() < 0.3


def test_a_batch_without_cells_in_the_cluster_has_no_shift():
    rng = np.random.default_rng(5)
    codes, batch, _ = two_close_types(rng, [0.7, 0.2], np.zeros((2, D)))
    measured, _ = fitted(codes, batch, 3)
    assert torch.equal(measured.shifts[2, 0], torch.zeros(D, dtype=measured.shifts.dtype))
