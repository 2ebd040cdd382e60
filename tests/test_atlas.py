"""Atlas-scale paths: approximate neighbours, block-wise and backed reading, the step
budget, the denoised matrix's size rule and scoring on a sample."""

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from conftest import FAST

import deepbid
from deepbid import DeepBID, InputError, InputWarning, api, data, evaluate, neighbors, plotting
from deepbid.data import prepare


@pytest.fixture(scope="module")
def embedding_5k() -> tuple[np.ndarray, np.ndarray]:
    """PCA (30 components) of 5,000 simulated cells of 8 types, and their types."""
    sim = deepbid.datasets.simulate(5000, 500, n_batches=3, n_types=8, seed=1)
    view = prepare(sim, "batch", genes=list(sim.var_names))
    return plotting.log_pca(view.logx, n_comps=30), sim.obs["cell_type"].to_numpy()


def test_approximate_neighbours_recall_exact_ones(embedding_5k):
    x, _ = embedding_5k
    exact, exact_dist = neighbors.knn(x, 15, exact=True)
    approx, approx_dist = neighbors.knn(x, 15, exact=False)
    recall = np.mean([len(set(a) & set(e)) / 15 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9
    assert np.all(approx[:, 0] == np.arange(x.shape[0]))  # each cell first, at 0
    assert np.all(np.diff(approx_dist, axis=1) >= -1e-5)  # rows by distance
    np.testing.assert_allclose(
        exact_dist[:, 1], np.linalg.norm(x - x[exact[:, 1]], axis=1), rtol=1e-4
    )


def test_knn_switches_to_approximate_above_the_exact_limit(monkeypatch, embedding_5k):
    x, _ = embedding_5k
    calls = []
    monkeypatch.setattr(neighbors, "EXACT_MAX_CELLS", 1000)
    import pynndescent

    original = pynndescent.NNDescent

    def recording(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(pynndescent, "NNDescent", recording)
    neighbors.knn(x[:900], 5)
    assert calls == []
    neighbors.knn(x, 5)
    assert calls == [x.shape[0]]


def test_scanpy_reads_the_transformer_like_its_own_exact_graph(embedding_5k):
    x, labels = embedding_5k
    ours, theirs = ad.AnnData(x[:1500]), ad.AnnData(x[:1500])
    sc.pp.neighbors(ours, use_rep="X", transformer=neighbors.KNNTransformer(15))
    sc.pp.neighbors(theirs, use_rep="X", transformer="sklearn")
    assert abs(ours.obsp["connectivities"] - theirs.obsp["connectivities"]).max() < 1e-5


def _same_view(a: data.DataView, b: data.DataView) -> None:
    assert a.genes == b.genes and a.batch_categories == b.batch_categories
    assert (a.matrix != b.matrix).nnz == 0
    np.testing.assert_array_equal(a.scale, b.scale)
    np.testing.assert_array_equal(a.size_factors, b.size_factors)
    np.testing.assert_array_equal(a.batch_codes, b.batch_codes)
    np.testing.assert_array_equal(a.cells, b.cells)


def test_blockwise_and_backed_reading_give_the_same_view(small, monkeypatch, tmp_path):
    adata = small.copy()
    x = adata.X.tolil()
    x[7, :] = 0  # a zero-count cell inside the first block
    adata.X = x.tocsr()
    with pytest.warns(InputWarning, match="1 cells have zero counts"):
        whole = prepare(adata, "batch", n_top_genes=200)
    monkeypatch.setattr(data, "BLOCK_CELLS", 37)
    with pytest.warns(InputWarning):
        _same_view(whole, prepare(adata, "batch", n_top_genes=200))
    path = tmp_path / "small.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.warns(InputWarning):
        _same_view(whole, prepare(backed, "batch", n_top_genes=200))
    dense = adata.copy()
    dense.X = adata.X.toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    with pytest.warns(InputWarning):
        view = prepare(ad.read_h5ad(tmp_path / "dense.h5ad", backed="r"), "batch", n_top_genes=200)
    _same_view(whole, view)


def test_bad_values_in_any_block_name_their_cells(small, monkeypatch):
    monkeypatch.setattr(data, "BLOCK_CELLS", 50)
    adata = small.copy()
    x = adata.X.toarray()
    x[123, 4] = np.nan
    adata.X = sp.csr_matrix(x)
    with pytest.raises(
        InputError, match=r"1 NaN or infinite values in 1 cell \(row 123\) of rows 100-149"
    ):
        prepare(adata, "batch")
    x[[107, 123, 140, 141], 5] = -2.0
    x[123, 4] = 0.0
    adata.X = sp.csr_matrix(x)
    with pytest.raises(
        InputError, match=r"negative values .* in 4 cells \(rows 107, 123, 140, ...\) of rows 100-"
    ):
        prepare(adata, "batch")


def test_integrate_works_on_a_backed_anndata_and_refuses_to_copy_it(small, tmp_path):
    path = tmp_path / "small.h5ad"
    small.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    with pytest.raises(InputError, match="to_memory"):
        deepbid.integrate(backed, "batch", copy=True, **FAST)
    deepbid.integrate(backed, "batch", n_clusters=3, **FAST)
    in_memory = deepbid.integrate(small, "batch", n_clusters=3, copy=True, **FAST)
    np.testing.assert_allclose(backed.obsm["X_deepbid"], in_memory.obsm["X_deepbid"], atol=1e-5)


def test_gene_selection_reads_a_fixed_sample_of_large_batches(small, monkeypatch):
    monkeypatch.setattr(data, "SELECTION_CELLS", 60)
    codes = pd.Categorical(small.obs["batch"]).codes
    sample = data._selection_sample(codes)
    assert np.all(np.bincount(codes[sample]) == 60)
    np.testing.assert_array_equal(sample, data._selection_sample(codes))
    view = prepare(small, "batch", n_top_genes=200)
    assert view.n_cells == small.n_obs and 200 < view.n_genes <= 400


def test_an_epoch_draws_at_most_epoch_cells(small, monkeypatch):
    steps = []
    original = data.DataView.rows

    def counting(self, idx):
        steps.append(len(idx))
        return original(self, idx)

    monkeypatch.setattr(data.DataView, "rows", counting)
    settings = {**FAST, "layer_epochs": 1, "pretrain_epochs": 1, "epochs": 2, "batch_size": 32}
    model = DeepBID(n_clusters=3, seed=0, epoch_cells=64, **settings).fit(small, "batch")
    # 7 epochs (2 layer-wise, 1 stacked, 2 clustering, 2 decoder) of 64 cells in steps of 32
    assert steps == [32] * 14
    assert len(model.history["cluster"]["total"]) == 2
    steps.clear()
    DeepBID(n_clusters=3, seed=0, epoch_cells=None, **settings).fit(small, "batch")
    assert sum(steps) == 7 * small.n_obs


def test_denoised_matrix_is_skipped_above_the_size_rule_with_a_message(small, monkeypatch):
    monkeypatch.setattr(api, "DENOISED_MAX_VALUES", 1000)
    with pytest.warns(InputWarning, match="denoised=True"):
        skipped = deepbid.integrate(small, "batch", n_clusters=3, copy=True, **FAST)
    assert "deepbid_denoised" not in skipped.obsm
    assert skipped.uns["deepbid"]["denoised_transform_batch"] == "none"
    forced = deepbid.integrate(small, "batch", n_clusters=3, copy=True, denoised=True, **FAST)
    assert forced.obsm["deepbid_denoised"].shape == (
        small.n_obs,
        len(forced.uns["deepbid"]["genes"]),
    )


def test_evaluation_scores_and_draws_a_sample_above_the_limit(small, monkeypatch, tmp_path):
    monkeypatch.setattr(evaluate, "SCORED_CELLS", 100)
    adata = small.copy()
    model = DeepBID(n_clusters=3, seed=0, **FAST)
    table, cells = evaluate.evaluate(
        adata, model, "batch", layer=None, label_key="cell_type", figures=tmp_path
    )
    assert len(cells) == 100 and np.all(np.diff(cells) > 0)
    assert (table["cells_scored"] == 100).all()
    assert adata.obsm["X_deepbid"].shape[0] == small.n_obs  # results for every cell
    assert (tmp_path / "umap_after.png").stat().st_size > 10_000


_MEMORY_CHILD = """
import json, sys, warnings
import deepbid

warnings.simplefilter("ignore")
adata = deepbid.datasets.simulate(50_000, 500, n_batches=3, n_types=6, seed=0)
x = adata.X
data_bytes = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as refs:  # restart the peak at the current RSS
    refs.write("5")
before = status("VmRSS")
# on the CPU: CUDA's libraries alone add a fixed gigabyte or more to the host's memory
deepbid.integrate(adata, "batch", device="cpu", **json.loads(sys.argv[1]))
print(json.dumps({
    "data_bytes": data_bytes,
    "added": status("VmHWM") - before,
    "genes": len(adata.uns["deepbid"]["genes"]),
    "latent": adata.obsm["X_deepbid"].shape[1],
    "clusters": adata.obsm["deepbid_membership"].shape[1],
}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_integrate_memory_on_50k_cells_stays_within_a_budget_from_the_data_size():
    settings = {**FAST, "layer_epochs": 1, "pretrain_epochs": 1, "epochs": 2, "batch_size": 256}
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, json.dumps(settings)],
        capture_output=True,
        text=True,
        check=True,
    )
    used = json.loads(done.stdout.strip().splitlines()[-1])
    n = 50_000
    # what integrate holds besides the user's matrix, by design: the view of the
    # selected genes and the gene-selection sample (each at most the matrix), the
    # dense outputs (denoised cells x genes, latent, memberships, float32; the
    # codes and memberships again during training) and a fixed allowance for
    # torch's and scanpy's working memory
    outputs = 4 * n * (used["genes"] + 2 * (used["latent"] + used["clusters"]))
    budget = 2 * used["data_bytes"] + outputs + 300e6
    assert used["added"] <= budget, used
