"""Denoising measured against the truth: deepbid's decoded means, scVI's, and log-normalised counts.

Data: ``deepbid.datasets.simulate(n_cells=1500, n_genes=2000, n_batches=3, n_types=6,
batch_specific=1, true_means=True, seed=s)`` for every seed of ``--seeds``, so the NB mean
every count was drawn from is known (``layers["true_mean"]``, batch effect included) and
so is each type's batch-free profile (``softmax(uns["simulate"]["type_log_profile"])``).
1500 cells rather than 3000 (``--cells 3000``) to stay near 15 minutes on one thread: at
3000 cells one seed took 534 s (two scVI fits at its default 400 epochs, 200 s each; two
deepbid fits, 55 s each), so three seeds would take 27 minutes.

Outputs compared, all on the genes of the deepbid model of that data set:

- ``log-normalised counts``: log1p(counts / library * 1e4), library over all genes;
- deepbid (``DeepBID(seed=s).fit(adata, "batch")``, default settings) and scVI (default
  ``SCVI`` on the raw counts of deepbid's genes, ``batch_key="batch"``, its default training
  length), each decoded three ways: ``own batch`` (every cell in its own batch),
  ``average`` (the mean of decoding in every batch: batch-corrected) and ``as batch0``
  (every cell decoded as if measured in batch0). scVI's expression is its posterior mean
  over :data:`SCVI_SAMPLES` samples of z, at the median library of deepbid's genes.

Metrics:

(a) ``truth_r_with_batch``: median over genes of the Pearson correlation over cells of
    log(value) (log-normalised counts: as they are) with log(true_mean / library), the
    truth the counts were drawn from; genes with a constant truth are skipped.
    ``truth_r_batch_free``: the same against log(softmax(type_log_profile[type])), the
    batch-free truth, on the genes whose profile differs between types. The first is the
    measure for own-batch outputs and counts, the second for batch-corrected outputs
    (``average``, ``as batch0``); both are reported for every output.
(b) ``batch_effect_abs``: for every cell type with >= 10 cells in >= 2 batches and every
    pair of such batches, the mean over genes of |mean over the type's cells in batch a -
    in batch b| of log1p(value scaled so each cell's row sums to 1e4 over deepbid's genes;
    counts are normalised the same way), averaged over types and pairs.
    ``batch_effect_left``: that as a fraction of the same for the raw counts (so 1 for
    them). ``batch_effect_null``: the same quantity with the batch labels shuffled within
    each type (same group sizes), also over the raw counts' gap: what sampling alone
    leaves (the cells of a type in two batches are different draws), the floor a perfect
    correction would reach. The reference row ``true mean`` shows what the noise-free,
    batch-affected means leave.
(c) Held-out entries: 10 % of the non-zero entries of X (a fixed rng per data set) are
    set to zero and kept aside; deepbid and scVI are trained again on the masked data
    (scVI on the masked deepbid model's genes) and each predicts the hidden counts with
    its own-batch decoded mean at the cell's library size in the masked data (deepbid:
    decoded at the median library times library / median; scVI: ``library_size=1`` times
    the cell's library over those genes). ``heldout_r``: Pearson correlation of
    log1p(predicted) with log1p(hidden) over all masked entries on those genes;
    ``heldout_mae``: their mean absolute error; ``heldout_bias``: the mean of predicted -
    hidden. Baseline ``gene average``: each gene's share of all counts in the masked data
    times the cell's library.

    python benchmarks/denoise.py                      # seeds 0 1 2, deepbid and scVI
    python benchmarks/denoise.py --quick --methods deepbid --out /tmp/d   # smoke test

Writes ``denoise.csv`` (one row per seed x method x output, with commit, date, cores and
package versions) and ``denoise.md`` (mean ± sd over seeds) to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
import warnings
from itertools import combinations
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from compare import provenance, summarise

from deepbid import DeepBID
from deepbid.datasets import simulate

HERE = Path(__file__).resolve().parent
#: ``simulate`` arguments of the data (``seed`` and ``n_cells`` added); default cell counts
#: of a run and of ``--quick`` (``--cells`` overrides both).
DATA = dict(n_genes=2000, n_batches=3, n_types=6, batch_specific=1, true_means=True)
N_CELLS, QUICK_CELLS = 1500, 500
#: ``--quick``: a smoke test's training lengths (deepbid's phases, scVI's epochs).
QUICK_DEEPBID = {"epochs": 5, "pretrain_epochs": 5, "layer_epochs": 2}
QUICK_SCVI_EPOCHS = 5
#: Posterior samples of z averaged in scVI's expression (its ``n_samples``).
SCVI_SAMPLES = 25
#: Share of the non-zero entries held out in (c), and the fewest cells of a type in a
#: batch for (b).
HOLDOUT, MIN_CELLS = 0.1, 10
#: Decodings of each model: name in the table -> ``transform_batch`` (deepbid's form).
DECODINGS = {"own batch": None, "average": "average", "as batch0": "batch0"}


# -- the methods -----------------------------------------------------------------------------


def fit_deepbid(adata: ad.AnnData, seed: int, quick: bool) -> tuple[DeepBID, float]:
    """deepbid with its defaults (``QUICK_DEEPBID`` with ``quick``); the model, seconds."""
    start = time.perf_counter()
    settings = QUICK_DEEPBID if quick else {}
    model = DeepBID(seed=seed, progress=False, **settings).fit(adata, "batch")
    return model, time.perf_counter() - start


def deepbid_outputs(model: DeepBID) -> dict[str, np.ndarray]:
    """Every decoding of :data:`DECODINGS`, ``(n_obs, n_model_genes)`` at the median library."""
    return {name: model.denoised(transform_batch=tb) for name, tb in DECODINGS.items()}


def fit_scvi(adata: ad.AnnData, genes: list[str], seed: int, quick: bool):
    """Default scVI on the raw counts of ``genes`` (cells with none of them left out);
    the model, the cells it holds (boolean mask over ``adata``) and seconds."""
    import scvi

    logging.getLogger("scvi").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    start = time.perf_counter()
    scvi.settings.seed = seed
    counts = sp.csr_matrix(adata[:, genes].X, dtype=np.float32)
    cells = np.asarray(counts.sum(axis=1)).ravel() > 0
    holder = ad.AnnData(counts[cells])
    holder.var_names = list(genes)
    holder.obs["batch"] = adata.obs["batch"].to_numpy()[cells]
    scvi.model.SCVI.setup_anndata(holder, batch_key="batch")
    model = scvi.model.SCVI(holder)
    epochs = QUICK_SCVI_EPOCHS if quick else None  # None: scVI's rule, 400 below 20k cells
    model.train(
        max_epochs=epochs, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False
    )
    return model, cells, time.perf_counter() - start


def scvi_outputs(model, cells: np.ndarray, library_size: float) -> dict[str, np.ndarray]:
    """Every decoding of :data:`DECODINGS` (``average``: the list of all batches), at
    ``library_size``, ``(n_obs, n_genes)`` with NaN rows for the cells scVI did not hold."""
    batches = sorted(set(model.adata.obs["batch"].astype(str)))
    forms = {"own batch": None, "average": batches, "as batch0": "batch0"}
    out = {}
    for name, tb in forms.items():
        values = model.get_normalized_expression(
            transform_batch=tb,
            library_size=library_size,
            n_samples=SCVI_SAMPLES,
            return_mean=True,
            return_numpy=True,
        )
        full = np.full((cells.size, values.shape[1]), np.nan, dtype=np.float32)
        full[cells] = values
        out[name] = full
    return out


# -- the metrics -----------------------------------------------------------------------------


def gene_correlations(values: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson correlation over rows of every column of ``values`` with the same column
    of ``truth``; NaN where either column is constant."""
    values = values - values.mean(axis=0)
    truth = truth - truth.mean(axis=0)
    norm = np.sqrt((values**2).sum(axis=0) * (truth**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (values * truth).sum(axis=0) / norm, np.nan)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax, float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def truths(adata: ad.AnnData, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log true proportion with batch effect ``(n_obs, n_genes)``, log batch-free type
    profile ``(n_obs, n_genes)``, mask of the genes whose profile differs between types)."""
    library = adata.obs["library"].to_numpy()[:, None]
    with_batch = np.log(adata.layers["true_mean"][:, genes] / library)
    profile = adata.uns["simulate"]["type_log_profile"]
    types = adata.obs["cell_type"].astype(str).str.removeprefix("type").astype(int).to_numpy()
    batch_free = log_softmax(profile)[:, genes][types]
    varying = np.ptp(profile[:, genes], axis=0) > 0
    return with_batch, batch_free, varying


def truth_correlations(
    logged: np.ndarray, with_batch: np.ndarray, batch_free: np.ndarray, varying: np.ndarray
) -> dict[str, float]:
    """(a): median over genes of the correlation of ``logged`` with each truth."""
    rows = ~np.isnan(logged).any(axis=1)
    r_with = gene_correlations(logged[rows], with_batch[rows])
    r_free = gene_correlations(logged[rows][:, varying], batch_free[rows][:, varying])
    return {
        "truth_r_with_batch": float(np.nanmedian(r_with)),
        "truth_r_batch_free": float(np.nanmedian(r_free)),
    }


def batch_gaps(values: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(b): mean over genes of |mean(a) - mean(b)| of log1p(rows scaled to sum to 1e4),
    averaged over every type and pair of batches holding >= :data:`MIN_CELLS` of it; and
    the same with the batch labels shuffled within each type (same group sizes, a fixed
    rng): what sampling alone leaves, the floor a perfect correction would reach."""
    rows = ~np.isnan(values).any(axis=1) & (np.nan_to_num(values).sum(axis=1) > 0)
    values, batch, labels = values[rows], batch[rows], labels[rows]
    logged = np.log1p(values / values.sum(axis=1, keepdims=True) * 1e4)
    rng = np.random.default_rng(0)
    shuffled = batch.copy()
    for label in np.unique(labels):
        of_type = np.flatnonzero(labels == label)
        shuffled[of_type] = rng.permutation(batch[of_type])
    return _gap(logged, batch, labels), _gap(logged, shuffled, labels)


def _gap(logged: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> float:
    gaps = []
    for label in np.unique(labels):
        of_type = labels == label
        held = [b for b in np.unique(batch) if (of_type & (batch == b)).sum() >= MIN_CELLS]
        means = {b: logged[of_type & (batch == b)].mean(axis=0) for b in held}
        gaps += [np.abs(means[a] - means[b]).mean() for a, b in combinations(held, 2)]
    return float(np.mean(gaps)) if gaps else float("nan")


def hide_entries(
    adata: ad.AnnData, seed: int
) -> tuple[ad.AnnData, np.ndarray, np.ndarray, np.ndarray]:
    """A copy of ``adata`` with :data:`HOLDOUT` of X's non-zero entries set to zero, and
    the rows, columns and counts of those entries."""
    counts = sp.csr_matrix(adata.X, dtype=np.float32, copy=True)
    counts.sort_indices()
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(counts.nnz, int(round(HOLDOUT * counts.nnz)), replace=False))
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))[picked]
    cols = counts.indices[picked].copy()
    hidden = counts.data[picked].copy()
    counts.data[picked] = 0
    counts.eliminate_zeros()
    masked = ad.AnnData(counts, obs=adata.obs[["batch", "cell_type"]].copy(), var=adata.var.copy())
    return masked, rows, cols, hidden


