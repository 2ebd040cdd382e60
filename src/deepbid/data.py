"""The data view: AnnData in, validated sparse matrices and batch codes out.

Every check on the user's data lives here (settings are checked in
:mod:`deepbid.settings`, the device in :mod:`deepbid.model`) and runs before any
training, so a bad file fails in seconds with an :class:`~deepbid.errors.InputError`
that says what to fix, never half-way through an optimisation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import torch

from . import distributed
from .errors import InputError, InputWarning

#: Fewest cells a batch may have: per-batch gene selection and the within-batch
#: KL term both need several cells of every batch.
MIN_CELLS_PER_BATCH = 5
#: The paper's per-cell normalisation target before ``log1p``.
TARGET_SUM = 1e4
#: Largest value log-normalised input holds: ``log1p`` of counts per million, the
#: largest target scanpy users normalise to. Larger non-integer values are counts.
MAX_LOG_VALUE = float(np.log1p(1e6))
#: Rows of the expression matrix read at a time (memory of one block: its non-zeros).
BLOCK_CELLS = 10_000
#: Cells of each batch that gene selection reads: all of a batch up to this size, a
#: fixed random sample above (HVG dispersions from 20,000 cells are stable, and the
#: sample keeps selection memory flat at a million cells).
SELECTION_CELLS = 20_000


@dataclass
class DataView:
    """The cells and genes the network trains on, held once as the input values.

    The encoder input (log1p of counts per 10^4) and the NB target are made
    from ``matrix`` one minibatch at a time (:meth:`rows`), so a million-cell
    view costs one sparse copy of the selected genes, not two.

    Attributes
    ----------
    matrix
        ``(n_cells, n_genes)`` CSR float32: the input values of the selected genes
        (raw counts, or the given values for non-count input).
    scale
        ``(n_cells,)`` float32: 10^4 over each cell's library size (all genes); the
        encoder reads ``log1p(matrix * scale)``. Ones for non-count input, which the
        encoder reads as it is.
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
    positions
        ``(n_cells,)`` positions of this view's cells among all the view's cells
        (``n_total``): ``arange(n_cells)`` in one process; under ``torch.distributed``,
        the process's shard (:func:`deepbid.distributed.shard`).
    """

    matrix: sp.csr_matrix
    scale: np.ndarray
    size_factors: np.ndarray
    batch_codes: np.ndarray
    batch_categories: list[str]
    genes: list[str]
    cells: np.ndarray
    is_counts: bool
    median_library: float
    positions: np.ndarray

    @property
    def n_cells(self) -> int:
        """Cells this view holds (this process's shard under ``torch.distributed``)."""
        return self.matrix.shape[0]

    @property
    def n_total(self) -> int:
        """Cells of the whole view, over all processes."""
        return int(self.cells.sum())

    @property
    def n_genes(self) -> int:
        return self.matrix.shape[1]

    @property
    def n_batches(self) -> int:
        return len(self.batch_categories)

    @property
    def counts(self) -> sp.csr_matrix:
        """``(n_cells, n_genes)`` CSR float32 NB target: the counts, or the rounded
        values of non-count input."""
        return self.matrix if self.is_counts else _rounded(self.matrix)

    @property
    def logx(self) -> sp.csr_matrix:
        """``(n_cells, n_genes)`` CSR float32 encoder input (a new matrix: for whole-data
        baselines such as PCA; training makes it per minibatch)."""
        return _log_normalised(self.matrix, self.scale) if self.is_counts else self.matrix

    def minibatches(
        self, batch_size: int, rng: np.random.Generator | None = None, n_used: int | None = None
    ) -> Iterator[np.ndarray]:
        """Yield row indices of minibatches; shuffled when ``rng`` is given.

        A last minibatch smaller than half ``batch_size`` is merged into the
        previous one, so that no step is driven by a handful of cells. Only the
        first ``n_used`` rows of the (shuffled) order are used when given: a random
        subset of the cells on large data, and equally many steps on processes
        holding shards of unequal size.
        """
        order = rng.permutation(self.n_cells) if rng is not None else np.arange(self.n_cells)
        n = self.n_cells if n_used is None else min(n_used, self.n_cells)
        starts = list(range(0, n, batch_size))
        if len(starts) > 1 and n - starts[-1] < batch_size // 2:
            starts.pop()
        for i, start in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else n
            yield order[start:stop]

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Dense ``(logx, counts, size_factors, batch_codes)`` for the rows ``idx``."""
        block = self.matrix[idx]
        values = block.toarray()
        target = values if self.is_counts else np.round(values)
        return (
            self._encoder_input(block, idx),
            target,
            self.size_factors[idx],
            self.batch_codes[idx],
        )

    def inputs(self, idx: np.ndarray) -> np.ndarray:
        """Dense encoder input ``(len(idx), n_genes)`` (log-normalised) of the rows ``idx``."""
        return self._encoder_input(self.matrix[idx], idx)

    def _encoder_input(self, block: sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
        # log1p(0) = 0: transforming the stored entries before densifying costs a
        # quarter of transforming the dense minibatch
        return (_log_normalised(block, self.scale[idx]) if self.is_counts else block).toarray()


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


def get_matrix(adata: ad.AnnData, layer: str | None) -> object:
    """The expression matrix in ``adata.layers[layer]``, or ``adata.X``: in memory
    (dense or sparse) or, for an AnnData read with ``backed="r"``, on disk."""
    if layer is None:
        if adata.X is None:
            raise InputError("adata.X is empty; pass layer= naming the layer that holds counts")
        return adata.X
    if not isinstance(layer, str):
        raise InputError(f"layer must name one layer of adata.layers, got {layer!r}")
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


def _runs(rows: np.ndarray) -> list[slice]:
    """The sorted ``rows`` as slices of consecutive rows, none longer than
    :data:`BLOCK_CELLS`."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = []
    for run in np.split(rows, breaks):
        for start in range(0, run.size, BLOCK_CELLS):
            piece = run[start : start + BLOCK_CELLS]
            runs.append(slice(int(piece[0]), int(piece[-1]) + 1))
    return runs


def _blocks(source: object, runs: list[slice]) -> Iterator[tuple[slice, sp.csr_matrix]]:
    """``(rows, CSR float32)`` for each run of rows: a backed matrix is read from disk
    one run at a time."""
    for rows in runs:
        try:
            part = source[rows]
        except (TypeError, KeyError) as err:
            raise InputError(
                f"cannot read rows of the expression matrix ({type(source).__name__}: {err}); "
                "give a numpy array or scipy sparse matrix, or an AnnData read with backed='r'"
            ) from None
        yield rows, _as_csr(part)


def _stack(parts: list[sp.csr_matrix], n_cols: int) -> sp.csr_matrix:
    """Row-stack CSR ``parts`` (emptied on the way), peak memory one part above the result."""
    nnz = sum(part.nnz for part in parts)
    index = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
    data = np.empty(nnz, dtype=np.float32)
    indices = np.empty(nnz, dtype=index)
    indptr = [np.zeros(1, dtype=index)]
    at = 0
    while parts:
        part = parts.pop(0)
        data[at : at + part.nnz] = part.data
        indices[at : at + part.nnz] = part.indices
        indptr.append(part.indptr[1:].astype(index) + at)
        at += part.nnz
    indptr = np.concatenate(indptr)
    return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_cols))


