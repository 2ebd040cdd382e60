"""Data shipped with deepbid (no download ever happens at run time)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import as_file, files

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def mixology_3cl() -> ad.AnnData:
    """CellBench sc_mixology: 499 cells of 3 lung cancer cell lines, 2 protocols.

    Raw UMI counts in ``X``; ``obs['batch']`` is the protocol (CEL-seq2,
    Drop-seq), ``obs['cell_type']`` the cell line. Provenance and licence:
    ``datasets/README.md`` in the package (Tian et al. 2019, GEO GSE118767, MIT).

    Returns
    -------
    anndata.AnnData
        ``(499, n_genes)``, a fresh copy read from the package at each call.

    Raises
    ------
    OSError
        When the packaged file is missing or unreadable (a broken installation).
    """
    with as_file(files(__name__) / "sc_mixology_3cl.h5ad") as path:
        return ad.read_h5ad(path)


def simulate(
    n_cells: int = 2000,
    n_genes: int = 2000,
    n_batches: int = 3,
    n_types: int = 5,
    *,
    type_shares: Sequence[float] | None = None,
    batch_specific: int = 0,
    close_pairs: int = 0,
    close_difference: float = 0.3,
    families: int = 0,
    family_difference: float = 0.3,
    mixtures: Sequence[Sequence[float]] | None = None,
    de_fraction: float = 0.1,
    de_strength: float = 1.5,
    batch_strength: float = 0.2,
    dispersion: float = 2.0,
    seed: int = 0,
    chunk: int = 10_000,
    true_means: bool = False,
) -> ad.AnnData:
    """Negative-binomial counts with known cell types and batch effects.

    Each cell type changes a random ``de_fraction`` of genes by log-fold changes
    drawn from ``N(0, de_strength)``; each batch scales every gene by
    ``exp(N(0, batch_strength))`` and shifts library sizes; cell-type proportions
    differ between batches. Counts are gamma-Poisson (NB) with dispersion
    ``dispersion``. Generated ``chunk`` cells at a time, so memory grows with the
    non-zero counts, not with cells x genes.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix.
    n_batches, n_types
        Number of batches and of cell types.
    type_shares
        Overall share of each of the ``n_types`` types (e.g. one type holding half
        the cells and several rare ones); each batch draws its own mix around it
        (Dirichlet with concentration ``50 * share``). ``None``: every batch draws
        its mix from a flat Dirichlet(2).
    batch_specific
        The last ``batch_specific`` types each exist in one batch only (type
        ``n_types - 1 - i`` in batch ``i mod n_batches``), as a cell population
        that only one donor or protocol captured.
    close_pairs
        The first ``2 * close_pairs`` types come in pairs whose second member is
        the first plus a small difference: changes on ``de_fraction`` of genes of
        ``close_difference`` times the usual strength (like the RNA mixtures of
        CellBench, where groups differ by a fraction of their profile).
    close_difference
        Strength of a close pair's difference, as a share of ``de_strength``.
    families
        The types fall into this many families (type ``t`` in family
        ``t * families // n_types``): every type of a family shares its family's
        changes (drawn as a type's are), and its own changes (close pairs included)
        are scaled by ``family_difference``, so the families lie far apart and their
        types close together (endocrine against exocrine pancreas cells).
    family_difference
        Scale of each type's own changes within its family.
    mixtures
        Mixing weights ``(n_types, n_sources)``: type ``t`` is RNA pooled from
        ``n_sources`` pure populations (drawn as types are) in the proportions of row
        ``t``, so its expression profile is that mix of theirs, as in CellBench's
        RNA mixtures of three cell lines (the pure lines and mixes such as 68:16:16
        and 1:1:1). Rows are scaled to sum to 1. Not combined with ``close_pairs``
        or ``families``.
    de_fraction, de_strength
        Share of genes a type changes, and the sd of its log-fold changes.
    batch_strength
        Sd of each batch's log scale of every gene (the batch effect).
    dispersion
        NB dispersion ``theta`` of every count (variance ``mu + mu^2 / theta``).
    seed
        Seeds every draw: the same seed gives the same data.
    chunk
        Cells generated at a time, which bounds memory; the counts are drawn chunk by
        chunk, so another ``chunk`` draws other counts from the same means.
    true_means
        Also store ``layers['true_mean']``, the NB mean every count was drawn from
        (dense, so ``n_cells * n_genes * 4`` bytes). The counts and everything else
        are the same with or without it, for the same ``seed``.

    Returns
    -------
    anndata.AnnData
        ``(n_cells, n_genes)``:

        - ``X``: CSR float32 counts;
        - ``obs['batch']``, ``obs['cell_type']``: categorical ``"batch<b>"``, ``"type<t>"``;
        - ``obs['library']``: float64 ``(n_cells,)``, the expected library size of each
          cell (the sum of its true means; its counts sum to about this);
        - ``uns['simulate']``: the generating parameters, a dict of
          ``type_log_profile``, float32 ``(n_types, n_genes)``, the log expression of
          each type before the batch effect (base profile plus the type's changes);
          ``batch_log_scale``, float32 ``(n_batches, n_genes)``, each batch's log scale
          of every gene; and ``dispersion``. The true mean of cell ``i`` of type ``t``
          in batch ``b`` is
          ``softmax(type_log_profile[t] + batch_log_scale[b]) * library[i]``, and
          ``softmax(type_log_profile[t])`` its batch-free expression profile;
        - ``layers['true_mean']`` (only with ``true_means=True``): dense float32
          ``(n_cells, n_genes)``, the NB mean of every count, batch effect included.

    Raises
    ------
    ValueError
        When ``mixtures`` are not ``n_types`` rows of non-negative weights, or are
        combined with ``close_pairs`` or ``families``.
    """
    if mixtures is not None:
        weights = _mixture_weights(mixtures, n_types, close_pairs or families)
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 2.0, n_genes)

    def changes(strength: float, rows: int = n_types) -> np.ndarray:
        return (rng.random((rows, n_genes)) < de_fraction) * rng.normal(
            0, strength, (rows, n_genes)
        )

    if mixtures is None:
        de = changes(de_strength)
    else:
        de = _mixed_changes(base, changes(de_strength, weights.shape[1]), weights)
    if close_pairs:
        near = changes(de_strength * close_difference)
        for i in range(close_pairs):
            de[2 * i + 1] = de[2 * i] + near[2 * i + 1]
    if families:
        family = changes(de_strength)[:families]
        de = family[np.arange(n_types) * families // n_types] + family_difference * de
    batch_scale = rng.normal(0, batch_strength, (n_batches, n_genes))
    library_shift = rng.normal(0, 0.3, n_batches)
    type_share = _type_shares(rng, n_types, n_batches, type_shares, batch_specific)
    batch = rng.integers(0, n_batches, n_cells)
    cell_type = np.array([rng.choice(n_types, p=type_share[b]) for b in batch])
    library = np.exp(rng.normal(np.log(3000) + library_shift[batch], 0.4))
    logits = (base + de, batch_scale)
    counts, means = _draw_counts(
        rng, logits, cell_type, batch, library, dispersion, chunk, true_means
    )
    adata = _named(counts, batch, cell_type, library, means)
    adata.uns["simulate"] = {
        "type_log_profile": (base + de).astype(np.float32),
        "batch_log_scale": batch_scale.astype(np.float32),
        "dispersion": float(dispersion),
    }
    return adata


def _named(
    counts: sp.csr_matrix,
    batch: np.ndarray,
    cell_type: np.ndarray,
    library: np.ndarray,
    means: np.ndarray | None,
) -> ad.AnnData:
    """The AnnData of ``counts`` ``(n_cells, n_genes)``: cells and genes named, each
    cell's batch, type and expected library in ``obs``, the true means (if any) in a
    layer."""
    adata = ad.AnnData(counts)
    adata.obs_names = [f"cell{i}" for i in range(counts.shape[0])]
    adata.var_names = [f"gene{j}" for j in range(counts.shape[1])]
    adata.obs["batch"] = pd.Categorical([f"batch{b}" for b in batch])
    adata.obs["cell_type"] = pd.Categorical([f"type{t}" for t in cell_type])
    adata.obs["library"] = library
    if means is not None:
        adata.layers["true_mean"] = means
    return adata


def _mixture_weights(mixtures: Sequence[Sequence[float]], n_types: int, nested: bool) -> np.ndarray:
    """``(n_types, n_sources)`` weights of each type's RNA sources, rows summing to 1;
    ``ValueError`` for a bad shape, a negative weight, or ``nested`` types beside them."""
    weights = np.asarray(mixtures, dtype=float)
    if weights.ndim != 2 or weights.shape[0] != n_types or (weights < 0).any():
        raise ValueError(f"mixtures must be {n_types} rows of non-negative weights")
    if nested:
        raise ValueError("mixtures are not combined with close_pairs or families")
    return weights / weights.sum(axis=1, keepdims=True)


def _type_shares(
    rng: np.random.Generator,
    n_types: int,
    n_batches: int,
    type_shares: Sequence[float] | None,
    batch_specific: int,
) -> np.ndarray:
    """Each batch's share of each type ``(n_batches, n_types)``: Dirichlet draws around
    ``type_shares`` (``None``: even), the last ``batch_specific`` types held by one
    batch each."""
    if type_shares is None:
        share = rng.dirichlet(np.full(n_types, 2.0), size=n_batches)
    else:
        shares = np.asarray(type_shares, dtype=float)
        share = rng.dirichlet(50 * shares / shares.sum(), size=n_batches)
    for i in range(batch_specific):
        kind = n_types - 1 - i
        only = i % n_batches
        share[:, kind] = np.where(np.arange(n_batches) == only, share[:, kind], 0)
    return share / share.sum(axis=1, keepdims=True)


def _mixed_changes(base: np.ndarray, sources: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Log changes ``(n_types, n_genes)`` of pooled RNA: each type's profile is its
    ``weights`` ``(n_types, n_sources)`` mix of the sources' expression profiles (base
    ``(n_genes,)`` plus each source's changes ``(n_sources, n_genes)``); pooling adds
    expression, not log expression."""
    source = base + sources
    pure = np.exp(source - source.max(axis=1, keepdims=True))
    pure /= pure.sum(axis=1, keepdims=True)
    return np.log(weights @ pure) - base


def _draw_counts(
    rng: np.random.Generator,
    logits: tuple[np.ndarray, np.ndarray],
    cell_type: np.ndarray,
    batch: np.ndarray,
    library: np.ndarray,
    dispersion: float,
    chunk: int,
    keep_means: bool,
) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """NB counts, CSR float32 ``(n_cells, n_genes)``, and with ``keep_means`` their dense
    float32 means (else ``None``), drawn ``chunk`` cells at a time. ``logits`` are the
    types' log profiles ``(n_types, n_genes)`` and the batches' log scales
    ``(n_batches, n_genes)``; ``cell_type``, ``batch`` and ``library`` are per cell."""
    profiles, scales = logits
    blocks, means = [], []
    for start in range(0, len(batch), chunk):
        rows = slice(start, min(start + chunk, len(batch)))
        logit = profiles[cell_type[rows]] + scales[batch[rows]]
        profile = np.exp(logit - logit.max(axis=1, keepdims=True))
        mean = profile / profile.sum(axis=1, keepdims=True) * library[rows, None]
        counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
        if keep_means:
            means.append(mean.astype(np.float32))
    return sp.vstack(blocks, format="csr"), np.vstack(means) if keep_means else None
