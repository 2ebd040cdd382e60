"""Label transfer by deepbid's clusters against a kNN classifier on Harmony's embedding.

On each file, 30 % of the labels are hidden at random (5 seeds); the hidden cells are
labelled by :func:`deepbid.transfer_labels` (from one integration per file: it never
sees the labels) and by a 15-nearest-neighbour classifier trained on the labelled cells
of the Harmony embedding (50-PC PCA of the same genes). Two more 15-NN classifiers on
deepbid's own embedding, by Euclidean distance and by angle, show what the graph's
metric and the spreading each add. Scored on the hidden cells: accuracy of each, and
deepbid's error rate in each quintile of its confidence (q1 the least confident fifth;
cells of equal confidence share the quintiles they straddle). On the CellBench files,
which keep the cells demuxlet called doublets, deepbid's and Harmony's accuracy is also
given on the hidden singlets alone.

    python benchmarks/label_transfer.py
    python benchmarks/label_transfer.py --files sc_mixology_3cl --seeds 0 --quick --out /tmp/t

Writes ``results/label_transfer.csv`` (one row per file x seed) and ``label_transfer.md``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from compare import run_harmony
from mapping import markdown_table, save
from quality import singlets
from scipy.stats import rankdata
from sklearn.neighbors import KNeighborsClassifier

import deepbid

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
FILES = [
    "pancreas_baron_human_4donors",
    "sc_mixology_5cl_celseq2_3plates",
    "sc_mixology_3cl",
    "dc_villani_2batch_lognorm",
]
#: Share of the labels hidden in each draw.
HIDDEN = 0.3
#: Settings of a ``--quick`` run (the CI smoke test), else the defaults.
QUICK = dict(layer_epochs=1, pretrain_epochs=2, epochs=3)


def quintile_weights(confidence: np.ndarray) -> np.ndarray:
    """``(5, n)`` share of each cell in each fifth of the cells ordered by rising
    confidence; tied cells spread evenly over the ranks they share, so that the order of
    equal confidences (for example many at 1.0) cannot decide where the errors fall."""
    n = confidence.size
    first = rankdata(confidence, method="min") - 1
    last = rankdata(confidence, method="max")
    edges = np.linspace(0, n, 6)
    overlap = np.minimum(last, edges[1:, None]) - np.maximum(first, edges[:-1, None])
    return overlap.clip(0) / (last - first)


def knn_right(x: np.ndarray, truth: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Whether a 15-NN classifier fitted on the labelled rows of ``x`` labels each hidden
    row right ``(hidden.sum(),)``."""
    knn = KNeighborsClassifier(n_neighbors=15).fit(x[~hidden], truth[~hidden])
    return knn.predict(x[hidden]) == truth[hidden]


def singlet_accuracy(right: np.ndarray, single: np.ndarray | None) -> float:
    """Mean of ``right`` over the singlets among them (NaN without demuxlet calls)."""
    return np.nan if single is None else float(right[single].mean())


def draw(adata: ad.AnnData, harmony: np.ndarray, seed: int) -> dict[str, float]:
    """Hide labels of a random 30 % of the cells and score both transfers on them."""
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = np.random.default_rng(seed).random(adata.n_obs) < HIDDEN
    adata.obs["partial"] = pd.Series(np.where(hidden, "unknown", truth), index=adata.obs_names)
    deepbid.transfer_labels(adata, "partial")
    predicted = adata.obs["partial_deepbid"].astype(str).to_numpy()[hidden]
    confidence = adata.obs["partial_deepbid_confidence"].to_numpy()[hidden]
    wrong = predicted != truth[hidden]
    weights = quintile_weights(confidence)
    codes = adata.obsm["X_deepbid"]
    harmony_right = knn_right(harmony, truth, hidden)
    single = singlets(adata)
    single = None if single is None else single[hidden]
    return {
        "hidden_cells": int(hidden.sum()),
        "accuracy_deepbid": float(1 - wrong.mean()),
        "accuracy_knn_harmony": float(harmony_right.mean()),
        "accuracy_knn_deepbid": float(knn_right(codes, truth, hidden).mean()),
        "accuracy_knn_deepbid_angle": float(
            knn_right(codes / np.linalg.norm(codes, axis=1, keepdims=True), truth, hidden).mean()
        ),
        "singlets_deepbid": singlet_accuracy(~wrong, single),
        "singlets_knn_harmony": singlet_accuracy(harmony_right, single),
        "unassigned": float((predicted == deepbid.transfer.UNASSIGNED).mean()),
        **{f"error_q{i + 1}": float(w @ wrong / w.sum()) for i, w in enumerate(weights)},
        "errors_in_q1": float(weights[0] @ wrong) / max(int(wrong.sum()), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", nargs="+", default=FILES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="few epochs (a smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for name in args.files:
        adata = ad.read_h5ad(SHARED / f"{name}.h5ad")
        deepbid.integrate(
            adata, "batch", progress=False, denoised=False, **(QUICK if args.quick else {})
        )
        # Harmony drops no cell here (every shared cell has counts), so rows line up
        harmony = run_harmony(adata, 0, args.quick)["embedding"]
        for seed in args.seeds:
            rows.append({"file": name, "seed": seed, **draw(adata, harmony, seed)})
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    save(rows, args.out, "label_transfer", markdown)


def markdown(results: pd.DataFrame) -> str:
    """Mean over seeds per file."""
    columns = ["accuracy_deepbid", "accuracy_knn_harmony", "accuracy_knn_deepbid"]
    columns += ["accuracy_knn_deepbid_angle", "singlets_deepbid", "singlets_knn_harmony"]
    columns += ["unassigned"]
    columns += [f"error_q{i}" for i in range(1, 6)] + ["errors_in_q1"]
    table = results.groupby("file", sort=False)[columns].mean()
    first = results.iloc[0]
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; "
        f"{results['seed'].nunique()} draws of hidden labels per file, mean over draws; "
        "accuracy_knn_*: 15-NN classifiers on Harmony's embedding and on deepbid's (by "
        "Euclidean distance and by angle); singlets_*: accuracy of deepbid and of the "
        "Harmony 15-NN on the hidden cells demuxlet called singlets (CellBench files); "
        "error_q1..q5: error rate of deepbid in each "
        "confidence quintile (q1 least confident, ties shared); errors_in_q1: share of "
        "deepbid's errors in q1.\n\n" + markdown_table(table) + "\n"
    )


if __name__ == "__main__":
    main()
