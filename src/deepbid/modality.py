"""Silverman's test of whether a one-dimensional sample has more than one mode.

The number of modes of a Gaussian kernel density estimate can only fall as its
bandwidth grows (Silverman 1981), so a sample has a *critical bandwidth*: the
smallest at which its density has one mode (here: no valley between the
sample's outer 5 % quantiles). Two groups apart need a wide kernel
to blur into one; one group with a long tail or a skew does not. The test
compares the critical bandwidth with those of samples drawn from the unimodal
density the critical bandwidth gives (the smoothed bootstrap, rescaled to the
sample's variance), so it judges the sample against a one-mode distribution of
its own shape rather than against a Gaussian.
"""

from __future__ import annotations

import numpy as np

#: Bins of the grid on which densities are evaluated (binned kernel estimate).
GRID = 512
#: Bisection steps of the critical bandwidth on its logarithm.
BISECTION_STEPS = 20
#: Share of the sample in each tail where a valley does not count: a few outlying
#: points form a mode of their own at any small bandwidth (a t3 sample needs 1.3 sd
#: to look unimodal, a Gaussian 0.3), which is no second group.
TAIL = 0.05


def _smoothed(counts: np.ndarray, bandwidth: float) -> np.ndarray:
    """The binned counts ``(GRID,)`` convolved with a Gaussian of ``bandwidth`` bins."""
    half = int(min(4 * bandwidth, GRID)) + 1
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2)
    return np.convolve(counts, kernel)[half : half + counts.size]


def _valleys(counts: np.ndarray, bandwidth: float, window: tuple[int, int]) -> int:
    """Local minima of the smoothed counts within the bins ``window`` (inclusive)."""
    density = _smoothed(counts, bandwidth)
    step = np.diff(density)
    # rounding in the empty tails must not turn the density up or down
    moving = np.flatnonzero(np.abs(step) > 1e-9 * density.max())
    rising = step[moving] > 0
    turns = moving[1:][~rising[:-1] & rising[1:]]
    return int(((turns >= window[0]) & (turns <= window[1])).sum())


def _binned(y: np.ndarray, low: float, high: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Counts of ``y`` in the grid's bins over ``[low, high]``, and the bins of its
    central quantiles (where a valley counts)."""
    counts = np.histogram(y, bins=GRID, range=(low, high))[0].astype(float)
    core = np.quantile(y, [TAIL, 1 - TAIL])
    window = np.floor((core - low) / (high - low) * GRID).astype(int)
    return counts, (int(window[0]), int(window[1]))


def critical_bandwidth(y: np.ndarray) -> float:
    """Smallest Gaussian kernel bandwidth (in units of ``y``) at which the density of
    the ``(n,)`` sample ``y`` has one mode (to the grid's resolution)."""
    low, high = float(y.min()), float(y.max())
    if high <= low:
        return 0.0
    span = high - low
    # the grid reaches past the data so that no mode sits at its edge
    edges = (low - 0.5 * span, high + 0.5 * span)
    counts, window = _binned(y, *edges)
    width = (edges[1] - edges[0]) / GRID
    small, large = 1.0, span / width
    if not _valleys(counts, small, window):
        return small * width
    for _ in range(BISECTION_STEPS):
        middle = np.sqrt(small * large)
        small, large = (middle, large) if _valleys(counts, middle, window) else (small, middle)
    return large * width


def unimodality_pvalue(
    y: np.ndarray, rng: np.random.Generator, n_boot: int = 199, alpha: float | None = None
) -> float:
    """P-value of Silverman's test that the ``(n,)`` sample ``y`` has one mode.

    Each bootstrap sample is drawn from the kernel density of ``y`` at its critical
    bandwidth ``h``, rescaled to ``y``'s variance; the p-value is the share (with
    the sample itself counted) of bootstrap samples that still have more than one
    mode at ``h`` (a valley inside their central quantiles), which is whether their
    critical bandwidth exceeds ``h``.

    Parameters
    ----------
    y
        ``(n,)`` sample.
    rng
        Source of the bootstrap draws.
    n_boot
        Bootstrap samples; the smallest p-value is ``1 / (n_boot + 1)``.
    alpha
        Stop drawing once the p-value cannot fall to ``alpha`` or below; the value
        returned is then the share so far (above ``alpha``).

    Returns
    -------
    The p-value; small values say ``y`` has more than one mode.
    """
    y = np.asarray(y, dtype=float)
    sd = y.std()
    if not sd > 0:
        return 1.0
    y = (y - y.mean()) / sd
    h = critical_bandwidth(y)
    shrink = 1.0 / np.sqrt(1.0 + h * h)
    # a bootstrap sample lies within a few h of y's range: one grid serves all
    edges = (float(y.min()) - 6 * h - 1.0, float(y.max()) + 6 * h + 1.0)
    bins = h * GRID / (edges[1] - edges[0])
    limit = None if alpha is None else alpha * (n_boot + 1) - 1
    exceed = 0
    for drawn in range(1, n_boot + 1):
        sample = (rng.choice(y, y.size) + h * rng.standard_normal(y.size)) * shrink
        counts, window = _binned(sample, *edges)
        exceed += _valleys(counts, bins, window) > 0
        if limit is not None and exceed > limit:
            return (1 + exceed) / (1 + drawn)
    return (1 + exceed) / (1 + n_boot)
