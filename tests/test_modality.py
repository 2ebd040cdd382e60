"""Silverman's test tells two groups from one group of any shape."""

import numpy as np
import pytest

from deepbid import modality


def _two_groups(rng, n, gap, share=0.5):
    first = int(n * share)
    return np.r_[rng.normal(0, 1, first), rng.normal(gap, 1, n - first)]


def test_critical_bandwidth_grows_with_the_gap_between_two_groups():
    rng = np.random.default_rng(0)
    widths = [modality.critical_bandwidth(_two_groups(rng, 400, gap)) for gap in (0, 3, 5, 8)]
    assert widths == sorted(widths) and widths[-1] > 5 * widths[0]
    # one tight group needs hardly any smoothing
    assert modality.critical_bandwidth(rng.normal(0, 1, 400)) < 0.5


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: _two_groups(rng, 500, 4.0),
        lambda rng: _two_groups(rng, 500, 5.0, share=0.9),
    ],
    ids=["halves 4 sd apart", "90:10, 5 sd apart"],
)
def test_two_groups_are_found(draw):
    y = draw(np.random.default_rng(1))
    assert modality.unimodality_pvalue(y, np.random.default_rng(2)) <= 0.01


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng: rng.normal(0, 1, 500),
        lambda rng: rng.gamma(2.0, size=500),
        lambda rng: rng.lognormal(0, 0.8, 500),
        lambda rng: rng.standard_t(3, 500),
    ],
    ids=["gaussian", "skewed", "lognormal", "heavy tails"],
)
def test_one_group_of_any_shape_is_kept(draw):
    y = draw(np.random.default_rng(3))
    assert modality.unimodality_pvalue(y, np.random.default_rng(4)) > 0.05


def test_the_level_holds_on_unimodal_samples():
    rng = np.random.default_rng(5)
    p = [
        modality.unimodality_pvalue(rng.gamma(2.0, size=200), np.random.default_rng(i), 99)
        for i in range(40)
    ]
    assert np.mean(np.array(p) <= 0.05) <= 0.1
    # and the test has power at the same size
    two = [
        modality.unimodality_pvalue(_two_groups(rng, 200, 4.0), np.random.default_rng(i), 99)
        for i in range(10)
    ]
    assert np.mean(np.array(two) <= 0.05) >= 0.8


def test_early_stop_returns_a_p_value_above_alpha():
    y = np.random.default_rng(6).normal(0, 1, 300)
    early = modality.unimodality_pvalue(y, np.random.default_rng(7), 199, alpha=0.01)
    assert 0.01 < early <= 1.0
    assert modality.unimodality_pvalue(np.ones(10), np.random.default_rng(0)) == 1.0
