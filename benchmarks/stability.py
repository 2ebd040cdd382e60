"""The same answer wherever it runs: deepbid with its cells as given and shuffled.

Every shared file and quality.py's simulated scenarios, fitted with the defaults (K
estimated) at each seed twice: with the cells in the order they come, and in one
random order (the same permutation for every seed). A new order changes every
minibatch, the kNN ties and the cells each sample draws, as another machine's
rounding changes every sum: what stays the same across the two orders is what a
user gets on any machine. Reports, per fit, the number of clusters, the ARI
against the labels and the median iLISI; per seed, the ARI between the two orders' clusters (cells
matched by name); per set, the seed-to-seed sd of the ARI. Targets: the same K in
both orders, ARI between them >= 0.97, seed-to-seed sd of ARI <= 0.02.

    python benchmarks/stability.py                      # all sets, seeds 0-2
    python benchmarks/stability.py --only sc_mixology_3cl --seeds 1 --out /tmp/s
    python benchmarks/stability.py --tables-from a/stability.csv b/stability.csv

Writes ``results/stability.csv`` (one row per set x seed x order) and
``results/stability.md``.
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
#: Seed of the one permutation of the cells every set is also fitted in.
ORDER_SEED = 12345
#: Targets of the table's last columns.
MIN_ARI_BETWEEN = 0.97
MAX_SEED_SD = 0.02


def fit_clusters(adata: ad.AnnData, seed: int) -> tuple[np.ndarray, int, float, float]:
    """deepbid's clusters ``(n_obs,)`` of ``adata`` (-1: cells left out), its K, the
    seconds of the fit and the median iLISI of its embedding."""
    start = time.perf_counter()
    model = DeepBID(seed=seed, progress=False).fit(adata, "batch")
    seconds = time.perf_counter() - start
    cells = model.train_view.cells
    batch = adata.obs["batch"].astype(str).to_numpy()[cells]
    ilisi = float(np.median(metrics.lisi(model.latent()[cells], batch)))
    return model.clusters(), model.cluster_count, seconds, ilisi


def both_orders(adata: ad.AnnData, seed: int) -> list[dict]:
    """One row per order of the cells: K, ARI against the labels, median iLISI, and the
    ARI between the two orders' clusters on the cells both kept (the same in both rows)."""
    order = np.random.default_rng(ORDER_SEED).permutation(adata.n_obs)
    given, k_given, s_given, i_given = fit_clusters(adata, seed)
    shuffled, k_shuffled, s_shuffled, i_shuffled = fit_clusters(adata[order].copy(), seed)
    back = np.empty_like(shuffled)
    back[order] = shuffled
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    kept = (given >= 0) & (back >= 0)
    between = metrics.ari(given[kept], back[kept])
    return [
        {
            "order": name,
            "n_clusters": k,
            "ari": metrics.ari(labels[kept], clusters[kept]),
            "ari_between_orders": between,
            "ilisi_median": ilisi,
            "seconds": seconds,
        }
        for name, clusters, k, seconds, ilisi in (
            ("given", given, k_given, s_given, i_given),
            ("shuffled", back, k_shuffled, s_shuffled, i_shuffled),
        )
    ]


def table(results: pd.DataFrame) -> str:
    """Markdown: per set, K and ARI of each seed in both orders, the ARI between the
    orders, the seed-to-seed sd, and whether the targets are met."""
    stamp = results.iloc[0]
    # rows of several runs (--tables-from) name every commit that made them
    commits = " + ".join(dict.fromkeys(results["commit"].astype(str)))
    lines = [
        f"commit {commits}, {stamp['date']}, {stamp['cores']} cores, "
        f"{stamp['threads']} torch thread(s); defaults, K "
        "estimated; each seed fitted with the cells as given and in one shuffled order.",
        "",
        "Per seed: K given / shuffled, ARI given / shuffled, ARI between the two orders.",
        "",
        "| set | "
        + " | ".join(f"seed {s}" for s in sorted(results["seed"].unique()))
        + " | same K | min ARI between | sd of ARI over seeds | targets met "
        + "| mean ARI / iLISI (as given) |",
        "|---|" + "---|" * (results["seed"].nunique() + 5),
    ]
    seeds = sorted(results["seed"].unique())
    for name, rows in results.groupby("dataset", sort=False):
        cells, same_k = [], True
        for seed in seeds:
            pair = rows[rows["seed"] == seed]
            if pair.empty:
                cells.append("not run")
                continue
            given, shuffled = (pair[pair["order"] == o].iloc[0] for o in ("given", "shuffled"))
            same_k &= given["n_clusters"] == shuffled["n_clusters"]
            cells.append(
                f"K {given['n_clusters']}/{shuffled['n_clusters']}, ARI {given['ari']:.3f}/"
                f"{shuffled['ari']:.3f}, between {given['ari_between_orders']:.3f}"
            )
        low = rows["ari_between_orders"].min()
        # the sd over seeds of each order's ARI, the larger of the two: unknown (NaN)
        # from one seed, and then no verdict
        sd = rows.groupby("order")["ari"].std(ddof=1).max()
        met = same_k and low >= MIN_ARI_BETWEEN and sd <= MAX_SEED_SD
        verdict = "–" if np.isnan(sd) else ("yes" if met else "no")
        given = rows[rows["order"] == "given"]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {'yes' if same_k else 'no'} | {low:.3f} | {_number(sd, 3)} | {verdict}"
            + f" | {given['ari'].mean():.3f} / {_number(given['ilisi_median'].mean(), 2)} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float, digits: int) -> str:
    return "–" if np.isnan(value) else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on")
    parser.add_argument("--only", nargs="+", help="dataset or scenario names")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--tables-from",
        nargs="+",
        metavar="CSV",
        help="fit nothing: write the table of these runs' rows together (sets run apart)",
    )
    args = parser.parse_args()
    if args.tables_from:
        results = pd.concat([pd.read_csv(f) for f in args.tables_from])
        save(results, Path(args.out), "stability", table(results))
        return
    stamp = provenance()
    rows = []
    for name, load in datasets(args.only).items():
        adata = load()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for row in both_orders(adata, seed):
                    rows.append({"dataset": name, "seed": seed, **row, **stamp})
                    print(
                        {
                            k: (round(v, 3) if isinstance(v, float) else v)
                            for k, v in rows[-1].items()
                        },
                        flush=True,
                    )
    save(pd.DataFrame(rows), Path(args.out), "stability", table(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
