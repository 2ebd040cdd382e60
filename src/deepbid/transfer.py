"""Label transfer: annotate cells whose label is missing from the labelled cells of their
clusters, weighted by deepbid's soft memberships."""

from __future__ import annotations

from collections.abc import Collection

import anndata as ad
import numpy as np
import pandas as pd

from .errors import InputError

#: Label written where a cell's clusters hold no labelled cell.
UNASSIGNED = "unassigned"


def transfer_labels(
    adata: ad.AnnData,
    label_key: str,
    unknown: Collection[object] = ("unknown", "unID", np.nan),
    *,
    key: str = "deepbid",
) -> pd.DataFrame:
    """Label the cells whose ``obs[label_key]`` is missing or unknown from their clusters.

    Each cluster ``k`` gets the label shares of its labelled cells, weighted by their
    memberships, ``q_kl = sum_i P_ik [l_i = l] / sum_i P_ik``; a cell ``j`` scores each
    label ``sum_k P_jk q_kl``, and clusters that hold no labelled cell (by hard
    assignment) put their membership on ``"unassigned"``. The best score is the label,
    and that score (the share of the cell's membership behind it) is the confidence.

    Parameters
    ----------
    adata
        Integrated by :func:`deepbid.integrate` (reads ``obsm[f"{key}_membership"]``).
    label_key
        Column of ``adata.obs`` with the known labels.
    unknown
        Values that mean "no label" (``nan`` matches missing values).
    key
        The ``key_added`` of the integration.

    Returns
    -------
    The ``(K, n_labels)`` label shares ``q`` of the clusters (rows of clusters without
    labelled cells are zero). Writes ``obs[f"{label_key}_{key}"]`` (categorical: given
    labels kept, the others transferred or ``"unassigned"``) and
    ``obs[f"{label_key}_{key}_confidence"]`` (NaN where the label was given).

    Raises
    ------
    InputError
        When the integration's memberships or ``label_key`` are missing, or no cell is
        labelled.
    """
    where = f"{key}_membership"
    if where not in adata.obsm:
        raise InputError(
            f"adata.obsm[{where!r}] not found: run deepbid.integrate(adata, ...) first"
            + ("" if key == "deepbid" else f" with key_added={key!r}")
        )
    if label_key not in adata.obs.columns:
        have = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"label_key {label_key!r} not found in adata.obs (columns: {have})")
    column = adata.obs[label_key]
    missing = column.isna().to_numpy()
    names = [u for u in unknown if not (isinstance(u, float) and np.isnan(u))]
    given = ~missing & ~column.astype(str).isin([str(u) for u in names]).to_numpy()
    p = np.asarray(adata.obsm[where], dtype=np.float64)
    integrated = np.isfinite(p).all(axis=1)
    source = given & integrated
    if not source.any():
        raise InputError(
            f"no integrated cell has a known label in adata.obs[{label_key!r}] "
            f"(unknown values: {list(unknown)})"
        )
    labels = pd.Categorical(column[source].astype(str))
    onehot = np.eye(len(labels.categories))[labels.codes]
    mass = p[source].T @ onehot
    held = np.bincount(p[source].argmax(axis=1), minlength=p.shape[1]) > 0
    shares = np.where(held[:, None], mass / mass.sum(axis=1, keepdims=True).clip(1e-300), 0.0)

    targets = ~given & integrated
    scores = np.column_stack([p[targets] @ shares, p[targets][:, ~held].sum(axis=1)])
    choices = [*labels.categories, UNASSIGNED]
    out = column.astype(object).where(given, UNASSIGNED).to_numpy(copy=True)
    out[targets] = np.asarray(choices, dtype=object)[scores.argmax(axis=1)]
    confidence = np.full(adata.n_obs, np.nan)
    confidence[targets] = scores.max(axis=1)
    adata.obs[f"{label_key}_{key}"] = pd.Categorical(out.astype(str))
    adata.obs[f"{label_key}_{key}_confidence"] = confidence
    clusters = [str(k) for k in range(p.shape[1])]
    return pd.DataFrame(shares, columns=labels.categories, index=clusters)


def transfer_summary(adata: ad.AnnData, label_key: str, key: str = "deepbid") -> pd.DataFrame:
    """Per label after :func:`transfer_labels`: cells that had it, cells given it, and
    their mean and lowest confidence (``"unassigned"`` included)."""
    confidence = adata.obs[f"{label_key}_{key}_confidence"]
    transferred = confidence.notna()
    result = adata.obs[f"{label_key}_{key}"].astype(str)
    table = pd.DataFrame(
        {
            "cells labelled": result[~transferred].value_counts(),
            "cells transferred": result[transferred].value_counts(),
            "mean confidence": confidence[transferred].groupby(result[transferred]).mean(),
            "lowest confidence": confidence[transferred].groupby(result[transferred]).min(),
        }
    )
    counts = ["cells labelled", "cells transferred"]
    table[counts] = table[counts].fillna(0).astype(int)
    return table.rename_axis(label_key)
