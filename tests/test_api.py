"""The AnnData-facing API and the model class, on real cells with a small fast network."""

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST

import deepbid
from deepbid import DeepBID, InputError, cluster, mixing


@pytest.fixture(scope="module")
def fitted(mixology):
    rng = np.random.default_rng(1)
    sub = mixology[np.sort(rng.choice(mixology.n_obs, 240, replace=False))].copy()
    out = deepbid.integrate(sub, "batch", n_clusters=3, copy=True, **FAST)
    return sub, out


def test_integrate_writes_documented_keys(fitted):
    sub, out = fitted
    n = sub.n_obs
    assert out.obsm["X_deepbid"].shape == (n, FAST["latent_dim"])
    p = out.obsm["deepbid_membership"]
    assert p.shape == (n, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    clusters = out.obs["deepbid_cluster"]
    assert isinstance(clusters.dtype, pd.CategoricalDtype)
    assert (clusters.astype(int).to_numpy() == p.argmax(axis=1)).all()
    denoised = out.obsm["deepbid_denoised"]
    genes = list(out.uns["deepbid"]["genes"])
    assert list(denoised.columns) == genes and out.var["deepbid_gene"].sum() == len(genes)
    assert np.isfinite(denoised.to_numpy()).all() and (denoised.to_numpy() > 0).all()
    history = out.uns["deepbid"]["history"]
    for term in ("nb", "kmeans", "weights", "kl_within", "total"):
        assert len(history["cluster"][term]) == FAST["epochs"]
    assert out.uns["deepbid"]["settings"]["n_clusters"] == 3


def test_default_model_recovers_cell_lines_with_k_estimated(mixology):
    """The bundled real data: 3 cell lines in 2 protocols; K is estimated, not given."""
    out = deepbid.integrate(mixology, "batch", copy=True, progress=False)
    clusters = out.obs["deepbid_cluster"]
    assert clusters.nunique() == 3
    assert deepbid.metrics.ari(mixology.obs["cell_type"], clusters) > 0.85


def test_copy_leaves_input_untouched(fitted):
    sub, out = fitted
    assert "X_deepbid" not in sub.obsm and "deepbid_cluster" not in sub.obs
    assert "deepbid" not in sub.uns and "deepbid_gene" not in sub.var


def _snapshot(adata):
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.array(v) for k, v in adata.obsm.items()},
        "layers": {k: v.copy() for k, v in adata.layers.items()},
        "uns": set(adata.uns.keys()),
    }


def test_in_place_adds_keys_and_changes_nothing_else(small):
    small.layers["counts"] = small.X.copy()
    small.obsm["X_pca"] = np.random.default_rng(0).normal(size=(small.n_obs, 5))
    small.uns["note_kept"] = "x"
    before = _snapshot(small)
    assert deepbid.integrate(small, "batch", n_clusters=3, **FAST) is None
    after = _snapshot(small)
    assert (after["X"] != before["X"]).nnz == 0
    assert (after["layers"]["counts"] != before["layers"]["counts"]).nnz == 0
    np.testing.assert_array_equal(after["obsm"]["X_pca"], before["obsm"]["X_pca"])
    pd.testing.assert_frame_equal(after["obs"].drop(columns="deepbid_cluster"), before["obs"])
    pd.testing.assert_frame_equal(after["var"].drop(columns="deepbid_gene"), before["var"])
    added = {"X_deepbid", "deepbid_membership", "deepbid_denoised"}
    assert set(after["obsm"]) == set(before["obsm"]) | added
    assert after["uns"] == before["uns"] | {"deepbid"}


def test_denoised_matrix_can_be_left_out(fitted):
    sub, out = fitted
    lean = deepbid.integrate(sub, "batch", n_clusters=3, copy=True, denoised=False, **FAST)
    assert set(lean.obsm) == set(out.obsm) - {"deepbid_denoised"}
    np.testing.assert_array_equal(lean.obsm["X_deepbid"], out.obsm["X_deepbid"])


