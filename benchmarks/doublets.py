"""Which cells do deepbid's clusters get wrong in the files with demuxlet calls, and what are they?

On every shared file with demuxlet calls (``obs["demuxlet_cls"]``: the CellBench
cell-line mixtures), deepbid is fitted with its defaults (K estimated) and every cell
whose cluster's majority type is not its own label is described:

- ``call``: demuxlet's singlet (SNG) or doublet (DBL) call;
- ``depth_pct``: its library size as a percentile of its batch's;
- ``shares``: its composition, non-negative least squares of its counts per cell
  (linear scale, deepbid's genes) on the mean profile of each cell line's singlets in
  its batch, scaled to sum to 1. A singlet of line A reads about 1 for A; a doublet of
  two lines about half each; ambient RNA (an empty droplet) about the lines' mix;
- ``largest_share`` and ``largest_share_line``: the largest of them and its line;
  ``labelled_share``: its own label's.

The summary gives, per file and seed, the ARI of deepbid's clusters on all cells, on
the singlets, and on all cells but the doublets that no line dominates (largest share
below :data:`DOMINANT`): the cells whose label is demuxlet's pick among two or three
lines present in about equal parts, which no clustering of expression can recover;
and against labels where every doublet takes the line holding its largest share (the
type its expression says most of) instead of demuxlet's.

    python benchmarks/doublets.py --seeds 0 1 2

Writes ``results/doublets.{csv,md}`` (summary) and ``results/doublets_cells.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mapping import markdown_table, save
from quality import SHARED, fit, provenance, singlets
from representation import depth_percentiles, majority_types
from scipy.optimize import nnls

from deepbid import metrics

HERE = Path(__file__).resolve().parent
#: A line dominates a cell when it holds more than this share of its counts.
DOMINANT = 0.5


def compositions(
    counts: np.ndarray, lines: np.ndarray, batch: np.ndarray, singlet: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Shares ``(n, L)`` of each of the ``L`` lines in every cell's ``(n, g)`` counts:
    NNLS on the mean profile (counts per cell) of the line's singlets in the cell's batch."""
    names = sorted(set(lines[singlet]))
    profile = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    shares = np.zeros((counts.shape[0], len(names)))
    for b in np.unique(batch):
        own = batch == b
        basis = np.stack(
            [profile[own & singlet & (lines == name)].mean(axis=0) for name in names], axis=1
        )
        for i in np.flatnonzero(own):
            weights, _ = nnls(basis, profile[i])
            shares[i] = weights / max(weights.sum(), 1e-12)
    return shares, names


def run(name: str, adata: ad.AnnData, seed: int) -> tuple[dict, pd.DataFrame]:
    """The summary row and the misplaced cells of one fit."""
    model, _ = fit(adata, seed, {})
    cells = model.train_view.cells
    obs = adata.obs.iloc[cells]
    labels = obs["cell_type"].astype(str).to_numpy()
    batch = obs["batch"].astype(str).to_numpy()
    singlet = singlets(adata)[cells]
    clusters = model.clusters()[cells]
    counts = adata[:, model.genes].X
    counts = np.asarray(counts.toarray() if sp.issparse(counts) else counts)[cells].astype(float)
    shares, names = compositions(counts, labels, batch, singlet)
    depth = depth_percentiles(counts.sum(axis=1), batch)
    majority = majority_types(clusters, labels)
    wrong = majority != labels
    largest = shares.max(axis=1)
    dominant = np.asarray(names)[shares.argmax(axis=1)]
    ambiguous = ~singlet & (largest < DOMINANT)
    misplaced = pd.DataFrame(
        {
            "dataset": name,
            "seed": seed,
            "cell": obs.index[wrong],
            "batch": batch[wrong],
            "label": labels[wrong],
            "cluster_majority": majority[wrong],
            "call": np.where(singlet[wrong], "SNG", "DBL"),
            "depth_pct": depth[wrong],
            "largest_share": largest[wrong],
            "labelled_share": shares[wrong, [names.index(x) for x in labels[wrong]]],
            "largest_share_line": dominant[wrong],
        }
        | {f"share_{n}": shares[wrong, j] for j, n in enumerate(names)}
    )
    kept = ~ambiguous
    row = {
        "dataset": name,
        "seed": seed,
        "K": model.cluster_count,
        "cells": cells.size,
        "doublets": int((~singlet).sum()),
        "misplaced": int(wrong.sum()),
        "misplaced_doublets": int((wrong & ~singlet).sum()),
        "misplaced_no_dominant_line": int((wrong & ambiguous).sum()),
        "misplaced_to_largest_share_line": int((wrong & (majority == dominant)).sum()),
        "doublets_no_dominant_line": int(ambiguous.sum()),
        "median_depth_pct_misplaced": float(np.median(depth[wrong])) if wrong.any() else np.nan,
        "ari": metrics.ari(labels, clusters),
        "ari_singlets": metrics.ari(labels[singlet], clusters[singlet]),
        "ari_without_no_dominant_line": metrics.ari(labels[kept], clusters[kept]),
        "ari_doublets_by_largest_share": metrics.ari(np.where(singlet, labels, dominant), clusters),
    }
    return row, misplaced


def markdown(results: pd.DataFrame) -> str:
    numbers = results.drop(columns=["seed", "cores"]).select_dtypes("number").columns
    table = results.groupby("dataset")[list(numbers)].mean()
    table.index.name = "dataset"
    first = results.iloc[0]
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; seeds "
        f"{sorted(results['seed'].unique().tolist())}, mean over seeds. Cells whose "
        "cluster's majority type is not their label ('misplaced'); doublets with no "
        f"dominant line: demuxlet doublets whose largest line share is below {DOMINANT}.\n\n"
        f"{markdown_table(table)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    rows, cells = [], []
    for path in sorted(SHARED.glob("*.h5ad")):
        adata = ad.read_h5ad(path)
        if "demuxlet_cls" not in adata.obs:
            continue
        for seed in args.seeds:
            row, misplaced = run(path.stem, adata, seed)
            rows.append(row)
            cells.append(misplaced)
    out = Path(args.out)
    save(rows, out, "doublets", markdown)
    pd.concat(cells).assign(**provenance()).to_csv(out / "doublets_cells.csv", index=False)


if __name__ == "__main__":
    main()