def on_model_genes(
    masked: ad.AnnData, model: DeepBID, rows: np.ndarray, cols: np.ndarray, hidden: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The hidden entries on ``model``'s genes: the genes' columns in ``masked``, and the
    entries' rows, columns in the model's gene order, and counts."""
    genes = np.flatnonzero(masked.var_names.isin(model.genes))
    assert list(masked.var_names[genes]) == list(model.genes)
    column = np.full(masked.n_vars, -1)
    column[genes] = np.arange(genes.size)
    on = column[cols] >= 0
    return genes, rows[on], column[cols[on]], hidden[on]


def deepbid_heldout(model: DeepBID, library: np.ndarray, r: np.ndarray, c: np.ndarray):
    """deepbid's own-batch means at entries ``(r, c)``, at each cell's ``library``."""
    return model.denoised(transform_batch=None)[r, c] * library[r] / model.median_library


def heldout_scores(predicted: np.ndarray, hidden: np.ndarray) -> dict[str, float]:
    """(c): Pearson r of log1p(predicted) with log1p(hidden), and the mean absolute error
    (over the entries with a prediction: NaN for cells a model left out)."""
    known = ~np.isnan(predicted)
    predicted, hidden = predicted[known], hidden[known]
    return {
        "heldout_r": float(np.corrcoef(np.log1p(predicted), np.log1p(hidden))[0, 1]),
        "heldout_mae": float(np.abs(predicted - hidden).mean()),
        "heldout_bias": float((predicted - hidden).mean()),
    }


# -- one data set ----------------------------------------------------------------------------


def benchmark_seed(seed: int, n_cells: int, methods: list[str], quick: bool) -> list[dict]:
    """Every row of the table for the data set and model seed ``seed``."""
    adata = simulate(n_cells=n_cells, seed=seed, **DATA)
    batch = adata.obs["batch"].astype(str).to_numpy()
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    rows: list[dict] = []

    def row(method: str, output: str, **values) -> None:
        rows.append({"seed": seed, "method": method, "output": output, **values})
        shown = {k: round(v, 3) for k, v in values.items() if isinstance(v, float)}
        print(f"seed {seed} | {method} | {output} | {shown}", flush=True)

    # (a) and (b) on the full data
    model, seconds = fit_deepbid(adata, seed, quick)
    genes = np.flatnonzero(adata.var_names.isin(model.genes))
    assert list(adata.var_names[genes]) == list(model.genes)
    with_batch, batch_free, varying = truths(adata, genes)
    counts = adata.X[:, genes].toarray()
    raw_gap, raw_null = batch_gaps(counts, batch, labels)
    shape = {"n_cells": adata.n_obs, "n_genes": genes.size, "n_type_genes": int(varying.sum())}

    library = np.asarray(adata.X.sum(axis=1)).ravel()
    lognorm = np.log1p(counts / library[:, None] * 1e4)
    row(
        "log-normalised counts",
        "counts",
        **truth_correlations(lognorm, with_batch, batch_free, varying),
        batch_effect_left=1.0,
        batch_effect_null=raw_null / raw_gap,
        batch_effect_abs=raw_gap,
        **shape,
    )
    truth_gap, truth_null = batch_gaps(adata.layers["true_mean"][:, genes], batch, labels)
    row(
        "true mean (reference)",
        "batch effect kept",
        batch_effect_left=truth_gap / raw_gap,
        batch_effect_null=truth_null / raw_gap,
        batch_effect_abs=truth_gap,
        **shape,
    )

    decoded = {"deepbid": (deepbid_outputs(model), seconds)}
    if "scvi" in methods:
        scvi_model, cells, seconds = fit_scvi(adata, list(model.genes), seed, quick)
        median = float(np.median(counts.sum(axis=1)[cells]))
        decoded["scvi"] = (scvi_outputs(scvi_model, cells, median), seconds)
    for method, (outputs, seconds) in decoded.items():
        for output, values in outputs.items():
            gap, null = batch_gaps(values, batch, labels)
            logged = np.log(np.maximum(values, 1e-30))
            row(
                method,
                output,
                **truth_correlations(logged, with_batch, batch_free, varying),
                batch_effect_left=gap / raw_gap,
                batch_effect_null=null / raw_gap,
                batch_effect_abs=gap,
                seconds=seconds,
                **shape,
            )

    # (c) on the masked data
    masked, hidden_rows, hidden_cols, hidden = hide_entries(adata, seed)
    model, seconds = fit_deepbid(masked, seed, quick)
    genes, r, c, hidden = on_model_genes(masked, model, hidden_rows, hidden_cols, hidden)
    library = np.asarray(masked.X.sum(axis=1)).ravel()
    shape = {"n_cells": masked.n_obs, "n_genes": genes.size, "n_heldout": int(hidden.size)}

    share = np.asarray(masked.X[:, genes].sum(axis=0)).ravel() / masked.X.sum()
    row(
        "gene average", "held-out entries", **heldout_scores(share[c] * library[r], hidden), **shape
    )
    predicted = deepbid_heldout(model, library, r, c)
    row(
        "deepbid", "held-out entries", **heldout_scores(predicted, hidden), seconds=seconds, **shape
    )
    if "scvi" in methods:
        scvi_model, cells, seconds = fit_scvi(masked, list(model.genes), seed, quick)
        own = scvi_outputs(scvi_model, cells, 1.0)["own batch"]
        sub_library = np.asarray(masked.X[:, genes].sum(axis=1)).ravel()
        predicted = own[r, c] * sub_library[r]
        row(
            "scvi",
            "held-out entries",
            **heldout_scores(predicted, hidden),
            seconds=seconds,
            **shape,
        )
    return rows


# -- tables ----------------------------------------------------------------------------------


def markdown(result: pd.DataFrame, seeds: list[int], n_cells: int, quick: bool) -> str:
    """denoise.md: provenance, then (a) + (b) and (c) tables, mean ± sd over seeds."""
    first = result.iloc[0]
    data = ", ".join(f"{k}={v}" for k, v in DATA.items())
    parts = [
        f"commit `{first['commit']}` · {first['date']} · {first['cores']} cores · "
        f"{first['versions']}\n",
        f"Data: `simulate(n_cells={n_cells}, {data}, seed=s)`, s in "
        f"{', '.join(map(str, seeds))}; model seed = s. Mean ± sd over seeds (`runs`)."
        + (" **--quick: a smoke test, not a result.**" if quick else "")
        + (
            f" {N_CELLS} cells rather than 3000 to keep three seeds near 15 minutes on one "
            "thread (`--cells 3000`: about 9 minutes a seed)."
            if n_cells == N_CELLS
            else ""
        )
        + "\n",
        "**Truth correlation and batch effect left** (on deepbid's genes). r: median over "
        "genes of the per-gene Pearson r over cells of log(value) with log(truth); "
        "*with batch*: truth = true_mean / library (the measure for own-batch outputs and "
        "counts); *batch-free*: truth = the type's profile without batch effect, on genes "
        "that differ between types (the measure for `average` and `as batch0`). Batch "
        "effect left: mean |difference of a type's mean log1p expression between two "
        "batches| as a fraction of the raw counts' (target for deepbid `average`: <= 0.2); "
        "next to it the same with batch labels shuffled within each type, what sampling "
        "noise alone leaves (the floor of a perfect correction).\n",
        table(
            result[result["output"] != "held-out entries"],
            {
                "truth_r_with_batch": ("r with batch", 3),
                "truth_r_batch_free": ("r batch-free", 3),
                "batch_effect_left": ("batch effect left", 3),
                "batch_effect_null": ("same, batches shuffled in types", 3),
                "batch_effect_abs": ("batch gap (abs)", 4),
                "seconds": ("fit seconds", 1),
            },
        ),
        f"**Held-out entries** ({HOLDOUT:.0%} of the non-zero counts hidden, models "
        "retrained on the rest; own-batch mean at the cell's library): Pearson r of "
        "log1p(predicted) with log1p(hidden), mean absolute error and mean error, over the hidden "
        "entries on the (masked) deepbid model's genes.\n",
        table(
            result[result["output"] == "held-out entries"],
            {
                "heldout_r": ("r log1p", 3),
                "heldout_mae": ("MAE (counts)", 3),
                "heldout_bias": ("mean error (counts)", 3),
                "n_heldout": ("entries", 0),
                "seconds": ("fit seconds", 1),
            },
        ),
    ]
    return "\n".join(parts)


def table(result: pd.DataFrame, columns: dict[str, tuple[str, int]]) -> str:
    """One Markdown table, a row per method and output (in run order)."""
    header = ["method", "output", "runs", *(title for title, _ in columns.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (method, output), runs in result.groupby(["method", "output"], sort=False):
        cells = [method, output, str(len(runs))]
        cells += [
            summarise(runs[c], digits) if c in runs else "–" for c, (_, digits) in columns.items()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--methods", nargs="+", default=["deepbid", "scvi"], choices=["deepbid", "scvi"]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_CELLS} cells, first seed only, a few epochs (a smoke test, not a result)",
    )
    parser.add_argument("--cells", type=int, default=None, help=f"default {N_CELLS}")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds
    n_cells = args.cells or (QUICK_CELLS if args.quick else N_CELLS)
    methods = list(args.methods)
    if "scvi" in methods and importlib.util.find_spec("scvi") is None:
        print("scvi-tools is not installed: scVI skipped (pip install -e '.[benchmark]')")
        methods.remove("scvi")
    start = time.perf_counter()
    rows = []
    for seed in seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows += benchmark_seed(seed, n_cells, methods, args.quick)
    result = pd.DataFrame(rows).assign(**provenance())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.to_csv(out / "denoise.csv", index=False)
    (out / "denoise.md").write_text(markdown(result, seeds, n_cells, args.quick))
    print((out / "denoise.md").read_text())
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
