"""The final alignment's batch centroids: counted over each cell's own cluster, or softly.

The final alignment (step 7 of README "What deepbid does") moves each batch's cells in each
cluster by the batch's offset from the cluster's centroid. deepbid counts each cell in its
hard cluster alone, weighted by its membership there (``own cluster``). The alternative it
replaced counts every cell in every cluster by its membership (``soft``), so a centroid also
leans toward the other clusters by the memberships' small rest, in proportion to each
batch's mix of types. Both are computed on the same fitted model (the clusters, memberships
and codes do not depend on them), and scored by median iLISI of ``latent()``; ``codes`` is
the embedding without the alignment, ``offsets only`` leaves out the scaling.

Data: the mapping test's reference (``reference_and_query_data`` of ``tests/conftest.py``),
fitted briefly (``FAST`` of ``tests/conftest.py``: 4 clustering epochs, latent 16) with the
true K = 4, one fit per seed. ``--trained``: every file and scenario of ``quality.py``
instead, fitted with the defaults (K estimated), seed 0; it adds median cLISI and k-means
with the true K on each embedding.

    python benchmarks/alignment_centroids.py             # seeds 0-5, about a minute
    python benchmarks/alignment_centroids.py --trained   # 8 sets, seed 0

Writes results/alignment_centroids.csv and .md (``alignment_centroids_trained.*`` with
``--trained``), with the commit.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mapping import markdown_table, save
from quality import datasets
from sklearn.cluster import KMeans

from deepbid import DeepBID, metrics, mixing

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import FAST, reference_and_query_data  # noqa: E402


def soft_centroids(model: DeepBID) -> DeepBID:
    """``model`` with its training batches' offsets from membership-weighted sums over all
    clusters (the scales and spreads kept)."""
    codes = torch.from_numpy(model._codes(model.train_view))
    batch = torch.as_tensor(model.train_view.batch_codes, dtype=torch.long)
    soft = copy.copy(model)
    sums, counts = mixing.batch_cluster_sums(
        codes, model._memberships(codes), batch, model.train_view.n_batches
    )
    offsets = mixing.batch_offsets(sums, counts)
    soft.alignment = model.alignment._replace(sums=sums, counts=counts, offsets=offsets)
    return soft


def briefly_trained(seed: int) -> tuple[DeepBID, ad.AnnData]:
    """The mapping test's reference, fitted with FAST settings and K = 4."""
    reference, _ = reference_and_query_data()
    return DeepBID(n_clusters=4, seed=seed, **FAST).fit(reference, "batch"), reference


def score(model: DeepBID, adata: ad.AnnData, trained: bool) -> dict[str, float]:
    """Median iLISI of one fit's embedding with each way of counting the centroids (with
    ``trained``, also cLISI and k-means with the true K)."""
    cells = model.train_view.cells
    batch = adata.obs["batch"].astype(str).to_numpy()[cells]
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]

    def latent(m: DeepBID, **settings: bool) -> np.ndarray:
        m = copy.copy(m)
        m.settings = dataclasses.replace(m.settings, **settings)
        return m.latent()

    def ilisi(m: DeepBID, **settings: bool) -> float:
        return float(np.median(metrics.lisi(latent(m, **settings), batch)))

    soft = soft_centroids(model)
    row = {
        "ari": metrics.ari(labels, model.clusters()),
        "median_membership": float(np.median(model.membership().max(axis=1))),
        "ilisi_codes": ilisi(model, final_alignment=False),
        "ilisi_soft_offsets_only": ilisi(soft, final_scaling=False),
        "ilisi_soft": ilisi(soft),
        "ilisi_own_offsets_only": ilisi(model, final_scaling=False),
        "ilisi_own_cluster": ilisi(model),
    }
    if trained:
        n_types = np.unique(labels).size
        for name, m in (("soft", soft), ("own_cluster", model)):
            x = latent(m)
            row[f"clisi_{name}"] = float(np.median(metrics.lisi(x, labels)))
            kmeans = KMeans(n_types, n_init=10, random_state=0).fit_predict(x)
            row[f"ari_kmeans_true_k_{name}"] = metrics.ari(labels, kmeans)
    return row


def markdown(results: pd.DataFrame) -> str:
    first = results.iloc[0]
    key = "dataset" if "dataset" in results else "seed"
    table = results.set_index(key).drop(
        columns=["seed", "commit", "date", "cores", "versions"], errors="ignore"
    )
    data = (
        "every file and scenario of quality.py, defaults, K estimated, seed 0"
        if key == "dataset"
        else "the mapping test's reference fitted with FAST settings and K = 4 given"
    )
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; {data}; "
        "median iLISI of one fit each with each way of counting the final alignment's "
        "centroids.\n\n" + markdown_table(table) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(6)))
    parser.add_argument("--trained", action="store_true", help="every quality.py set, seed 0")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    if args.trained:
        for name, load in datasets(None).items():
            adata = load()
            model = DeepBID(seed=0, progress=False).fit(adata, "batch")
            rows.append({"dataset": name, "seed": 0, **score(model, adata, True)})
            print(rows[-1], flush=True)
    else:
        for seed in args.seeds:
            rows.append({"seed": seed, **score(*briefly_trained(seed), False)})
    stem = "alignment_centroids" + ("_trained" if args.trained else "")
    save(rows, args.out, stem, markdown)


if __name__ == "__main__":
    main()