def test_same_seed_same_result_and_save_load_roundtrip(small, tmp_path):
    a = DeepBID(n_clusters=3, seed=7, **FAST).fit(small, "batch")
    b = DeepBID(n_clusters=3, seed=7, **FAST).fit(small, "batch")
    np.testing.assert_array_equal(a.latent(), b.latent())
    np.testing.assert_array_equal(a.clusters(), b.clusters())
    np.testing.assert_array_equal(a.denoised(), b.denoised())
    a.save(tmp_path / "model.pt")
    loaded = DeepBID.load(tmp_path / "model.pt", device="cpu")
    np.testing.assert_allclose(loaded.latent(small), a.latent(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.clusters(small), a.clusters())


def test_new_cells_need_known_batches_and_genes(small, tmp_path):
    model = DeepBID(n_clusters=3, **FAST).fit(small, "batch")
    other = small.copy()
    other.obs["batch"] = "unseen"
    with pytest.raises(InputError, match="not seen in training"):
        model.latent(other)
    with pytest.raises(InputError, match="genes are missing"):
        model.latent(small[:, : small.n_vars // 2].copy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_clusters=1), "n_clusters must be an integer >= 2"),
        (dict(n_clusters=10_000), "more than the"),
        (dict(device="tpu"), "device"),
        (dict(device="cuda:0"), "CUDA"),
        (dict(device="cuda:99"), "CUDA"),
        (dict(input_dropout=1.0), "input_dropout must be in"),
        (dict(reestimate_at=0.0), "reestimate_at must be in"),
        (dict(seed="0"), "seed must be an integer"),
        (dict(seed=-1), "seed must be an integer in"),
        (dict(seed=2**32), "seed must be an integer in"),
        (dict(epochs=2.5), "epochs must be an integer or None"),
        (dict(batch_size=0), "batch_size must be in"),
        (dict(lr=0.0), "lr must be in"),
        (dict(final_mixture=1), "final_mixture must be True or False"),
        (dict(kappa2=-1.0), "kappa2 must be in"),
    ],
)
def test_bad_settings(small, kwargs, message):
    if kwargs.get("device") == "cuda:0":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is present")
    with pytest.raises(InputError, match=message):
        deepbid.integrate(small, "batch", copy=True, **{**FAST, **kwargs})


def test_unknown_transform_batch_is_refused_before_training(small, monkeypatch):
    monkeypatch.setattr(DeepBID, "fit", lambda *args, **kwargs: pytest.fail("training ran"))
    with pytest.raises(InputError, match=r"unknown batch\(es\) \['10x'\]"):
        deepbid.integrate(small, "batch", transform_batch="10x")
    with pytest.raises(InputError, match=r"unknown batch\(es\) \['7'\]"):
        deepbid.integrate(small, "batch", transform_batch=7)


def test_final_alignment_removes_batch_offsets_and_moves_nothing_else():
    """The final alignment takes each batch's offset out of its clusters in X_deepbid
    and moves nothing else: eq. 14's clusters and memberships and the denoised values
    are those of the same fit without it, and the batch share of the within-cluster
    variance, counted with the weights the offsets are measured with (each cell in
    its own hard cluster of eq. 14, each batch with its trust), all but vanishes."""
    adata = deepbid.datasets.mixology_3cl()
    models = {
        on: DeepBID(n_clusters=3, seed=0, final_alignment=on, final_mixture=False, **FAST).fit(
            adata, "batch"
        )
        for on in (False, True)
    }
    np.testing.assert_array_equal(models[True].clusters(), models[False].clusters())
    np.testing.assert_array_equal(models[True].membership(), models[False].membership())
    np.testing.assert_array_equal(models[True].denoised(), models[False].denoised())
    batch = adata.obs["batch"].astype(str).to_numpy()
    batch_codes = torch.as_tensor(np.unique(batch, return_inverse=True)[1])
    codes = torch.from_numpy(models[False].latent())  # the same training, not aligned
    q = models[True]._memberships(codes).float()
    own = q * torch.nn.functional.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)

    def batch_share(latent):
        h = torch.from_numpy(latent)
        sums, counts = mixing.batch_cluster_sums(h, own, batch_codes, 2)
        # w n ||m_Bk - m_k||^2 with the offsets w (m_Bk - m_k) the alignment removes
        offsets = mixing.batch_offsets(sums, counts)
        trust = mixing.batch_trust(counts).clamp_min(1e-12)
        between = (counts * offsets.pow(2).sum(dim=2) / trust).sum()
        spread = ((h[:, None, :] - cluster.centres(h, own)[None]) ** 2).sum(2).mul(own).sum()
        return float(between / spread)

    # without the scaling, which reshapes each batch's cloud about its centroid: 0.001
    # to 0.016 of the share before over six seeds of this small network
    after = copy.copy(models[True])
    after.settings = dataclasses.replace(after.settings, final_scaling=False)
    assert batch_share(after.latent()) < 0.05 * batch_share(models[False].latent())
    # the scaling reshapes the embedding alone: batch-corrected decoding starts from
    # the codes with the offsets removed, with or without it
    assert not np.array_equal(after.latent(), models[True].latent())
    np.testing.assert_array_equal(
        after.denoised(transform_batch="average"),
        models[True].denoised(transform_batch="average"),
    )


