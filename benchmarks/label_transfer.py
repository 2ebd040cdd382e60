"""Label transfer by deepbid's clusters against a kNN classifier on Harmony's embedding.

On each file, 30 % of the labels are hidden at random (5 seeds); the hidden cells are
labelled by :func:`deepbid.transfer_labels` (from one integration per file: it never
sees the labels) and by a 15-nearest-neighbour classifier trained on the labelled cells
of the Harmony embedding (50-PC PCA of the same genes). Scored on the hidden cells:
accuracy of each, and deepbid's error rate in each quintile of its confidence (q1 the
least confident fifth).

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
from sklearn.neighbors import KNeighborsClassifier

import deepbid

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
FILES = ["pancreas_baron_human_4donors", "sc_mixology_5cl_celseq2_3plates"]
#: Share of the labels hidden in each draw.
HIDDEN = 0.3
#: Settings of a ``--quick`` run (the CI smoke test), else the defaults.
QUICK = dict(layer_epochs=1, pretrain_epochs=2, epochs=3)


def quintile_errors(confidence: np.ndarray, wrong: np.ndarray) -> list[float]:
    """Error rate in each fifth of the cells ordered by rising confidence."""
    order = np.argsort(confidence, kind="stable")
    return [float(wrong[part].mean()) for part in np.array_split(order, 5)]


def draw(adata: ad.AnnData, harmony: np.ndarray, seed: int) -> dict[str, float]:
    """Hide labels of a random 30 % of the cells and score both transfers on them."""
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    hidden = np.random.default_rng(seed).random(adata.n_obs) < HIDDEN
    adata.obs["partial"] = pd.Series(np.where(hidden, "unknown", truth), index=adata.obs_names)
    deepbid.transfer_labels(adata, "partial")
    predicted = adata.obs["partial_deepbid"].astype(str).to_numpy()[hidden]
    confidence = adata.obs["partial_deepbid_confidence"].to_numpy()[hidden]
    knn = KNeighborsClassifier(n_neighbors=15).fit(harmony[~hidden], truth[~hidden])
    wrong = predicted != truth[hidden]
    errors = quintile_errors(confidence, wrong)
    return {
        "hidden_cells": int(hidden.sum()),
        "accuracy_deepbid": float(1 - wrong.mean()),
        "accuracy_knn_harmony": float((knn.predict(harmony[hidden]) == truth[hidden]).mean()),
        "unassigned": float((predicted == deepbid.transfer.UNASSIGNED).mean()),
        **{f"error_q{i + 1}": e for i, e in enumerate(errors)},
        "errors_in_q1": float(wrong[confidence <= np.quantile(confidence, 0.2)].sum())
        / max(int(wrong.sum()), 1),
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
    columns = ["accuracy_deepbid", "accuracy_knn_harmony", "unassigned"]
    columns += [f"error_q{i}" for i in range(1, 6)] + ["errors_in_q1"]
    table = results.groupby("file", sort=False)[columns].mean()
    first = results.iloc[0]
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; "
        f"{results['seed'].nunique()} draws of hidden labels per file, mean over draws; "
        "error_q1..q5: error rate of deepbid in each confidence quintile (q1 least "
        "confident); errors_in_q1: share of deepbid's errors in q1.\n\n"
        + markdown_table(table)
        + "\n"
    )


if __name__ == "__main__":
    main()