def _scan_together(
    source: object, runs: list[slice], where: str, sample: np.ndarray
) -> tuple[np.ndarray, bool, sp.csr_matrix, float]:
    """:func:`_scan` of this process's ``runs``, its :class:`InputError` raised on every
    process at once (one process's bad rows stop them all, none waits forever)."""
    scanned, error = None, None
    try:
        scanned = _scan(source, runs, where, sample)
    except InputError as err:
        error = err
    distributed.raise_together(error)
    return scanned


def _scan(
    source: object, runs: list[slice], where: str, keep: np.ndarray
) -> tuple[np.ndarray, bool, sp.csr_matrix, float]:
    """One pass over the rows ``runs``: check every value, sum each cell's library and
    keep the rows ``keep`` (``(n_obs,)`` boolean) with all genes.

    Returns
    -------
    ``(library (rows read,), whether all values are integers, kept rows, largest
    value)``.
    """
    library, kept, is_counts, largest = [], [], True, 0.0
    n_cols = source.shape[1]
    for rows, part in _blocks(source, runs):
        is_counts &= check_values(part, where, rows)
        library.append(np.asarray(part.sum(axis=1)).ravel())
        kept.append(part[keep[rows]])
        largest = max(largest, float(part.data.max(initial=0.0)))
    return np.concatenate([np.zeros(0), *library]), is_counts, _stack(kept, n_cols), largest


