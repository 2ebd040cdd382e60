"""Marker genes of deepbid clusters, and their comparison with a reference annotation.

The paper's application (its Fig. 6f): rank genes per integrated cluster, map
clusters one-to-one onto the authors' cell types, and ask which markers each
cluster shares with its cell type and which are new.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy.optimize import linear_sum_assignment

from .data import TARGET_SUM, get_matrix
from .errors import InputError


def log_normalised(adata: ad.AnnData, layer: str | None = None) -> ad.AnnData:
    """A new AnnData (same cells, genes and ``obs``) of ``log1p`` counts per 10^4.

    Cells with zero counts are left out.
    """
    counts = get_matrix(adata, layer)
    library = np.asarray(counts.sum(axis=1)).ravel()
    keep = library > 0
    out = ad.AnnData(counts[keep], obs=adata.obs.iloc[keep].copy(), var=adata.var[[]].copy())
    sc.pp.normalize_total(out, target_sum=TARGET_SUM)
    sc.pp.log1p(out)
    return out


def _rank(data: ad.AnnData, groupby: str, n_genes: int) -> dict[str, list[str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(data, groupby, method="wilcoxon", reference="rest")
    names = pd.DataFrame(data.uns["rank_genes_groups"]["names"])
    return {str(group): list(names[group][:n_genes]) for group in names.columns}


def markers(
    adata: ad.AnnData,
    groupby: str = "deepbid_cluster",
    *,
    layer: str | None = None,
    label_key: str | None = None,
    n_genes: int = 25,
    key_added: str = "rank_genes_groups",
    cells: np.ndarray | None = None,
) -> pd.DataFrame | None:
    """Rank marker genes per cluster (Wilcoxon, one vs rest, on log-normalised counts).

    The ranking is stored in ``adata.uns[key_added]``, where scanpy's
    ``sc.pl.rank_genes_groups*`` functions find it (plot with a log-normalised
    ``layer`` or copy of the data).

    Parameters
    ----------
    adata
        Annotated by :func:`deepbid.integrate` (or any categorical ``groupby``);
        raw counts in ``X`` or ``layers[layer]``.
    groupby
        Column of ``obs`` with the clusters.
    layer
        Layer with the raw counts; ``None`` reads ``X``.
    label_key
        Column of ``obs`` with a reference annotation: enables the comparison.
    n_genes
        Markers per group compared with the reference's.
    key_added
        ``uns`` key of the ranking.
    cells
        Indices of the cells whose genes are ranked (a sample, on large data; ``None``:
        all); the contingency table counts every cell.

    Returns
    -------
    pandas.DataFrame or None
        With ``label_key``, one row per cluster: ``n_cells``, the reference label it
        is matched to one-to-one (Hungarian assignment on the contingency table,
        empty for clusters left unmatched), ``matched_cells``, ``shared_markers``
        (in both top lists) and ``new_markers`` (the cluster's only). The
        contingency table is stored in ``adata.uns["deepbid_contingency"]`` and
        this table in ``adata.uns["deepbid_markers"]``. ``None`` without
        ``label_key``.

    Raises
    ------
    InputError
        When ``groupby`` or ``label_key`` is not a column of ``adata.obs``.
    """
    for key in (groupby, label_key):
        if key is not None and key not in adata.obs.columns:
            raise InputError(f"{key!r} not found in adata.obs; run deepbid.integrate first?")
    chosen = adata if cells is None else adata[cells]
    data = log_normalised(chosen.to_memory() if chosen.isbacked else chosen, layer)
    data = data[data.obs[groupby].notna().to_numpy()].copy()
    data.obs[groupby] = data.obs[groupby].astype(str).astype("category")
    cluster_markers = _rank(data, groupby, n_genes)
    adata.uns[key_added] = data.uns["rank_genes_groups"]
    if label_key is None:
        return None
    data.obs[label_key] = data.obs[label_key].astype(str).astype("category")
    label_markers = _rank(data, label_key, n_genes)
    obs = adata.obs[adata.obs[groupby].notna()]
    contingency = pd.crosstab(obs[groupby].astype(str), obs[label_key].astype(str))
    contingency.index = contingency.index.astype(str).rename("cluster")
    contingency.columns = contingency.columns.astype(str).rename(label_key)
    table = compare(contingency, cluster_markers, label_markers)
    adata.uns["deepbid_contingency"] = contingency
    adata.uns["deepbid_markers"] = table
    return table


def compare(
    contingency: pd.DataFrame,
    cluster_markers: dict[str, list[str]],
    label_markers: dict[str, list[str]],
) -> pd.DataFrame:
    """Match clusters (rows of ``contingency``) to labels (columns) one-to-one, maximising
    the cells they share, and compare each matched pair's marker lists."""
    rows, cols = linear_sum_assignment(-contingency.to_numpy())
    match = {contingency.index[r]: contingency.columns[c] for r, c in zip(rows, cols, strict=True)}
    records = []
    for cluster in contingency.index:
        label = match.get(cluster)
        ours = cluster_markers[str(cluster)]
        theirs = set(label_markers[str(label)]) if label is not None else set()
        records.append(
            {
                "cluster": str(cluster),
                "n_cells": int(contingency.loc[cluster].sum()),
                "matched_label": "" if label is None else str(label),
                "matched_cells": 0 if label is None else int(contingency.loc[cluster, label]),
                "shared_markers": ", ".join(g for g in ours if g in theirs),
                "new_markers": ", ".join(g for g in ours if g not in theirs),
            }
        )
    return pd.DataFrame(records).set_index("cluster")
