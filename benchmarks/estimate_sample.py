"""The K rule on a sample: does its answer change when it sees a fraction of the cells?

Above ``k_estimate.ESTIMATE_CELLS`` cells the K rule partitions a random sample and every
other cell joins the nearest centre of that partition; the cap sets the scans' cost on
large data. A lower cap is safe where the rule's answer on a sample is its answer on all
cells. The shared files and scenarios are all below the cap, so this script asks that
question at their size: it fits deepbid once per set and seed (defaults, K estimated),
then runs the rule (``k_estimate.initial_partition``, K estimated) on the integrated
embedding ``X_deepbid`` of the training cells, with every cell and with the cap at
``--fraction`` of them, at three seeds of the rule (the sample's draw and Leiden's).
Reports, per set and rule seed, K and the ARI against the labels both ways.

    python benchmarks/estimate_sample.py                 # fraction 0.5, fit seed 0
    python benchmarks/estimate_sample.py --only sc_mixology_3cl --out /tmp/e

Writes ``results/estimate_sample.csv`` (one row per set x rule seed) and ``.md``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from quality import datasets, provenance, save

from deepbid import DeepBID, k_estimate, metrics

HERE = Path(__file__).resolve().parent
#: Seeds of the rule each embedding is partitioned at.
RULE_SEEDS = (0, 1, 2)


def rule(z: np.ndarray, batch: np.ndarray, seed: int, cap: int) -> np.ndarray:
    """The K rule's labels ``(n,)`` of the ``(n, d)`` points with at most ``cap`` cells
    partitioned directly."""
    default = k_estimate.ESTIMATE_CELLS
    k_estimate.ESTIMATE_CELLS = cap
    try:
        return k_estimate.initial_partition(z, batch, None, seed)[0]
    finally:
        k_estimate.ESTIMATE_CELLS = default


def compare(name: str, adata, seed: int, fraction: float) -> list[dict]:
    """Rows of one set: per rule seed, K and ARI with all cells and on the sample."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DeepBID(seed=seed, progress=False).fit(adata, "batch")
    cells = model.train_view.cells
    z, batch = model.latent()[cells], model.train_view.batch_codes
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]
    cap = int(fraction * z.shape[0])
    rows = []
    for rule_seed in RULE_SEEDS:
        every, sample = rule(z, batch, rule_seed, z.shape[0]), rule(z, batch, rule_seed, cap)
        rows.append(
            {
                "dataset": name,
                "fit_seed": seed,
                "rule_seed": rule_seed,
                "cells": z.shape[0],
                "sample_cells": cap,
                "k_all": int(every.max()) + 1,
                "k_sample": int(sample.max()) + 1,
                "ari_all": round(metrics.ari(labels, every), 3),
                "ari_sample": round(metrics.ari(labels, sample), 3),
            }
        )
        print(rows[-1], flush=True)
    return rows


def table(results: pd.DataFrame) -> str:
    """Markdown: per set, K with all cells and on the sample at each rule seed, and ARI."""
    first = results.iloc[-1]
    lines = [
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; the K rule on "
        f"deepbid's embedding (fit seed {results['fit_seed'].iloc[0]}) with every cell and "
        f"on a sample of {results['sample_cells'].div(results['cells']).iloc[0]:.0%} of them, "
        f"at rule seeds {', '.join(map(str, RULE_SEEDS))}.",
        "",
        "| set | cells | K all cells | K sample | same K | mean ARI all cells | mean ARI sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.groupby("dataset", sort=False):
        same = (rows["k_all"] == rows["k_sample"]).sum()
        lines.append(
            f"| {name} | {rows['cells'].iloc[0]} | {'/'.join(map(str, rows['k_all']))} | "
            f"{'/'.join(map(str, rows['k_sample']))} | {same} of {len(rows)} | "
            f"{rows['ari_all'].mean():.3f} | {rows['ari_sample'].mean():.3f} |"
        )
    same = (results["k_all"] == results["k_sample"]).mean()
    lines += ["", f"Same K in {same:.0%} of {len(results)} comparisons."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.5, help="share of cells sampled")
    parser.add_argument("--seed", type=int, default=0, help="seed of the deepbid fits")
    parser.add_argument("--only", nargs="+", help="dataset or scenario names")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    stamp = provenance()
    rows = []
    for name, load in datasets(args.only).items():
        rows += compare(name, load(), args.seed, args.fraction)
    results = pd.DataFrame(rows).assign(**stamp)
    save(results, Path(args.out), "estimate_sample", table(results))


if __name__ == "__main__":
    main()