def check_log_scale(largest: float, where: str) -> None:
    """Reject non-integer input whose ``largest`` value no log-normalised matrix holds.

    Such values are counts that are not whole numbers (after ambient-RNA correction,
    say); read as log data, the gene selection would exponentiate them past overflow.
    Under ``torch.distributed`` every process raises when any holds such a value.
    """
    if distributed.all_max(int(largest > MAX_LOG_VALUE)):
        raise InputError(
            f"{where} holds non-integer values, so it would be read as log-normalised "
            f"data, but its values reach {largest:.6g}, more than such data hold (log1p of "
            f"counts per million stays below {MAX_LOG_VALUE:.1f}). If these are counts "
            "that are not whole numbers (after "
            "ambient-RNA correction, say), round them first (for a sparse matrix: "
            "adata.X.data = np.rint(adata.X.data)), or pass layer= naming the raw counts"
        )


def _gather(source: object, runs: list[slice], rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    """The rows ``rows`` (``(n_obs,)`` boolean) within ``runs`` and the columns ``cols``
    of the matrix, read a run at a time so that only the selected genes are held whole."""
    parts = [part[rows[block]][:, cols] for block, part in _blocks(source, runs)]
    return _stack(parts, cols.size)


def _rounded(matrix: sp.csr_matrix) -> sp.csr_matrix:
    out = matrix.copy()
    out.data = np.round(out.data)
    out.eliminate_zeros()
    return out


def _log_normalised(matrix: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    """``log1p(matrix * scale[:, None])`` as a new CSR matrix of the same entries."""
    out = matrix.copy()
    out.data = np.log1p(out.data * np.repeat(scale, np.diff(out.indptr)))
    return out


def _rows_named(matrix: sp.csr_matrix, bad: np.ndarray, rows: slice) -> str:
    """The cells whose stored entries ``bad`` are, in a message: "1 cell (row 7) of rows
    0-9999" or "40 cells (rows 3, 9, 12, ...) of rows 0-9999", positions in the whole
    matrix, of which ``matrix`` holds the block ``rows`` (the scan stops at the first
    block with a bad value, so the message names that block)."""
    bad_rows = np.unique(np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))[bad])
    return f"{_cells_at(bad_rows + rows.start)} of rows {rows.start}-{rows.stop - 1}"


def _cells_at(rows: np.ndarray) -> str:
    """The cells at ``rows`` (sorted positions, at least one) in a message: "1 cell
    (row 7)" or "40 cells (rows 3, 9, 12, ...)"."""
    shown = ", ".join(str(r) for r in rows[:3]) + (", ..." if rows.size > 3 else "")
    return f"1 cell (row {shown})" if rows.size == 1 else f"{rows.size} cells (rows {shown})"


