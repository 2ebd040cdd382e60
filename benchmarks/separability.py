"""Can the types that share one of deepbid's clusters be told apart at all?

Fits deepbid with its defaults (K estimated) and, in every final cluster where two
labelled types each hold at least ``--min-cells`` cells and a tenth of the cluster,
measures how far the two largest of them overlap:

- ``p_mode``: the p-value of the division's own test of one mode on the cluster's cells
  in ``X_deepbid`` (its 2-means line and first components in the cluster's PCA,
  Silverman's test on held-out cells; step 8 of the README's "What deepbid does");
- ``separation``: the distance between the two types' means along the line joining
  them, in within-type sd, the line found on half of the pair's cells and measured on
  the other half (an even mixture of two equal Gaussians has two modes only beyond 2),
  in ``X_deepbid`` and in the codes before the final alignment (``separation_codes``);
- ``kmeans2_ari``: 2-means on the pair's own cells in ``X_deepbid`` against their types;
- ``lda_*``: 5-fold cross-validated accuracy of a supervised linear classifier
  (shrinkage LDA) telling the two types apart on ``X_deepbid``, on the codes before the
  final alignment, on the log-normalised
  genes deepbid selected, and on every gene of the file (at most the 5,000 of highest
  mean): the best a linear boundary does when it sees the labels, so how much of the
  overlap is in the data rather than in the embedding.

    python benchmarks/separability.py                       # close types, RNA mixtures
    python benchmarks/separability.py --only sc_mixology_3cl --seeds 0
    python benchmarks/separability.py --set final_scaling=False --out results/x

Writes ``results/separability.{csv,md}``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from mapping import markdown_table, save
from quality import _parse, datasets, fit
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import cross_val_score

from deepbid import k_estimate, metrics
from deepbid.train import embed

HERE = Path(__file__).resolve().parent
#: Genes of the whole file given to the classifier, at most (LDA's covariance is
#: quadratic in them).
MAX_GENES = 5000


def lda_accuracy(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Mean 5-fold accuracy of shrinkage LDA on ``(n, d)`` ``x`` against ``labels``."""
    folds = min(5, int(np.unique(labels, return_counts=True)[1].min()))
    model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    return float(cross_val_score(model, x, labels, cv=folds).mean())


def held_out_separation(z: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Distance of the two types' means along the line joining them, in within-type sd:
    the line from one half of the ``(n, d)`` points ``z``, the distance on the other."""
    rng = np.random.default_rng(seed)
    half = rng.random(len(labels)) < 0.5
    first, second = np.unique(labels)
    line = z[half & (labels == second)].mean(0) - z[half & (labels == first)].mean(0)
    y = z[~half] @ line
    kept = labels[~half]
    sd = np.sqrt((y[kept == first].var() + y[kept == second].var()) / 2)
    return float((y[kept == second].mean() - y[kept == first].mean()) / sd)


def mode_pvalue(z: np.ndarray, seed: int) -> float:
    """The division's test of one mode on the ``(n, d)`` cells of one cluster."""
    n_components = min(k_estimate.MODE_COMPONENTS, z.shape[0] - 1, z.shape[1])
    y = PCA(n_components, random_state=seed).fit_transform(z)
    return k_estimate._mode_test(y, np.random.default_rng(seed), seed)[0]


def log_normalised(adata, genes: list[str] | None) -> np.ndarray:
    """Dense log1p of counts per 10⁴ on ``genes`` (``None``: the ``MAX_GENES`` of
    highest mean)."""
    view = adata.copy()
    sc.pp.normalize_total(view, target_sum=1e4)
    sc.pp.log1p(view)
    if genes is None:
        means = np.asarray(view.X.mean(axis=0)).ravel()
        genes = view.var_names[np.argsort(means)[::-1][:MAX_GENES]]
    x = view[:, list(genes)].X
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def shared_clusters(
    clusters: np.ndarray, types: np.ndarray, min_cells: int
) -> list[tuple[int, str, str]]:
    """``(cluster, type, type)`` for each cluster where two types each hold at least
    ``min_cells`` cells and a tenth of it: its two largest."""
    found = []
    for cluster in np.unique(clusters):
        counts = pd.Series(types[clusters == cluster]).value_counts()
        large = counts[(counts >= min_cells) & (counts >= 0.1 * counts.sum())]
        if len(large) >= 2:
            found.append((int(cluster), str(large.index[0]), str(large.index[1])))
    return found


def measure(name: str, adata, seed: int, min_cells: int, settings: dict) -> list[dict]:
    """One row per cluster of the fit (with ``settings``) that holds two types."""
    model, _ = fit(adata, seed, settings)
    cells = model.train_view.cells
    kept = adata[cells]
    z = model.latent()[cells]
    codes = embed(model.module, model.train_view, model.device).cpu().numpy()
    clusters = model.clusters()[cells]
    types = kept.obs["cell_type"].astype(str).to_numpy()
    selected = log_normalised(kept, model.genes)
    whole = log_normalised(kept, None)
    rows = []
    for cluster, first, second in shared_clusters(clusters, types, min_cells):
        members = clusters == cluster
        pair = members & np.isin(types, [first, second])
        two = KMeans(2, n_init=4, random_state=seed).fit_predict(z[pair])
        rows.append(
            {
                "dataset": name,
                "seed": seed,
                "settings": " ".join(f"{k}={v}" for k, v in settings.items()),
                "n_clusters": int(np.unique(clusters).size),
                "cluster": cluster,
                "cluster_cells": int(members.sum()),
                "types": f"{first} ({(types[members] == first).sum()}) + "
                f"{second} ({(types[members] == second).sum()})",
                "p_mode": mode_pvalue(z[members], seed),
                "separation": held_out_separation(z[pair], types[pair], seed),
                "separation_codes": held_out_separation(codes[pair], types[pair], seed),
                "kmeans2_ari": metrics.ari(types[pair], two),
                "lda_embedding": lda_accuracy(z[pair], types[pair], seed),
                "lda_codes": lda_accuracy(codes[pair], types[pair], seed),
                "lda_selected_genes": lda_accuracy(selected[pair], types[pair], seed),
                "lda_all_genes": lda_accuracy(whole[pair], types[pair], seed),
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown(results: pd.DataFrame) -> str:
    """One line per cluster holding two types, named by dataset, seed and types."""
    table = results.assign(
        pair=results["dataset"] + ", seed " + results["seed"].astype(str) + ": " + results["types"]
    ).set_index("pair")[
        ["n_clusters", "cluster_cells", "p_mode", "separation", "separation_codes"]
        + ["kmeans2_ari", "lda_embedding", "lda_codes", "lda_selected_genes", "lda_all_genes"]
    ]
    first = results.iloc[0]
    changed = first.get("settings")
    settings = f" with {changed}" if isinstance(changed, str) and changed else ""
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; deepbid's "
        f"defaults{settings}, K estimated; one line per final cluster holding two labelled "
        "types (the two largest, each at least --min-cells cells and a tenth of the "
        "cluster).\n\n" + markdown_table(table) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["sim_close_6batches", "sim_rna_mixtures"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--min-cells", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="override DeepBID settings"
    )
    args = parser.parse_args()
    settings = {k: _parse(v) for k, v in (item.split("=", 1) for item in args.set)}
    rows = [
        row
        for name, load in datasets(args.only).items()
        for seed in args.seeds
        for row in measure(name, load(), seed, args.min_cells, settings)
    ]
    save(rows, Path(args.out), "separability", markdown)


if __name__ == "__main__":
    main()
