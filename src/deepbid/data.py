"""The data view: AnnData in, validated sparse matrices and batch codes out.

Every check on the user's input lives here and runs before any training, so a
bad file fails in seconds with an :class:`~deepbid.errors.InputError` that says
what to fix, never half-way through an optimisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from .errors import InputError, InputWarning

#: Fewest cells a batch may have: per-batch gene selection and the within-batch
#: KL term both need several cells of every batch.
MIN_CELLS_PER_BATCH = 5
#: The paper's per-cell normalisation target before ``log1p``.
TARGET_SUM = 1e4


@dataclass
class DataView:
    """The matrices the network trains on, for the selected genes only.

    Attributes
    ----------
    counts
        ``(n_cells, n_genes)`` CSR float32: NB target (raw counts, or rounded
        values for non-count input).
    logx
        ``(n_cells, n_genes)`` CSR float32: log-normalised encoder input.
    size_factors
        ``(n_cells,)`` float32: library size over median library size (1 for
        non-count input).
    batch_codes
        ``(n_cells,)`` int64 codes into ``batch_categories``.
    batch_categories
        Batch names, in code order.
    genes
        Names of the selected genes, in column order.
    cells
        ``(n_obs,)`` boolean mask of the AnnData's cells that are in the view.
    is_counts
        Whether the input held integer counts.
    median_library
        Median library size (over all genes) that size factors are relative to.
    """

    counts: sp.csr_matrix
    logx: sp.csr_matrix
    size_factors: np.ndarray
    batch_codes: np.ndarray
    batch_categories: list[str]
    genes: list[str]
    cells: np.ndarray
    is_counts: bool
    median_library: float

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories)

    def minibatches(
        self, batch_size: int, rng: np.random.Generator | None = None, n_used: int | None = None
    ) -> Iterator[np.ndarray]:
        """Yield row indices of minibatches; shuffled when ``rng`` is given.

        A last minibatch smaller than half ``batch_size`` is merged into the
        previous one, so that no step is driven by a handful of cells. Only the
        first ``n_used`` rows of the (shuffled) order are used when given, so
        that processes holding shards of unequal size take equally many steps.
        """
        order = rng.permutation(self.n_cells) if rng is not None else np.arange(self.n_cells)
        n = self.n_cells if n_used is None else n_used
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < batch_size // 2:
            starts.pop()
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n
            yield order[start:stop]

    def subset(self, rows: np.ndarray) -> DataView:
        """The view of cells ``rows`` only (same genes, batches and size-factor reference);
        ``cells`` is left as the whole view's."""
        return replace(
            self,
            counts=self.counts[rows],
            logx=self.logx[rows],
            size_factors=self.size_factors[rows],
            batch_codes=self.batch_codes[rows],
        )

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dense ``(logx, counts, size_factors, batch_codes)`` for the rows ``idx``."""
        return (
            self.logx[idx].toarray(),
            self.counts[idx].toarray(),
            self.size_factors[idx],
            self.batch_codes[idx],
        )


def check_anndata(adata: object) -> ad.AnnData:
    if not isinstance(adata, ad.AnnData):
        raise InputError(
            f"expected an AnnData object, got {type(adata).__name__}; "
            "read your file with anndata.read_h5ad or scanpy.read_h5ad first"
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(
            f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); "
            "check the file or the filtering that produced it"
        )
    if not adata.obs_names.is_unique:
        raise InputError(
            "cell names (obs_names) are not unique; call adata.obs_names_make_unique()"
        )
    if not adata.var_names.is_unique:
        raise InputError(
            "gene names (var_names) are not unique; call adata.var_names_make_unique()"
        )
    return adata


def get_matrix(adata: ad.AnnData, layer: str | None) -> np.ndarray | sp.spmatrix:
    """The expression matrix in ``adata.layers[layer]``, or ``adata.X``."""
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty; pass layer= naming the layer that holds counts")
        return adata.X
    if layer not in adata.layers:
        have = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise InputError(f"layer {layer!r} not found in adata.layers (layers present: {have})")
    return adata.layers[layer]


def _as_csr(matrix: np.ndarray | sp.spmatrix) -> sp.csr_matrix:
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, dtype=np.float32)
    else:
        try:
            out = sp.csr_matrix(np.asarray(matrix, dtype=np.float32))
        except (TypeError, ValueError) as err:
            raise InputError(f"the expression matrix is not numeric: {err}") from None
    out.sum_duplicates()
    return out


def check_values(matrix: sp.csr_matrix, where: str) -> bool:
    """Reject NaN, infinite and negative values; tell whether all are integers.

    Returns
    -------
    ``True`` when every value is a whole number (raw counts).
    """
    values = matrix.data
    if not np.all(np.isfinite(values)):
        n_bad = int(np.sum(~np.isfinite(values)))
        raise InputError(
            f"{where} holds {n_bad} NaN or infinite values; deepbid needs raw counts "
            "(fix or remove those entries, or pass layer= naming the raw-count layer)"
        )
    if values.size and values.min() < 0:
        raise InputError(
            f"{where} holds negative values (min {values.min():.3g}); deepbid needs raw "
            "counts, not scaled or centred data: pass layer= naming the raw-count layer"
        )
    return bool(np.all(values == np.round(values)))


def batch_labels(adata: ad.AnnData, batch_key: str) -> pd.Categorical:
    """Validated batch labels of ``adata`` as a pandas Categorical of strings."""
    if batch_key not in adata.obs.columns:
        have = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"batch_key {batch_key!r} not found in adata.obs (columns: {have})")
    column = adata.obs[batch_key]
    if column.isna().any():
        raise InputError(
            f"adata.obs[{batch_key!r}] has {int(column.isna().sum())} missing values; "
            "give every cell a batch"
        )
    return pd.Categorical(column.astype(str))


def _normalise(
    matrix: sp.csr_matrix, library: np.ndarray, is_counts: bool, median_library: float
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """``(logx, counts, size_factors)``: log1p of counts per 10^4, the NB target
    and library / ``median_library``; non-count input is used as it is, rounded
    for the NB target, with unit size factors (the paper's fallback)."""
    if is_counts:
        logx = sp.csr_matrix(sp.diags((TARGET_SUM / library).astype(np.float32)) @ matrix)
        logx.data = np.log1p(logx.data)
        return logx, matrix, (library / median_library).astype(np.float32)
    counts = matrix.copy()
    counts.data = np.round(counts.data)
    counts.eliminate_zeros()
    return matrix, counts, np.ones(matrix.shape[0], dtype=np.float32)


def _select_genes(
    logx: sp.csr_matrix,
    counts: sp.csr_matrix,
    codes: np.ndarray,
    n_top_genes: int,
    min_cells: int,
) -> np.ndarray:
    """The paper's gene selection: per batch, genes detected in ``min_cells``
    cells, top ``n_top_genes`` HVGs (Seurat dispersion) of the log data; union."""
    selected = np.zeros(logx.shape[1], dtype=bool)
    for code in np.unique(codes):
        rows = codes == code
        detected = np.asarray((counts[rows] > 0).sum(axis=0)).ravel() >= min_cells
        if detected.sum() < 2:
            continue
        sub = ad.AnnData(logx[rows][:, detected])
        n_top = min(n_top_genes, int(detected.sum()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hvg = sc.pp.highly_variable_genes(
                sub, n_top_genes=n_top, flavor="seurat", inplace=False
            )
        selected[np.flatnonzero(detected)[hvg["highly_variable"].to_numpy()]] = True
    return selected


def prepare(
    adata: ad.AnnData,
    batch_key: str,
    *,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    n_top_genes: int = 1000,
    min_cells: int = 3,
) -> DataView:
    """Validate ``adata`` and build the training view, selecting genes the paper's way.

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layers[layer]`` (dense or sparse).
    batch_key
        Column of ``adata.obs`` holding the batch of each cell.
    layer
        Layer holding the counts; ``None`` uses ``X``.
    genes
        Use exactly these genes instead of per-batch HVGs.
    n_top_genes
        HVGs taken per batch before the union.
    min_cells
        A gene must be detected in this many cells of a batch to be a candidate there.

    Raises
    ------
    InputError
        For every input deepbid cannot integrate; the message says what to fix.
    """
    adata = check_anndata(adata)
    labels = batch_labels(adata, batch_key)
    matrix = _as_csr(get_matrix(adata, layer))
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    is_counts = check_values(matrix, where)
    if not is_counts:
        warnings.warn(
            f"{where} holds non-integer values, so it is taken as log-normalised data: the "
            "encoder reads it as it is and the NB likelihood uses its rounded values (the "
            "paper's fallback). Pass raw counts (layer=...) for the statistically sound model.",
            InputWarning,
            stacklevel=3,
        )

    library = np.asarray(matrix.sum(axis=1)).ravel()
    cells = library > 0
    if not cells.all():
        warnings.warn(
            f"{int((~cells).sum())} cells have zero counts and are left out; their outputs "
            "are NaN. Remove them first with scanpy.pp.filter_cells(adata, min_counts=1).",
            InputWarning,
            stacklevel=3,
        )
    if not cells.any():
        raise InputError(f"every cell in {where} has zero counts")
    if not cells.all():  # row indexing copies the matrix: only when needed
        matrix, library, labels = matrix[cells], library[cells], labels[cells]
    codes = np.asarray(labels.codes, dtype=np.int64)
    categories = [str(c) for c in labels.categories]
    present = np.bincount(codes, minlength=len(categories))
    _check_batches(batch_key, categories, present)

    median_library = float(np.median(library)) if is_counts else 1.0
    logx, counts, size_factors = _normalise(matrix, library, is_counts, median_library)

    if genes is not None:
        keep = _gene_mask(adata.var_names, genes)
    else:
        keep = _select_genes(logx, counts, codes, n_top_genes, min_cells)
        if keep.sum() < 2:
            raise InputError(
                f"fewer than 2 genes are detected in {min_cells} cells of any batch; "
                "deepbid needs more genes or more cells per batch"
            )
    return DataView(
        counts=sp.csr_matrix(counts[:, keep], dtype=np.float32),
        logx=sp.csr_matrix(logx[:, keep], dtype=np.float32),
        size_factors=size_factors,
        batch_codes=codes,
        batch_categories=categories,
        genes=list(adata.var_names[keep]),
        cells=cells,
        is_counts=is_counts,
        median_library=median_library,
    )


def _check_batches(batch_key: str, categories: list[str], present: np.ndarray) -> None:
    if len(categories) < 2:
        raise InputError(
            f"adata.obs[{batch_key!r}] has a single batch ({categories[0]!r}); integration "
            "needs at least two. Check batch_key, or cluster a single batch with scanpy."
        )
    small = [
        f"{c!r} ({n} cells)"
        for c, n in zip(categories, present, strict=True)
        if n < MIN_CELLS_PER_BATCH
    ]
    if small:
        raise InputError(
            f"batches with fewer than {MIN_CELLS_PER_BATCH} cells: {', '.join(small)}; "
            "remove them or merge them into a larger batch"
        )


def _gene_mask(var_names: pd.Index, genes: Sequence[str]) -> np.ndarray:
    genes = list(genes)
    missing = [g for g in genes if g not in var_names]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{len(missing)} requested genes are not in adata.var_names: {shown}")
    if len(set(genes)) < 2:
        raise InputError("genes= must name at least 2 distinct genes")
    return var_names.isin(genes)


def prepare_like(
    adata: ad.AnnData,
    batch_key: str,
    genes: Sequence[str],
    batch_categories: Sequence[str],
    is_counts: bool,
    *,
    layer: str | None = None,
    reference_median: float = 1.0,
) -> DataView:
    """Build a view of new cells on a trained model's genes and batches.

    ``reference_median`` is the training data's median library size, so size
    factors of new cells are on the training scale.
    """
    adata = check_anndata(adata)
    labels = batch_labels(adata, batch_key)
    unknown = sorted(set(labels.categories) - set(batch_categories))
    if unknown:
        raise InputError(
            f"batches {unknown} were not seen in training (known: {list(batch_categories)}); "
            "a model can only embed cells of its training batches"
        )
    missing = [g for g in genes if g not in adata.var_names]
    if missing:
        raise InputError(
            f"{len(missing)} of the model's {len(genes)} genes are missing from the data "
            f"(e.g. {', '.join(missing[:5])}); give the new cells the same genes"
        )
    matrix = _as_csr(get_matrix(adata, layer))
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    if check_values(matrix, where) != is_counts and is_counts:
        raise InputError(
            f"the model was trained on raw counts but {where} holds non-integer values"
        )
    library = np.asarray(matrix.sum(axis=1)).ravel()
    cells = library > 0
    if not cells.any():
        raise InputError(f"every cell in {where} has zero counts")
    matrix, library = matrix[cells], library[cells]
    cols = adata.var_names.get_indexer(list(genes))
    codes = pd.Categorical(labels[cells], categories=list(batch_categories)).codes.astype(np.int64)
    logx, counts, size_factors = _normalise(matrix, library, is_counts, reference_median)
    return DataView(
        counts=sp.csr_matrix(counts[:, cols], dtype=np.float32),
        logx=sp.csr_matrix(logx[:, cols], dtype=np.float32),
        size_factors=size_factors,
        batch_codes=codes,
        batch_categories=list(batch_categories),
        genes=list(genes),
        cells=cells,
        is_counts=is_counts,
        median_library=reference_median,
    )