def test_final_mixture_assigns_the_embedding_users_get(small):
    """With ``final_mixture`` (the default) the memberships are the posteriors of the
    mixture fitted on ``X_deepbid``, for the training cells and for cells passed in
    again; without it they are eq. 14 on the codes, from the same training."""
    model = DeepBID(n_clusters=3, seed=0, **FAST).fit(small, "batch")
    z = torch.from_numpy(model.latent())
    posteriors = cluster.mixture_posteriors(z, model.mixture).numpy()
    np.testing.assert_allclose(model.membership(), posteriors, atol=1e-6)
    np.testing.assert_array_equal(model.clusters(), posteriors.argmax(axis=1))
    np.testing.assert_array_equal(model.clusters(small), model.clusters())
    assert model.settings_dict()["mixture_variance"] == model.mixture.variance > 0
    plain = DeepBID(n_clusters=3, seed=0, final_mixture=False, **FAST).fit(small, "batch")
    assert plain.mixture is None
    np.testing.assert_array_equal(plain.latent(), model.latent())
    codes = torch.from_numpy(plain._codes(plain.train_view))
    np.testing.assert_array_equal(
        plain.clusters(), plain._memberships(codes).numpy().argmax(axis=1)
    )


def test_without_denoised_values_the_decoder_phase_is_skipped_and_nothing_else_moves(small):
    """``denoised=False`` skips the decoder phase, which trains the decoder alone for
    the denoised values: every other output is that of the fit with it."""
    settings = {k: v for k, v in FAST.items() if k != "decoder_epochs"}
    runs = {
        on: deepbid.integrate(small, "batch", copy=True, denoised=on, **settings)
        for on in (False, True)
    }
    phases = {on: runs[on].uns["deepbid"]["history"].keys() for on in runs}
    assert "decoder" in phases[True] and "decoder" not in phases[False]
    assert runs[False].uns["deepbid"]["settings"]["decoder_epochs"] == 0
    assert "deepbid_denoised" not in runs[False].obsm
    for key in ("X_deepbid", "deepbid_membership"):
        np.testing.assert_array_equal(runs[False].obsm[key], runs[True].obsm[key])
    assert runs[False].obs["deepbid_cluster"].equals(runs[True].obs["deepbid_cluster"])
    # given explicitly, the phase runs without the denoised output too
    kept = deepbid.integrate(small, "batch", copy=True, denoised=False, **FAST)
    assert "decoder" in kept.uns["deepbid"]["history"]


def test_paper_preset_is_the_published_configuration(small, tmp_path):
    """``preset="paper"``: the paper's width, weights (in per-cell terms), start and
    epochs, eq. 14's clusters with no step after training; settings given beside it
    win; it needs K, as the paper does."""
    with pytest.raises(InputError, match="preset='paper' needs n_clusters"):
        DeepBID(preset="paper")
    with pytest.raises(InputError, match="unknown preset"):
        DeepBID(n_clusters=3, preset="scvi")
    fast = {k: v for k, v in FAST.items() if k not in ("latent_dim", "hidden_dim")}
    model = DeepBID(n_clusters=3, preset="paper", seed=0, **fast).fit(small, "batch")
    s = model.settings
    assert (s.latent_dim, s.hidden_dim, s.epochs) == (300, 500, FAST["epochs"])
    assert s.lambda1 == 5.0 and s.lambda2 == pytest.approx(0.01 / FAST["batch_size"])
    assert s.kappa1 == 0.01 and s.kappa2 == pytest.approx(100.0 * 3 / FAST["batch_size"])
    assert not (s.conditional_decoder or s.leiden_start or s.weighted_memberships)
    assert not (s.final_alignment or s.final_mixture or s.divide_multimodal)
    assert model.mixture is None and model.cluster_count == 3
    assert "kl_mix" in model.history["cluster"]
    # no step after training: the embedding is the codes, the clusters eq. 14's argmax
    codes = torch.from_numpy(model.latent())
    np.testing.assert_array_equal(model.clusters(), model._memberships(codes).argmax(1).numpy())
    assert model.settings_dict()["preset"] == "paper"
    model.save(tmp_path / "paper.pt")
    assert DeepBID.load(tmp_path / "paper.pt").settings == s
    # from 10,000 cells the paper's large-data rate and weights
    large = model._resolved_settings(20_000)
    assert (large.lr, large.lambda1) == (1e-5, 1.0)
    assert large.lambda2 == pytest.approx(1e-4 / FAST["batch_size"])
