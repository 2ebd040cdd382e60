"""Label transfer: annotate cells whose label is missing by spreading the known labels
over the neighbour graph of deepbid's embedding, and never into a cluster that holds
no labelled cell."""

from __future__ import annotations

from collections.abc import Collection

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.semi_supervised import LabelSpreading

from . import neighbors
from .errors import InputError

#: Label written where a cell's clusters hold no labelled cell.
UNASSIGNED = "unassigned"
#: Neighbours of each cell in the graph the labels spread over (scanpy's default).
NEIGHBOURS = 15
#: Share of a cell's label distribution that comes from its neighbours at each step of
#: the spreading (scikit-learn's default); the rest is its own given label (none where
#: unknown), so a given label outweighs its neighbourhood.
ALPHA = 0.2
#: Steps of the spreading; it converges well before on every benchmark file.
MAX_STEPS = 100


def cosine_knn_graph(x: np.ndarray, y: np.ndarray | None = None) -> sp.csr_matrix:
    """Symmetric unweighted adjacency ``(n, n)`` linking each of the ``(n, d)`` rows of
    ``x`` to its :data:`NEIGHBOURS` nearest rows by angle.

    The angle rather than the Euclidean distance: the length of the embedding's vectors
    varies inside a type (on the pancreas its 10-90 % range is 8.0-10.5), and a 15-NN
    vote in deepbid's embedding labels 92.5 % of the hidden pancreas cells right by
    distance, 94.6 % by angle (``benchmarks/label_transfer.py``). ``y`` is unused:
    scikit-learn's kernel signature.
    """
    unit = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    idx, _ = neighbors.knn(unit, NEIGHBOURS + 1)
    n, k = idx.shape
    return neighbors.adjacency(np.repeat(np.arange(n), k), idx.ravel(), n)


def known_labels(
    adata: ad.AnnData,
    label_key: str,
    unknown: Collection[object] = ("unknown", "unID", np.nan),
) -> np.ndarray:
    """``(n_obs,)`` boolean: the cells whose ``obs[label_key]`` holds a label, neither
    missing nor one of ``unknown`` (``nan`` matches missing values).

    Raises
    ------
    InputError
        When ``label_key`` is not a column of ``adata.obs``, or no cell is labelled.
    """
    if label_key not in adata.obs.columns:
        have = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"label_key {label_key!r} not found in adata.obs (columns: {have})")
    column = adata.obs[label_key]
    names = [u for u in unknown if not (isinstance(u, float) and np.isnan(u))]
    given = ~column.isna().to_numpy() & ~column.astype(str).isin([str(u) for u in names]).to_numpy()
    if not given.any():
        raise InputError(
            f"no cell has a known label in adata.obs[{label_key!r}] (unknown values: "
            f"{list(unknown)})"
        )
    return given


def transfer_labels(
    adata: ad.AnnData,
    label_key: str,
    unknown: Collection[object] = ("unknown", "unID", np.nan),
    *,
    key: str = "deepbid",
) -> pd.DataFrame:
    """Label the cells whose ``obs[label_key]`` is missing or unknown.

    The known labels spread over the graph linking each integrated cell to its 15
    nearest cells by angle in ``obsm[f"X_{key}"]`` (label spreading, Zhou et al. 2004,
    by :class:`sklearn.semi_supervised.LabelSpreading` with ``alpha=0.2``): each cell
    ends with a distribution ``f_j`` over the labels. deepbid's clusters then keep the
    spreading from guessing: the share ``u_j = sum_k P_jk [cluster k holds no labelled
    cell]`` of a cell's membership goes to ``"unassigned"`` and the rest to ``f_j``.
    The label is the best of ``[(1 - u_j) f_j, u_j]`` and the confidence its score.

    Parameters
    ----------
    adata
        Integrated by :func:`deepbid.integrate` (reads ``obsm[f"X_{key}"]`` and
        ``obsm[f"{key}_membership"]``).
    label_key
        Column of ``adata.obs`` with the known labels.
    unknown
        Values that mean "no label" (``nan`` matches missing values).
    key
        The ``key_added`` of the integration.

    Returns
    -------
    pandas.DataFrame
        The ``(K, n_labels)`` label shares of the clusters,
        ``q_kl = sum_i P_ik [l_i = l] / sum_i P_ik`` over the labelled cells (rows of
        clusters without labelled cells are zero). Writes ``obs[f"{label_key}_{key}"]``
        (categorical: given labels kept, the others transferred or ``"unassigned"``)
        and ``obs[f"{label_key}_{key}_confidence"]`` (NaN where the label was given).

    Raises
    ------
    InputError
        When the integration's results or ``label_key`` are missing, or no cell is
        labelled.
    """
    for where in (f"X_{key}", f"{key}_membership"):
        if where not in adata.obsm:
            raise InputError(
                f"adata.obsm[{where!r}] not found: run deepbid.integrate(adata, ...) first"
                + ("" if key == "deepbid" else f" with key_added={key!r}")
            )
    given = known_labels(adata, label_key, unknown)
    column = adata.obs[label_key]
    p = np.asarray(adata.obsm[f"{key}_membership"], dtype=np.float64)
    z = np.asarray(adata.obsm[f"X_{key}"], dtype=np.float64)
    integrated = np.isfinite(p).all(axis=1) & np.isfinite(z).all(axis=1)
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

    codes = np.full(adata.n_obs, -1)
    codes[source] = labels.codes
    spreading = LabelSpreading(kernel=cosine_knn_graph, alpha=ALPHA, max_iter=MAX_STEPS)
    spread = spreading.fit(z[integrated], codes[integrated]).label_distributions_
    targets = ~given & integrated
    # a cell with no path to a labelled cell keeps an empty (zero or NaN) distribution
    spread = np.nan_to_num(spread[targets[integrated]])
    unassigned = p[targets][:, ~held].sum(axis=1)
    unassigned = np.where(spread.any(axis=1), unassigned, 1.0)
    scores = np.column_stack([(1 - unassigned)[:, None] * spread, unassigned])
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
