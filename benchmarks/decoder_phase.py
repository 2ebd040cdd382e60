"""Held-out counts with and without the decoder phase, at several thinning rates and lengths.

On every count file of ``../shared/data`` and on the simulated data of ``denoise.py``
(1,500 and 6,000 cells), 10 % of the non-zero counts are hidden (set to zero) and
deepbid is fitted on the rest with ``decoder_epochs=0``. The decoder is then trained
again from that same fit by ``Trainer.fit_decoder`` (what ``fit`` runs last) for each
``input_dropout`` x length of :data:`VARIANTS`, and each predicts the hidden counts with
its own-batch means at the cell's library (Pearson r of log1p, mean error; as
``denoise.py`` (c)). The encoder, embedding and clusters are the same in every row.
The dc_villani file holds log-normalised values, not counts, so it has no held-out counts.

    python benchmarks/decoder_phase.py --seeds 0 1 2

Writes results/decoder_phase.csv and .md (with the commit).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from denoise import DATA, deepbid_heldout, heldout_scores, hide_entries, on_model_genes
from mapping import markdown_table, save
from quality import SHARED
from tqdm.auto import tqdm

from deepbid import DeepBID
from deepbid.datasets import simulate
from deepbid.settings import scaled_epochs
from deepbid.train import Trainer

HERE = Path(__file__).resolve().parent
#: (input_dropout, decoder epochs; None: the default for the data size).
VARIANTS = [(0.5, None), (0.3, None), (0.7, None), (0.5, 5), (0.5, 20)]


def data_sets(seed: int) -> dict[str, ad.AnnData]:
    out = {
        path.stem: ad.read_h5ad(path)
        for path in sorted(SHARED.glob("*.h5ad"))
        if "lognorm" not in path.stem
    }
    for n_cells in (1500, 6000):
        out[f"simulated {n_cells}"] = simulate(n_cells=n_cells, seed=seed, **DATA)
    return out


def run(name: str, adata: ad.AnnData, seed: int) -> list[dict]:
    """One data set: the fit without a decoder phase, then each variant's phase."""
    masked, rows, cols, hidden = hide_entries(adata, seed)
    library = np.asarray(masked.X.sum(axis=1)).ravel()
    model = DeepBID(seed=seed, progress=False, decoder_epochs=0).fit(masked, "batch")
    _, r, c, counts = on_model_genes(masked, model, rows, cols, hidden)
    fitted = copy.deepcopy(model.module.state_dict())

    def scored(rate: float, epochs: int, given: int | None) -> dict:
        return {
            "data": name,
            "seed": seed,
            "variant": f"{rate:g} / {'default' if given is None else given}",
            "input_dropout": rate,
            "decoder_epochs": epochs,
            **heldout_scores(deepbid_heldout(model, library, r, c), counts),
        }

    out = [scored(0.0, 0, 0)]
    for rate, given in VARIANTS:
        epochs = given or scaled_epochs("decoder_epochs", model.train_view.n_total)
        model.module.load_state_dict(fitted)
        settings = dataclasses.replace(model.settings, input_dropout=rate, decoder_epochs=epochs)
        trainer = Trainer(model.module, settings, model.device, seed)
        with tqdm(disable=True) as bar:
            trainer.fit_decoder(model.train_view, bar)
        out.append(scored(rate, epochs, given))
    for row in out:
        print(row, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = [
        row
        for seed in args.seeds
        for name, adata in data_sets(seed).items()
        for row in run(name, adata, seed)
    ]
    save(rows, Path(args.out), "decoder_phase", markdown)


def markdown(table: pd.DataFrame) -> str:
    """Held-out r and mean error per variant (rows) and data set (columns), mean over seeds."""
    r, bias = (
        table.pivot_table(index="variant", columns="data", values=v, sort=False).rename_axis(
            "input_dropout / decoder epochs"
        )
        for v in ("heldout_r", "heldout_bias")
    )
    first = table.iloc[0]
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; seeds "
        f"{sorted(table['seed'].unique().tolist())}, mean over seeds. Held-out r log1p (0 / 0: no "
        "decoder phase, the decoder as clustering left it; default: 10 epochs up to 5,000 "
        "cells, 9 at 6,000):\n\n"
        + markdown_table(r.assign(mean=r.mean(axis=1)))
        + "\n\nMean error of the prediction (counts):\n\n"
        + markdown_table(bias)
        + "\n"
    )


if __name__ == "__main__":
    main()
