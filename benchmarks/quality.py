"""Quality of deepbid on the real datasets in ../shared/data (or given .h5ad paths).

Runs deepbid with its defaults (K estimated; K = 4 given for the DC file, whose
benchmark fixes it) for several seeds, and the unintegrated baseline (PCA of the
same log-normalised genes + Leiden at resolution 1) in the same process.
Writes ``results/quality.csv`` (one row per dataset x seed),
``results/quality_baseline.csv`` and ``results/quality.md`` (summary and checks).

    python benchmarks/quality.py                 # all shared datasets, 5 seeds
    python benchmarks/quality.py --seeds 2 my.h5ad
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import anndata as ad
import pandas as pd

from deepbid import DeepBID
from deepbid.evaluate import evaluate

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
#: Benchmarks that fix K (the issue's protocol); every other file has K estimated.
GIVEN_K = {"dc_villani_2batch_lognorm": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help=".h5ad files (default: all in shared/data)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    paths = [Path(p) for p in args.paths] or sorted(SHARED.glob("*.h5ad"))
    rows, baseline = [], []
    for path in paths:
        adata = ad.read_h5ad(path)
        name = path.stem
        for seed in range(args.seeds):
            model = DeepBID(n_clusters=GIVEN_K.get(name), seed=seed, progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, table = evaluate(
                    adata, model, "batch", layer=None, label_key="cell_type", figures=None
                )
            ours, base = table.loc["deepbid"], table.loc["unintegrated PCA + Leiden"]
            rows.append({"dataset": name, "seed": seed, **ours.to_dict()})
            baseline.append({"dataset": name, "seed": seed, **base.drop("seconds").to_dict()})
            print(
                pd.DataFrame(rows[-1:]).to_string(
                    index=False, header=len(rows) == 1, float_format="%.3f"
                ),
                flush=True,
            )
    columns = [
        "dataset",
        "seed",
        "n_clusters",
        "ari",
        "nmi",
        "ilisi_median",
        "clisi_median",
        "seconds",
    ]
    results = pd.DataFrame(rows)[columns]
    base = pd.DataFrame(baseline)[columns[:-1]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "quality.csv", index=False)
    base.to_csv(out / "quality_baseline.csv", index=False)
    (out / "quality.md").write_text(summary(results, base))
    print(summary(results, base))


def summary(results: pd.DataFrame, base: pd.DataFrame) -> str:
    """Markdown: per dataset, deepbid mean and sd over seeds against the baseline."""
    metrics = ["n_clusters", "ari", "nmi", "ilisi_median", "clisi_median"]
    ours = results.groupby("dataset")[metrics + ["seconds"]].agg(["mean", "std"])
    theirs = base.groupby("dataset")[metrics].mean()
    lines = [
        "| dataset | K | ARI (sd) | NMI | median iLISI | median cLISI | seconds "
        "| PCA+Leiden K | PCA+Leiden ARI | PCA iLISI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ours.index:
        o, t = ours.loc[name], theirs.loc[name]
        lines.append(
            f"| {name} | {o[('n_clusters', 'mean')]:.1f} | {o[('ari', 'mean')]:.3f} "
            f"({o[('ari', 'std')]:.3f}) | {o[('nmi', 'mean')]:.3f} "
            f"| {o[('ilisi_median', 'mean')]:.3f} | {o[('clisi_median', 'mean')]:.3f} "
            f"| {o[('seconds', 'mean')]:.1f} | {t['n_clusters']:.1f} | {t['ari']:.3f} "
            f"| {t['ilisi_median']:.3f} |"
        )
    n_seeds = results.groupby("dataset").size().max()
    return (
        f"deepbid defaults, {n_seeds} seeds per dataset (mean, sd over seeds); baseline: PCA "
        "(50) of the same log-normalised genes, Leiden at resolution 1.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
