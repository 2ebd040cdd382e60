"""Where the ARI is lost: the representation, before any clustering rule.

k-means with the true number of types is run on each representation of the same
cells and genes deepbid reads (its ``train_view``), on all cells and inside each
batch alone (cell-weighted mean over batches; no batch effect can matter there):

- ``PCA``: 50 principal components of deepbid's encoder input (log1p of counts per
  10^4 on its selected genes), as scanpy would compute them;
- ``whitened PCA``: the same components scaled to unit variance, so that every
  direction weighs the same in a distance, as it may in a network's code;
- ``pretrained codes``: deepbid's codes after pretraining alone (``epochs=0``);
- ``X_deepbid``: the integrated embedding of a default fit;

and deepbid's own clusters (K estimated) are scored the same way. The last column
locates deepbid's misassigned cells (cells outside their cluster's majority type) by
sequencing depth: the median, over those cells, of their library size's percentile
within their batch (50: no relation to depth; empty for non-count input).

    python benchmarks/representation.py              # the shared files, 3 seeds
    python benchmarks/representation.py --seeds 1 --only sc_mixology_3cl

Writes results/representation.csv and results/representation.md (with the commit).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from mapping import markdown_table
from quality import datasets, provenance
from scipy.stats import rankdata
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from deepbid import DeepBID, metrics

HERE = Path(__file__).resolve().parent
#: Principal components of the PCA representations (scanpy's default).
N_COMPONENTS = 50


def kmeans_ari(x: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """ARI of k-means with the true number of types on the ``(n, d)`` points."""
    k = np.unique(labels).size
    return metrics.ari(labels, KMeans(k, n_init=10, random_state=seed).fit_predict(x))


def within_batches(score, labels: np.ndarray, batch: np.ndarray, *arrays) -> float:
    """Cell-weighted mean over batches of ``score(labels, *arrays)`` on each batch's cells
    (batches holding a single type are skipped)."""
    values, weights = [], []
    for name in np.unique(batch):
        cells = batch == name
        if np.unique(labels[cells]).size > 1:
            values.append(score(labels[cells], *(a[cells] for a in arrays)))
            weights.append(cells.sum())
    return float(np.average(values, weights=weights))


def majority_types(clusters: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(n,)`` the most common label of each cell's cluster."""
    return pd.crosstab(clusters, labels).idxmax(axis=1).loc[clusters].to_numpy()


def depth_percentiles(library: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """``(n,)`` each cell's library size as a percentile of its batch's."""
    percentile = np.empty(len(library))
    for name in np.unique(batch):
        cells = batch == name
        percentile[cells] = 100 * (rankdata(library[cells]) - 0.5) / cells.sum()
    return percentile


def error_depth(clusters: np.ndarray, labels: np.ndarray, library: np.ndarray, batch) -> float:
    """Median within-batch library-size percentile of the cells outside their cluster's
    majority type (NaN when there are none)."""
    wrong = labels != majority_types(clusters, labels)
    percentile = depth_percentiles(library, batch)
    return float(np.median(percentile[wrong])) if wrong.any() else float("nan")


def run(name: str, adata, seed: int) -> dict[str, object]:
    """Score every representation of one file at one seed."""
    pretrained = DeepBID(
        seed=seed, progress=False, epochs=0, decoder_epochs=0, final_alignment=False
    ).fit(adata, "batch")
    model = DeepBID(seed=seed, progress=False).fit(adata, "batch")
    view = model.train_view
    labels = adata.obs["cell_type"].astype(str).to_numpy()[view.cells]
    batch = adata.obs["batch"].astype(str).to_numpy()[view.cells]
    logx = view.logx.toarray()
    n_components = min(N_COMPONENTS, logx.shape[0] - 1)
    representations = {
        "PCA": PCA(n_components, random_state=seed).fit_transform(logx),
        "whitened PCA": PCA(n_components, whiten=True, random_state=seed).fit_transform(logx),
        "pretrained codes": pretrained.latent(),
        "X_deepbid": model.latent(),
    }
    row: dict[str, object] = {"dataset": name, "seed": seed}
    for what, x in representations.items():
        row[f"{what}: all"] = kmeans_ari(x, labels, seed)
        row[f"{what}: within batches"] = within_batches(
            lambda y, z: kmeans_ari(z, y, seed), labels, batch, x
        )
    clusters = model.clusters()
    row["deepbid clusters: all"] = metrics.ari(labels, clusters)
    row["deepbid clusters: within batches"] = within_batches(metrics.ari, labels, batch, clusters)
    # size factors rank cells by library size; non-count input has none
    row["error depth percentile"] = (
        error_depth(clusters, labels, view.size_factors, batch) if view.is_counts else np.nan
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="files or scenarios to run")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    names = args.only or [n for n in datasets(None) if not n.startswith("sim_")]
    rows = []
    for name, load in datasets(names).items():
        adata = load()
        for seed in range(args.seeds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append(run(name, adata, seed))
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()})
    table = pd.DataFrame(rows)
    stamp = provenance()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.assign(**stamp).to_csv(out / "representation.csv", index=False)
    mean = table.drop(columns="seed").groupby("dataset", sort=False).mean()
    header = (
        f"commit {stamp['commit']}, {stamp['date']}, {stamp['cores']} cores; "
        f"{args.seeds} seed(s), mean over seeds. ARI of k-means with the true number of "
        "types on each representation, on all cells and inside each batch; deepbid's own "
        "clusters (K estimated) scored the same way; the median within-batch depth "
        "percentile of deepbid's misassigned cells.\n\n"
    )
    text = header + markdown_table(mean.T.rename_axis("")) + "\n"
    (out / "representation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
