import numpy as np
import pytest

from deepbid import metrics


def _blobs(mixed: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    types = np.repeat([0, 1, 2], 100)
    batch = np.tile([0, 1], 150)
    centre = np.array([[0, 0], [20, 0], [0, 20]])[types]
    shift = 0 if mixed else np.array([[0, 0], [8, 8]])[batch]
    return centre + shift + rng.normal(size=(300, 2)), types, batch


def test_lisi_separates_mixed_from_split_batches():
    mixed, types, batch = _blobs(True)
    split, _, _ = _blobs(False)
    assert np.median(metrics.lisi(mixed, batch)) > 1.8
    assert np.median(metrics.lisi(split, batch)) < 1.1
    assert np.median(metrics.lisi(mixed, types)) == pytest.approx(1.0, abs=0.01)


def test_batch_asw_and_graph_connectivity():
    mixed, types, batch = _blobs(True)
    split, _, _ = _blobs(False)
    assert metrics.batch_asw(mixed, batch, types) > 0.9
    assert metrics.batch_asw(split, batch, types) < 0.5
    # strongly connected components: an outlier nobody lists as a neighbour is cut off
    assert metrics.graph_connectivity(mixed, types) > 0.95
    assert metrics.graph_connectivity(split, types) < 0.75


def test_ari_nmi():
    assert metrics.ari([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert metrics.nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "score",
    [
        lambda x, b, t: metrics.lisi(x, b[:-1]),
        lambda x, b, t: metrics.batch_asw(x, b, t[:-1]),
        lambda x, b, t: metrics.graph_connectivity(x, t[:-1]),
        lambda x, b, t: metrics.scores(x, t, b[:-1], t),
        lambda x, b, t: metrics.ari(t, t[:-1]),
    ],
)
def test_labels_of_other_cells_raise_the_documented_value_error(score):
    x, types, batch = _blobs(True)
    with pytest.raises(ValueError):
        score(x, batch, types)