def check_values(matrix: sp.csr_matrix, where: str, rows: slice) -> bool:
    """Reject NaN, infinite and negative values; tell whether all are integers.

    ``matrix`` holds the block ``rows`` of cells, so that the message gives the rows
    (0-based positions in ``adata``) of the cells that hold such values.

    Returns
    -------
    ``True`` when every value is a whole number (raw counts).
    """
    values = matrix.data
    finite = np.isfinite(values)
    if not np.all(finite):
        raise InputError(
            f"{where} holds {int(np.sum(~finite))} NaN or infinite values in "
            f"{_rows_named(matrix, ~finite, rows)}; deepbid needs raw counts "
            "(fix or remove those entries, or pass layer= naming the raw-count layer)"
        )
    if values.size and values.min() < 0:
        raise InputError(
            f"{where} holds negative values (min {values.min():.3g}) in "
            f"{_rows_named(matrix, values < 0, rows)}; deepbid needs raw counts, not "
            "scaled or centred data: pass layer= naming the raw-count layer"
        )
    return bool(np.all(values == np.round(values)))


def batch_labels(adata: ad.AnnData, batch_key: str) -> pd.Categorical:
    """Validated batch labels of ``adata`` as a pandas Categorical of strings."""
    if not isinstance(batch_key, str):
        raise InputError(
            f"batch_key must name one column of adata.obs, got {batch_key!r}; to combine "
            "several columns, join them into one first (e.g. adata.obs['batch'] = "
            "adata.obs['donor'].astype(str) + '_' + adata.obs['protocol'].astype(str))"
        )
    if batch_key not in adata.obs.columns:
        have = ", ".join(map(repr, adata.obs.columns)) or "none"
        raise InputError(f"batch_key {batch_key!r} not found in adata.obs (columns: {have})")
    column = adata.obs[batch_key]
    missing = np.flatnonzero(column.isna().to_numpy())
    if missing.size:
        raise InputError(
            f"adata.obs[{batch_key!r}] is missing for {_cells_at(missing)}; give every cell "
            "a batch, or drop those cells"
        )
    return pd.Categorical(column.astype(str))


def _selection_sample(codes: np.ndarray) -> np.ndarray:
    """``(n_obs,)`` boolean: the cells gene selection reads, every cell of a batch up to
    :data:`SELECTION_CELLS` and a fixed random sample of that many above."""
    rng = np.random.default_rng(0)
    sample = np.zeros(codes.size, dtype=bool)
    for code in np.unique(codes):
        members = np.flatnonzero(codes == code)
        if members.size > SELECTION_CELLS:
            members = rng.choice(members, SELECTION_CELLS, replace=False)
        sample[members] = True
    return sample


def _select_genes(
    matrix: sp.csr_matrix,
    scale: np.ndarray | None,
    codes: np.ndarray,
    n_top_genes: int,
    min_cells: int,
) -> np.ndarray:
    """The paper's gene selection: per batch, genes detected in ``min_cells``
    cells, top ``n_top_genes`` HVGs (Seurat dispersion) of the log data; union.

    ``matrix`` holds the cells' input values, ``scale`` their 10^4 / library
    (``None``: non-count input, read as it is and rounded for detection).
    """
    selected = np.zeros(matrix.shape[1], dtype=bool)
    for code in np.unique(codes):
        rows = codes == code
        values = matrix[rows]
        counts = values if scale is not None else _rounded(values)
        detected = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_cells
        if detected.sum() < 2:
            continue
        logx = _log_normalised(values, scale[rows]) if scale is not None else values
        sub = ad.AnnData(logx[:, detected])
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

    The matrix is read :data:`BLOCK_CELLS` rows at a time, twice (values and
    library sizes, then the selected genes), so an AnnData read with
    ``backed="r"`` is never loaded whole. Under ``torch.distributed`` each process
    reads only its shard (:func:`deepbid.distributed.shard`) and the view holds only
    those cells; library sizes (one number per cell) are shared, and each batch's
    genes are selected on one process from the selection-sample rows (at most
    :data:`SELECTION_CELLS` cells per batch) the others send it (:func:`_selected`).

    Parameters
    ----------
    adata
        Cells x genes, raw counts in ``X`` or ``layers[layer]`` (dense or sparse,
        in memory or backed).
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
    source = get_matrix(adata, layer)
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    all_codes = np.asarray(labels.codes, dtype=np.int64)
    if genes is None:
        sample = _selection_sample(all_codes)
    else:
        keep = _gene_mask(adata.var_names, genes)
        sample = np.zeros(adata.n_obs, dtype=bool)
    owned = distributed.shard(adata.n_obs)
    runs = _runs(owned)
    own_library, is_counts, sampled, largest = _scan_together(source, runs, where, sample)
    library = distributed.gather_rows(own_library, owned, adata.n_obs)
    is_counts = bool(distributed.all_min(int(is_counts)))
    if not is_counts:
        check_log_scale(largest, where)
        _warn_not_counts(where, layer is None and adata.raw is not None)
    cells = _cells_with_counts(library, where)
    categories = [str(c) for c in labels.categories]
    _check_batches(batch_key, categories, all_codes, cells)

    median_library = float(np.median(library[cells])) if is_counts else 1.0
    if genes is None:
        keep = _selected(
            owned[sample[owned]],
            sampled,
            library,
            all_codes,
            cells,
            is_counts,
            n_top_genes,
            min_cells,
        )
    del sampled  # the sample is dropped once genes are selected
    mine = owned[cells[owned]]
    return _view(
        _gather(source, runs, cells, np.flatnonzero(keep)),
        library[mine],
        all_codes[mine],
        categories,
        list(adata.var_names[keep]),
        cells,
        is_counts,
        median_library,
        positions=(np.cumsum(cells) - 1)[mine],
    )


