"""Input validation and the paper's gene selection."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from deepbid import InputError, InputWarning
from deepbid.data import MIN_CELLS_PER_BATCH, prepare


def test_view_of_real_counts(small):
    view = prepare(small, "batch", n_top_genes=300)
    assert view.is_counts
    assert view.n_batches == 2 and view.n_cells == small.n_obs
    # union of per-batch HVGs: more than one batch's 300, at most both
    assert 300 < view.n_genes <= 600
    # encoder input is log1p of counts per 10^4 over all genes
    lib = np.asarray(small.X.sum(axis=1)).ravel()
    col = small.var_names.get_loc(view.genes[0])
    expected = np.log1p(small.X[:, col].toarray().ravel() / lib * 1e4)
    np.testing.assert_allclose(view.logx[:, 0].toarray().ravel(), expected, rtol=1e-5)
    np.testing.assert_allclose(np.median(view.size_factors), 1.0, rtol=1e-6)


def test_dense_and_sparse_numeric_batches_give_same_view(small):
    dense = small.copy()
    dense.X = small.X.toarray()
    dense.obs["batch"] = dense.obs["batch"].cat.codes  # numeric labels
    a, b = prepare(small, "batch", n_top_genes=200), prepare(dense, "batch", n_top_genes=200)
    assert a.genes == b.genes
    assert (a.counts != b.counts).nnz == 0


def test_layer_and_user_genes(small):
    adata = small.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.shape, dtype=np.float32)
    genes = list(adata.var_names[:50])
    view = prepare(adata, "batch", layer="counts", genes=genes)
    assert view.genes == genes


def test_lognormalised_input_warns_and_rounds(small):
    adata = small.copy()
    adata.X = adata.X.copy()
    adata.X.data = np.log1p(adata.X.data)
    with pytest.warns(InputWarning, match="non-integer"):
        view = prepare(adata, "batch", n_top_genes=200)
    assert not view.is_counts
    assert np.all(view.counts.data == np.round(view.counts.data))
    assert np.all(view.size_factors == 1)


def test_lognormalised_input_with_raw_counts_points_to_them(small):
    adata = small.copy()
    adata.raw = adata
    adata.X = adata.X.copy()
    adata.X.data = np.log1p(adata.X.data)
    with pytest.warns(InputWarning, match=r"adata\.raw\.to_adata\(\)"):
        prepare(adata, "batch", n_top_genes=200)
    raw = adata.raw.to_adata()
    assert "batch" in raw.obs and prepare(raw, "batch", n_top_genes=200).is_counts


def test_zero_count_cells_are_dropped_with_a_count(small):
    adata = small.copy()
    x = adata.X.tolil()
    x[[0, 5], :] = 0
    adata.X = x.tocsr()
    with pytest.warns(InputWarning, match="2 cells have zero counts"):
        view = prepare(adata, "batch", n_top_genes=200)
    assert view.n_cells == small.n_obs - 2 and not view.cells[0]


def _bad(small, change):
    adata = small.copy()
    change(adata)
    return adata


def _set_value(value):
    def change(adata):
        x = adata.X.toarray()
        x[3, 4] = value
        adata.X = x

    return change


BAD = {
    "missing batch key": (lambda a: a.obs.drop(columns="batch", inplace=True), "batch_key 'batch'"),
    "nan": (_set_value(np.nan), "NaN or infinite"),
    "inf": (_set_value(np.inf), "NaN or infinite"),
    "negative": (_set_value(-1.0), "negative values"),
    "one batch": (lambda a: a.obs.__setitem__("batch", "b1"), "single batch"),
    "missing batch labels": (
        lambda a: a.obs.__setitem__(
            "batch", a.obs["batch"].astype(object).where(np.arange(a.n_obs) != 2, None)
        ),
        r"missing for 1 cell \(row 2\)",
    ),
    "duplicate cells": (
        lambda a: setattr(a, "obs_names", ["c"] * a.n_obs),
        "obs_names_make_unique",
    ),
    "duplicate genes": (
        lambda a: setattr(a, "var_names", ["g"] * a.n_vars),
        "var_names_make_unique",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_input_error(small, case):
    change, message = BAD[case]
    with pytest.raises(InputError, match=message):
        prepare(_bad(small, change), "batch")


def test_tiny_batch_is_named(small):
    adata = small.copy()
    labels = adata.obs["batch"].astype(str).to_numpy()
    labels[: MIN_CELLS_PER_BATCH - 1] = "tiny"
    adata.obs["batch"] = labels
    with pytest.raises(InputError, match="'tiny' \\(4 cells\\)"):
        prepare(adata, "batch")
    labels[1 : MIN_CELLS_PER_BATCH - 1] = labels[MIN_CELLS_PER_BATCH]
    adata.obs["batch"] = labels
    with pytest.raises(InputError, match="'tiny' \\(1 cell\\)"):
        prepare(adata, "batch")


def test_batch_key_must_name_one_column(small):
    with pytest.raises(InputError, match="batch_key must name one column"):
        prepare(small, ["batch"])


def test_batch_of_zero_count_cells_says_so(small):
    adata = small.copy()
    first = adata.obs["batch"].astype(str).to_numpy() == str(adata.obs["batch"].iloc[0])
    x = adata.X.tolil()
    x[np.flatnonzero(first), :] = 0
    adata.X = x.tocsr()
    with pytest.warns(InputWarning, match="zero counts"):
        with pytest.raises(InputError, match=f"\\(0 cells with counts, of {first.sum()}\\)"):
            prepare(adata, "batch")


def test_missing_layer_empty_and_not_anndata(small):
    with pytest.raises(InputError, match="layer 'counts' not found"):
        prepare(small, "batch", layer="counts")
    with pytest.raises(InputError, match="empty"):
        prepare(small[:0].copy(), "batch")
    with pytest.raises(InputError, match="expected an AnnData"):
        prepare(small.X, "batch")
    with pytest.raises(InputError, match="layer must name one layer"):
        prepare(small, "batch", layer=["counts"])
    with pytest.raises(InputError, match="not in adata.var_names"):
        prepare(small, "batch", genes=["no-such-gene", small.var_names[0]])
    with pytest.raises(InputError, match="a list of gene names, got the string"):
        prepare(small, "batch", genes=small.var_names[0])
    all_zero = ad.AnnData(sp.csr_matrix((20, 5), dtype=np.float32))
    all_zero.obs["batch"] = ["a"] * 10 + ["b"] * 10
    with pytest.raises(InputError, match="zero counts"), pytest.warns(InputWarning):
        prepare(all_zero, "batch")


def test_genes_without_counts_are_never_selected(small):
    adata = small.copy()
    x = adata.X.tolil()
    x[:, :25] = 0
    adata.X = x.tocsr()
    view = prepare(adata, "batch", n_top_genes=2000)
    assert not set(view.genes) & set(adata.var_names[:25])


def test_non_integer_counts_get_a_clear_error(small):
    """Counts that are not whole numbers (ambient-RNA corrected, say) are no log data:
    read as such, scanpy's gene selection overflowed with a pandas error."""
    adata = small.copy()
    adata.X = adata.X.astype(np.float64)
    adata.X.data[np.argmax(adata.X.data)] += 0.5
    with pytest.raises(InputError, match="round them first"):
        prepare(adata, "batch", n_top_genes=200)
    adata.X.data = np.rint(adata.X.data)
    assert prepare(adata, "batch", n_top_genes=200).is_counts
