"""Divergence is reported, not written; saved models reload in a fresh process;
random small inputs give a valid result or a documented error."""

import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import FAST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepbid
from deepbid import DeepBID, InputError, InputWarning, TrainingError, losses


def test_nan_loss_stops_with_phase_epoch_and_term(small, monkeypatch):
    def broken(h, batch):
        return h.sum() * torch.tensor(float("nan"))

    monkeypatch.setattr(losses, "kl_within_batch", broken)
    out = small.copy()
    with pytest.raises(TrainingError, match=r"cluster epoch 1: loss term\(s\) \['kl_within'\]"):
        deepbid.integrate(out, "batch", n_clusters=3, **FAST)
    assert "X_deepbid" not in out.obsm and "deepbid" not in out.uns


def test_saved_model_gives_same_embedding_in_fresh_process(small, tmp_path):
    model = DeepBID(n_clusters=3, **FAST).fit(small, "batch")
    model.save(tmp_path / "model.pt")
    small.write_h5ad(tmp_path / "cells.h5ad")
    expected = model.latent()
    script = (
        "import sys, numpy as np, anndata as ad, deepbid;"
        "m = deepbid.DeepBID.load(sys.argv[1], device='cpu');"
        "np.save(sys.argv[3], m.latent(ad.read_h5ad(sys.argv[2])))"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "model.pt"),
            str(tmp_path / "cells.h5ad"),
            str(tmp_path / "latent.npy"),
        ],
        check=True,
    )
    np.testing.assert_allclose(np.load(tmp_path / "latent.npy"), expected, rtol=1e-5, atol=1e-6)


def test_interrupted_write_leaves_no_file(tmp_path):
    from deepbid.files import write_atomically

    target = tmp_path / "out.h5ad"

    def dies_half_way(tmp):
        with open(tmp, "wb") as handle:
            handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, dies_half_way)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_a_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot read a deepbid model"):
        DeepBID.load(path)


def test_load_names_a_model_of_another_version(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1}, path)
    with pytest.raises(InputError, match="another deepbid version"):
        DeepBID.load(path)


def test_unknown_setting_is_named():
    with pytest.raises(InputError, match="unknown setting.*kapa2"):
        DeepBID(kapa2=5.0)
    with pytest.raises(InputError, match="kappa_local"):  # deepbid 0.1's, gone in 0.2
        DeepBID(kappa_local=20.0)


TINY = {
    **FAST,
    "latent_dim": 4,
    "hidden_dim": 8,
    "layer_epochs": 1,
    "pretrain_epochs": 1,
    "epochs": 1,
    "n_top_genes": 20,
}


@st.composite
def small_anndata(draw):
    n_cells = draw(st.integers(2, 40))
    n_genes = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    density = draw(st.floats(0.0, 1.0))
    counts = rng.poisson(3.0, (n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    values = counts.astype(draw(st.sampled_from([np.float32, np.float64, np.int32])))
    if draw(st.booleans()):
        values = values + draw(st.sampled_from([0.0, 0.5, -1.0, np.nan]))
    n_batches = draw(st.integers(1, 4))
    batches = rng.integers(0, n_batches, n_cells)
    labels = batches if draw(st.booleans()) else [f"b{b}" for b in batches]
    adata = ad.AnnData(sp.csr_matrix(values) if draw(st.booleans()) else values)
    adata.obs["batch"] = labels
    return adata


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(adata=small_anndata(), k=st.sampled_from([None, 2, 3]))
def test_random_inputs_give_result_or_documented_error(adata, k):
    before = adata.copy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            out = deepbid.integrate(adata, "batch", n_clusters=k, copy=True, **TINY)
    except InputError as err:
        assert str(err)
        return
    finally:
        np.testing.assert_array_equal(_dense(adata.X), _dense(before.X))
        assert "X_deepbid" not in adata.obsm
    kept = np.isfinite(out.obsm["X_deepbid"]).all(axis=1)
    assert kept.any()
    p = out.obsm["deepbid_membership"][kept]
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-4)
    assert (out.obs["deepbid_cluster"][kept].astype(int).to_numpy() == p.argmax(axis=1)).all()
    assert np.isfinite(out.obsm["deepbid_denoised"].to_numpy()[kept]).all()


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)
