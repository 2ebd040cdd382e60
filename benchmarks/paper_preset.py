"""The paper's configuration (``preset="paper"``, K given) against deepbid's defaults (K
estimated) on every shared file and quality.py's simulated scenarios.

For each set and seed: ARI of the clusters against the labels, median iLISI of the
embedding (``obsm["X_deepbid"]``), K, and the seconds of the fit, for both.

    python benchmarks/paper_preset.py                 # all sets, seed 0
    python benchmarks/paper_preset.py --seeds 3 --only sc_mixology_3cl
    python benchmarks/paper_preset.py --seeds 3 --default-from results/quality.csv
    python benchmarks/paper_preset.py --default-from q.csv --paper-from p.csv   # tables

``--default-from`` fits the paper's configuration alone and takes the defaults' rows
(same seeds) from a ``quality.py`` run of the same code.

Writes ``results/paper_preset.csv`` (one row per set x seed x configuration) and
``results/paper_preset.md``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from quality import datasets, provenance, save

from deepbid import DeepBID, metrics

HERE = Path(__file__).resolve().parent


def fit_and_score(adata: ad.AnnData, seed: int, paper: bool) -> dict:
    """One fit (the paper's configuration with the true K, or the defaults) and its scores
    on the cells it kept."""
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    options = {"preset": "paper", "n_clusters": np.unique(labels).size} if paper else {}
    start = time.perf_counter()
    model = DeepBID(seed=seed, progress=False, **options).fit(adata, "batch")
    seconds = time.perf_counter() - start
    cells = model.train_view.cells
    batch = adata.obs["batch"].astype(str).to_numpy()[cells]
    return {
        "configuration": "paper (K given)" if paper else "default (K estimated)",
        "n_clusters": model.cluster_count,
        "ari": metrics.ari(labels[cells], model.clusters()[cells]),
        "ilisi_median": float(np.median(metrics.lisi(model.latent()[cells], batch))),
        "seconds": seconds,
    }


def defaults_from(path: Path, seeds: int) -> list[dict]:
    """The defaults' rows of a ``quality.py`` run."""
    runs = pd.read_csv(path)
    given = runs[(runs["variant"] == "default") & (runs["seed"] < seeds)]
    given = given.assign(configuration="default (K estimated)")
    columns = ["dataset", "seed", "configuration", "n_clusters", "ari", "ilisi_median"]
    columns += ["seconds", "commit", "date", "cores", "threads"]
    return given[columns].to_dict("records")


def table(results: pd.DataFrame) -> str:
    """Markdown: per set that both configurations ran on, the mean over seeds of each
    configuration's scores."""
    both = results.groupby("dataset")["configuration"].transform("nunique")
    results = results[both == results["configuration"].nunique()]
    stamp = results[results["configuration"].str.startswith("paper")].iloc[0]
    mean = results.groupby(["dataset", "configuration"], sort=False).mean(numeric_only=True)
    configurations = list(results["configuration"].unique())
    head = " | ".join(f"{c}: K / ARI / iLISI / s" for c in configurations)
    commits = results.groupby("configuration", sort=False)["commit"].agg(
        lambda c: ", ".join(sorted(set(map(str, c))))
    )
    lines = [
        "; ".join(f"{c}: commit {commit}" for c, commit in commits.items()) + "; "
        f"{stamp['date']}, {stamp['cores']} cores, {stamp['threads']} torch thread(s); "
        f"{results['seed'].nunique()} seed(s), mean over seeds.",
        "",
        f"| set | {head} |",
        "|---|" + "---|" * len(configurations),
    ]
    for name in results["dataset"].unique():
        cells = [
            "{n_clusters:.1f} / {ari:.3f} / {ilisi_median:.2f} / {seconds:.0f}".format(
                **mean.loc[(name, c)]
            )
            for c in configurations
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    overall = results.groupby("configuration", sort=False)[["ari", "seconds"]].mean()
    cells = [
        f"ARI {overall.loc[c, 'ari']:.3f}, {overall.loc[c, 'seconds']:.0f} s"
        for c in configurations
    ]
    lines.append("| mean | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", nargs="+", help="dataset or scenario names")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--default-from", metavar="CSV", help="stability.csv of the defaults")
    parser.add_argument(
        "--paper-from", metavar="CSV", help="fit nothing: the paper rows of an earlier run"
    )
    args = parser.parse_args()
    rows = [] if args.default_from is None else defaults_from(Path(args.default_from), args.seeds)
    if args.paper_from:
        earlier = pd.read_csv(args.paper_from)
        rows += earlier[earlier["configuration"].str.startswith("paper")].to_dict("records")
        save(pd.DataFrame(rows), Path(args.out), "paper_preset", table(pd.DataFrame(rows)))
        return
    stamp = provenance()
    for name, load in datasets(args.only).items():
        adata = load()
        for seed in range(args.seeds):
            for paper in (False, True) if args.default_from is None else (True,):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    row = fit_and_score(adata, seed, paper)
                rows.append({"dataset": name, "seed": seed, **row, **stamp})
                print(rows[-1], flush=True)
    save(pd.DataFrame(rows), Path(args.out), "paper_preset", table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
