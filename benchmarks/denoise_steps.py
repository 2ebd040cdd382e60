"""Held-out denoising against training length: does deepbid's decoder learn the zeros it is shown?

Same data and masking as ``denoise.py`` (c): ``simulate(n_cells=--cells, ...)``, 10 % of
the non-zero counts set to zero, deepbid fitted on the rest, its own-batch means at the
hidden entries compared with the hidden counts (Pearson r of log1p, mean absolute error,
mean error). Each data set is fitted with deepbid's default epochs for its size and with
fewer, given explicitly (``layer_epochs / pretrain_epochs / epochs``): ``3/5/5`` is about
the optimiser steps the 1,500-cell data set of ``denoise.py`` gets by default.

    python benchmarks/denoise_steps.py --cells 6000 --seeds 0 1 2

Writes results/denoise_steps.csv and .md (with the commit).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from denoise import DATA, deepbid_heldout, heldout_scores, hide_entries, on_model_genes
from mapping import markdown_table, save

from deepbid import DeepBID
from deepbid.datasets import simulate

HERE = Path(__file__).resolve().parent
#: Training lengths compared (``None``: deepbid's default for the data size).
LENGTHS = {
    "default": None,
    "3/5/5": dict(layer_epochs=3, pretrain_epochs=5, epochs=5),
    "1/2/3": dict(layer_epochs=1, pretrain_epochs=2, epochs=3),
}


def run(n_cells: int, seed: int) -> list[dict]:
    """One data set: every training length's held-out scores."""
    masked, rows, cols, hidden = hide_entries(simulate(n_cells=n_cells, seed=seed, **DATA), seed)
    library = np.asarray(masked.X.sum(axis=1)).ravel()
    out = []
    for name, epochs in LENGTHS.items():
        model = DeepBID(seed=seed, progress=False, **(epochs or {})).fit(masked, "batch")
        _, r, c, counts = on_model_genes(masked, model, rows, cols, hidden)
        steps = int(sum(np.sum(terms["steps"]) for terms in model.history.values()))
        scores = heldout_scores(deepbid_heldout(model, library, r, c), counts)
        out.append({"seed": seed, "training": name, "steps": steps, **scores})
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = [row for seed in args.seeds for row in run(args.cells, seed)]
    save(rows, Path(args.out), "denoise_steps", lambda table: markdown(table, args.cells))


def markdown(table: pd.DataFrame, n_cells: int) -> str:
    """Mean over seeds per training length."""
    first = table.iloc[0]
    mean = table.drop(columns=["seed", "commit", "date", "cores", "versions"], errors="ignore")
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; "
        f"{n_cells} cells, seeds {sorted(table['seed'].unique().tolist())}, mean over seeds.\n\n"
        + markdown_table(mean.groupby("training", sort=False).mean())
        + "\n"
    )


if __name__ == "__main__":
    main()