def _warn_not_counts(where: str, raw_set: bool) -> None:
    """Say that the matrix at ``where`` is taken as log-normalised (and, ``raw_set``,
    that ``adata.raw`` may hold the counts)."""
    warnings.warn(
        f"{where} holds non-integer values, so it is taken as log-normalised data: the "
        "encoder reads it as it is and the NB likelihood uses its rounded values (the "
        "paper's fallback). Pass raw counts (layer=...) for the statistically sound model."
        + (
            " adata.raw is set: if it holds the raw counts, integrate "
            "adata.raw.to_adata() (it keeps obs) instead."
            if raw_set
            else ""
        ),
        InputWarning,
        stacklevel=4,  # the caller of DeepBID.fit
    )


def _cells_with_counts(library: np.ndarray, where: str) -> np.ndarray:
    """``(n,)`` mask of the cells with counts (library ``(n,)``); warns of the others and
    raises :class:`InputError` when there are none."""
    cells = library > 0
    if not cells.all():
        warnings.warn(
            f"{int((~cells).sum())} cells have zero counts and are left out; their outputs "
            "are NaN. Remove them first with scanpy.pp.filter_cells(adata, min_counts=1).",
            InputWarning,
            stacklevel=4,
        )
    if not cells.any():
        raise InputError(f"every cell in {where} has zero counts")
    return cells


def _selected(
    rows: np.ndarray,
    sampled: sp.csr_matrix,
    library: np.ndarray,
    codes: np.ndarray,
    cells: np.ndarray,
    is_counts: bool,
    n_top_genes: int,
    min_cells: int,
) -> np.ndarray:
    """``(n_genes,)`` boolean: the genes :func:`_select_genes` selects from the selection
    sample, of which this process read the rows ``rows`` (obs indices) as ``sampled``.

    Under ``torch.distributed`` batch ``b`` is selected on process ``b % w``: the
    processes send it their rows of that batch (per-gene statistics do not depend on
    the order they arrive in), one batch at a time, so that a process holds its own
    rows of the sample and one batch's received rows (twice over while they are
    unpickled), not all its batches' at once; the union is then shared.
    """
    world = distributed.world_size()
    codes_here = codes[rows]
    selected = np.zeros(sampled.shape[1], dtype=bool)
    for code in np.unique(codes[cells]):
        send = codes_here == code
        received = distributed.gather_to(int(code) % world, (rows[send], sampled[send]))
        if received is None:
            continue
        order = np.concatenate([r for r, _ in received])
        matrices = [m for _, m in received]
        del received
        matrix = matrices[0] if len(matrices) == 1 else _stack(matrices, sampled.shape[1])
        used = cells[order]
        selected |= _select_genes(
            matrix if used.all() else matrix[used],
            _scale(library[order][used]) if is_counts else None,
            codes[order][used],
            n_top_genes,
            min_cells,
        )
    votes = distributed.all_sum(torch.from_numpy(selected.astype(np.int64)))
    if (votes > 0).sum() < 2:
        raise InputError(
            f"fewer than 2 genes are detected in {min_cells} cells of any batch; "
            "deepbid needs more genes or more cells per batch"
        )
    return votes.numpy() > 0


