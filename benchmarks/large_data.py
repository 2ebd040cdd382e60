"""Defaults that act on large data only, against their alternatives, on large simulated data.

Some defaults change nothing below tens of thousands of cells (how many cells an epoch
draws), so the shared files and quality.py's scenarios, all under 10,000 cells, cannot
judge them. This script simulates at ``--cells`` cells the quality.py scenarios where
less training could lose first (a type at 1 % of the cells; types nested in families
that only the division of clusters finds) and scaling.py's scenario (8 batches, two
types held by one batch), and fits each with the defaults and with each alternative of
:data:`VARIANTS`. Reports K, ARI against the simulated types, median iLISI of the
batches and the fit's seconds.

    python benchmarks/large_data.py                          # 100,000 cells, seed 0
    python benchmarks/large_data.py --cells 50000 --only sim_families --out /tmp/l

Writes ``results/large_data.csv`` (one row per scenario x variant x seed) and ``.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from quality import SCENARIOS, provenance, save
from scaling import SCENARIO

from deepbid import DeepBID, metrics
from deepbid.datasets import simulate

HERE = Path(__file__).resolve().parent
#: Scenarios simulated at the size asked for.
LARGE_SCENARIOS = {
    "sim_dominant_rare": SCENARIOS["sim_dominant_rare"],
    "sim_families": SCENARIOS["sim_families"],
    "scaling": SCENARIO,
}
#: Settings of each variant fitted (the defaults, and each large-data default's
#: alternative).
VARIANTS = {
    "default": {},
    "every epoch draws up to 100,000 cells (0.2.0)": {"epoch_cells": 100_000},
}


def fit(adata, seed: int, settings: dict) -> dict[str, float]:
    """K, ARI, median iLISI and seconds of one fit of ``adata`` (K estimated)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DeepBID(seed=seed, progress=False, **settings).fit(adata, "batch")
    seconds = time.perf_counter() - start
    cells = model.train_view.cells
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]
    batch = adata.obs["batch"].astype(str).to_numpy()[cells]
    return {
        "n_clusters": model.cluster_count,
        "ari": round(metrics.ari(labels, model.clusters()[cells]), 4),
        "ilisi_median": round(float(np.median(metrics.lisi(model.latent()[cells], batch))), 3),
        "seconds": round(seconds, 1),
    }


def table(results: pd.DataFrame) -> str:
    """Markdown: per scenario and variant, K, ARI, iLISI and seconds (means over seeds)."""
    last = results.iloc[-1]
    lines = [
        f"commit {last['commit']}, {last['date']}, {last['cores']} cores, "
        f"{last['threads']} torch thread(s); {results['cells'].iloc[0]:,} simulated cells, "
        f"seed(s) {', '.join(map(str, sorted(results['seed'].unique())))}, K estimated; "
        "means over seeds.",
        "",
        "| scenario | variant | K | ARI | median iLISI | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for (name, variant), rows in results.groupby(["scenario", "variant"], sort=False):
        lines.append(
            f"| {name} | {variant} | {rows['n_clusters'].mean():.1f} | {rows['ari'].mean():.3f} "
            f"| {rows['ilisi_median'].mean():.2f} | {rows['seconds'].mean():.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(LARGE_SCENARIOS))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    stamp = provenance()
    rows = []
    for name, scenario in LARGE_SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        adata = simulate(**{**scenario, "n_cells": args.cells})
        for seed in range(args.seeds):
            for variant, settings in VARIANTS.items():
                row = {"scenario": name, "variant": variant, "seed": seed, "cells": args.cells}
                rows.append(row | fit(adata, seed, settings))
                print(rows[-1], flush=True)
    results = pd.DataFrame(rows).assign(**stamp)
    save(results, Path(args.out), "large_data", table(results))


if __name__ == "__main__":
    main()
