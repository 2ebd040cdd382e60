"""The AnnData-facing function: ``deepbid.integrate``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .data import batch_labels
from .errors import InputError, InputWarning
from .model import DeepBID, batch_positions

#: Keys ``integrate`` writes (``key`` is ``key_added``, default ``"deepbid"``).
OUTPUT_KEYS = {
    "obsm['X_{key}']": "integrated latent embedding, cells x latent_dim",
    "obs['{key}_cluster']": "hard cluster labels (categorical '0'..'K-1')",
    "obsm['{key}_membership']": "soft assignments P, cells x K (rows sum to 1)",
    "obsm['{key}_denoised']": "batch-corrected denoised expression, cells x genes used "
    "(DataFrame with gene columns): the NB mean averaged over decoding in every batch, in "
    "counts at the median library size; by default only up to 10^8 values (cells x genes), "
    "never with denoised=False",
    "var['{key}_gene']": "whether each gene was used by the model",
    "uns['{key}']": "settings, genes, batches, K estimation and per-epoch loss history",
}


#: Most values (cells x genes used) of the denoised matrix written by default: 10^8
#: float32 values are 400 MB, e.g. 50,000 cells x 2,000 genes.
DENOISED_MAX_VALUES = 100_000_000


def _denoised_fits(n_cells: int, n_genes: int) -> bool:
    if n_cells * n_genes <= DENOISED_MAX_VALUES:
        return True
    gigabytes = 4 * n_cells * n_genes / 1e9
    warnings.warn(
        f"the denoised matrix ({n_cells:,} cells x {n_genes:,} genes, {gigabytes:.1f} GB) is "
        f"not written by default above {DENOISED_MAX_VALUES:.0e} values; pass denoised=True "
        "(CLI: --denoised) to write it, or fit a deepbid.DeepBID and call "
        "model.denoised(adata[start:stop]) for the cells you need",
        InputWarning,
        stacklevel=3,
    )
    return False


def integrate(
    adata: ad.AnnData,
    batch_key: str = "batch",
    *,
    layer: str | None = None,
    n_clusters: int | None = None,
    preset: str | None = None,
    genes: Sequence[str] | None = None,
    seed: int = 0,
    device: str = "auto",
    copy: bool = False,
    key_added: str = "deepbid",
    progress: bool = True,
    denoised: bool | None = None,
    transform_batch: str | Sequence[str] | None = "average",
    **model_kwargs: Any,
) -> ad.AnnData | None:
    """Integrate batches, cluster and denoise the cells of ``adata`` with DeepBID.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` (or ``layers[layer]``), dense or sparse.
    batch_key
        Column of ``adata.obs`` naming each cell's batch (strings or numbers).
    layer
        Layer holding the raw counts; ``None`` reads ``X``.
    n_clusters
        Number of clusters; ``None`` estimates it (the K rule of
        :mod:`deepbid.k_estimate`, then clusters with two modes divided;
        ``uns[key_added]["k_estimation"]`` reports both).
    preset
        ``"paper"``: the published method's configuration (needs ``n_clusters``; see
        :func:`deepbid.settings.paper_settings`); ``None``: deepbid's defaults.
    genes
        Train on exactly these genes instead of the per-batch HVG union.
    seed
        Random seed; the same seed gives the same result on one machine, on the CPU and on
        CUDA (see :class:`~deepbid.DeepBID`).
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    copy
        Return an annotated copy instead of annotating ``adata`` in place.
    key_added
        Prefix of the keys written (see :data:`OUTPUT_KEYS`).
    progress
        Show a progress bar.
    denoised
        Write the denoised matrix, the one dense cells x genes output (at 10^6
        cells and 2,000 genes, 8 GB): ``None`` writes it up to
        :data:`DENOISED_MAX_VALUES` values and otherwise says how to get it; ``True``
        always; ``False`` never, and skips the decoder phase (``decoder_epochs=0``
        unless given), which trains the decoder alone for the denoised values.
    transform_batch
        Batch(es) every cell is decoded in for the denoised matrix: ``"average"`` (the
        mean over all batches: the batch effect removed), one batch name, or ``None``
        (each cell in its own batch, the batch effect kept); see
        :meth:`DeepBID.denoised`.
    **model_kwargs
        Further settings of :class:`~deepbid.DeepBID` (``epochs``, ``kappa2``, ...).

    Returns
    -------
    The annotated copy when ``copy=True``, else ``None``. Only new keys are
    written; nothing of the input is changed. Cells with zero counts get NaN
    embeddings and no cluster.

    Raises
    ------
    InputError
        For input that cannot be integrated, before any training.
    """
    if not isinstance(adata, ad.AnnData):
        raise InputError(f"expected an AnnData object, got {type(adata).__name__}")
    if copy and adata.isbacked:
        raise InputError(
            "copy=True needs the whole AnnData in memory, and this one is backed on disk: "
            "integrate it in place (copy=False: results go into its obs/obsm/uns in memory; "
            "save them with adata.write_h5ad(new_path)) or load it with adata.to_memory()"
        )
    if transform_batch is not None:
        # checked before training, which takes long, not when the matrix is decoded
        batch_positions(transform_batch, list(batch_labels(adata, batch_key).categories))
    if denoised is False:
        # the decoder phase trains the decoder alone, for the denoised values: without
        # them it changes no output (embedding, clusters and memberships are the same)
        model_kwargs.setdefault("decoder_epochs", 0)
    model = DeepBID(
        n_clusters=n_clusters,
        preset=preset,
        seed=seed,
        device=device,
        progress=progress,
        **model_kwargs,
    )
    model.fit(adata, batch_key, layer=layer, genes=genes)
    target = adata.copy() if copy else adata
    write_results(target, model, key_added, denoised=denoised, transform_batch=transform_batch)
    return target if copy else None


def write_results(
    adata: ad.AnnData,
    model: DeepBID,
    key: str = "deepbid",
    *,
    denoised: bool | None = None,
    transform_batch: str | Sequence[str] | None = "average",
) -> None:
    """Write a model's results for the cells of ``adata`` (see :data:`OUTPUT_KEYS`).

    Parameters
    ----------
    adata
        The data the model was fitted (or mapped) on; for a loaded model, any cells
        with its genes and batches, which are embedded afresh. Written in place.
    model
        A fitted, mapped or loaded :class:`~deepbid.DeepBID`.
    key
        Prefix of the keys written (``key_added`` of :func:`integrate`).
    denoised, transform_batch
        As in :func:`integrate`.

    Raises
    ------
    InputError
        When ``adata`` does not hold the cells the model was fitted on.
    """
    data = None if model.train_view is not None else adata
    if data is None and model.train_view.cells.size != adata.n_obs:
        raise InputError(
            f"the model was fitted on {model.train_view.cells.size} cells, adata has "
            f"{adata.n_obs}; write results into the AnnData it was fitted on"
        )
    labels = model.clusters(data)
    n_clusters = model.cluster_count
    adata.obsm[f"X_{key}"] = model.latent(data)
    adata.obsm[f"{key}_membership"] = model.membership(data)
    adata.obs[f"{key}_cluster"] = pd.Categorical.from_codes(
        labels, categories=[str(c) for c in range(n_clusters)]
    )
    if denoised is None:
        denoised = _denoised_fits(adata.n_obs, len(model.genes))
    if denoised:
        adata.obsm[f"{key}_denoised"] = pd.DataFrame(
            model.denoised(data, transform_batch=transform_batch),
            index=adata.obs_names,
            columns=model.genes,
        )
    adata.var[f"{key}_gene"] = adata.var_names.isin(model.genes)
    adata.uns[key] = {
        "settings": model.settings_dict(),
        "denoised_transform_batch": str(transform_batch) if denoised else "none",
        "genes": np.asarray(model.genes, dtype=object),
        "batches": np.asarray(model.batch_categories, dtype=object),
        "k_estimation": {
            stage: {k: np.asarray(v) for k, v in report.items()}
            for stage, report in model.k_estimate.items()
        },
        "history": {
            phase: {term: np.asarray(v) for term, v in terms.items()}
            for phase, terms in model.history.items()
        },
    }