def _scale(library: np.ndarray) -> np.ndarray:
    return (TARGET_SUM / library).astype(np.float32)


def _view(
    matrix: sp.csr_matrix,
    library: np.ndarray,
    codes: np.ndarray,
    categories: list[str],
    genes: list[str],
    cells: np.ndarray,
    is_counts: bool,
    median_library: float,
    positions: np.ndarray | None = None,
) -> DataView:
    ones = np.ones(matrix.shape[0], dtype=np.float32)
    return DataView(
        matrix=matrix,
        scale=_scale(library) if is_counts else ones,
        size_factors=(library / median_library).astype(np.float32) if is_counts else ones,
        batch_codes=codes,
        batch_categories=categories,
        genes=genes,
        cells=cells,
        is_counts=is_counts,
        median_library=median_library,
        positions=np.arange(matrix.shape[0]) if positions is None else positions,
    )


def _check_batches(
    batch_key: str, categories: list[str], codes: np.ndarray, cells: np.ndarray
) -> None:
    """Two batches or more, each with :data:`MIN_CELLS_PER_BATCH` cells that have counts
    (``cells``, ``(n,)`` mask) among its cells (``codes``, ``(n,)`` batch codes)."""
    present = np.bincount(codes[cells], minlength=len(categories))
    total = np.bincount(codes, minlength=len(categories))
    if len(categories) < 2:
        raise InputError(
            f"adata.obs[{batch_key!r}] has a single batch ({categories[0]!r}); integration "
            "needs at least two. Check batch_key, or cluster a single batch with scanpy."
        )
    # a batch whose cells have zero counts is no small batch: the message says which
    small = [
        f"{c!r} ({n} cell{'' if n == 1 else 's'}" + (f" with counts, of {t}" if t > n else "") + ")"
        for c, n, t in zip(categories, present, total, strict=True)
        if n < MIN_CELLS_PER_BATCH
    ]
    if small:
        raise InputError(
            f"batches with fewer than {MIN_CELLS_PER_BATCH} cells: {', '.join(small)}; "
            "remove them or merge them into a larger batch"
        )


def _gene_mask(var_names: pd.Index, genes: Sequence[str]) -> np.ndarray:
    if isinstance(genes, str):
        raise InputError(f"genes= must be a list of gene names, got the string {genes!r}")
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
    source = get_matrix(adata, layer)
    where = f"adata.layers[{layer!r}]" if layer else "adata.X"
    runs = _runs(np.arange(adata.n_obs))
    library, query_counts, _, largest = _scan(source, runs, where, np.zeros(adata.n_obs, bool))
    if is_counts and not query_counts:
        raise InputError(
            f"the model was trained on raw counts but {where} holds non-integer values"
        )
    if not query_counts:
        check_log_scale(largest, where)
    cells = library > 0
    if not cells.any():
        raise InputError(f"every cell in {where} has zero counts")
    cols = adata.var_names.get_indexer(list(genes))
    codes = pd.Categorical(labels[cells], categories=list(batch_categories)).codes.astype(np.int64)
    return _view(
        _gather(source, runs, cells, cols),
        library[cells],
        codes,
        list(batch_categories),
        list(genes),
        cells,
        is_counts,
        reference_median,
    )
