"""Mapping a new donor onto a trained model against training on every donor together.

On ``pancreas_baron_human_4donors``, each donor is left out in turn: a reference model is
fitted on the other three and the held-out donor is mapped onto it with
:meth:`deepbid.DeepBID.map`. The joint model is fitted on all four donors (K estimated);
each reference is fitted with the joint model's K, so that both partition the cells alike
(estimating K on three donors is a question of the K rule, not of mapping; ``--estimate-k``
lets each reference estimate its own, as a user's default fit would). For the held-out
donor's cells, the table gives the ARI of its clusters against the labels (mapped and
joint), the median iLISI of reference + query in the mapped embedding against the joint
embedding's over the same cells, and the seconds of mapping against those of the
reference fit; and the reference's ARI on its own cells, which bounds what mapping onto
it can give.

    python benchmarks/mapping.py                 # 4 donors x seeds 0, 1, 2
    python benchmarks/mapping.py --seeds 0 --quick --out /tmp/m
    python benchmarks/mapping.py --estimate-k    # references estimate their own K
    python benchmarks/mapping.py --kmeans-start  # references start from k-means (the paper)

Writes ``results/mapping.csv`` (one row per seed x donor) and ``results/mapping.md``
(``mapping_estimated_k.*`` with ``--estimate-k``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from compare import provenance

from deepbid import DeepBID, metrics

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "pancreas_baron_human_4donors.h5ad"
#: Settings of a ``--quick`` run (the CI smoke test), else the defaults.
QUICK = dict(layer_epochs=1, pretrain_epochs=2, epochs=3)


def donor_scores(
    adata: ad.AnnData,
    donor: str,
    joint: dict[str, np.ndarray],
    seed: int,
    settings: dict,
    estimate_k: bool = False,
) -> dict[str, float]:
    """Fit a reference without ``donor``, map it, and score against the ``joint`` results.

    The reference gets the joint model's number of clusters, or estimates its own
    (``estimate_k``, what a user fitting it with the defaults gets)."""
    query_cells = (adata.obs["batch"].astype(str) == donor).to_numpy()
    reference, query = adata[~query_cells].copy(), adata[query_cells].copy()
    start = time.perf_counter()
    k = None if estimate_k else int(joint["clusters"].max()) + 1
    model = DeepBID(k, seed=seed, progress=False, **settings).fit(reference, "batch")
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    mapped = model.map(query)
    map_seconds = time.perf_counter() - start
    labels = query.obs["cell_type"].astype(str).to_numpy()
    reference_labels = reference.obs["cell_type"].astype(str).to_numpy()
    both = np.vstack([model.latent(), mapped.latent()])
    order = np.concatenate([np.flatnonzero(~query_cells), np.flatnonzero(query_cells)])
    batch = adata.obs["batch"].astype(str).to_numpy()[order]
    return {
        "donor": donor,
        "query_cells": int(query_cells.sum()),
        "reference_k": int(model.centres.shape[0]),
        "ari_reference": metrics.ari(reference_labels, model.clusters()),
        "ari_mapped": metrics.ari(labels, mapped.clusters()),
        "ari_mapped_untrained": metrics.ari(labels, model.map(query, epochs=0).clusters()),
        "ari_joint": metrics.ari(labels, joint["clusters"][query_cells]),
        "ilisi_mapped": float(np.median(metrics.lisi(both, batch))),
        "ilisi_joint": float(np.median(metrics.lisi(joint["latent"][order], batch))),
        "map_seconds": map_seconds,
        "reference_fit_seconds": fit_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--donors", nargs="+", help="leave out only these donors")
    parser.add_argument("--quick", action="store_true", help="few epochs (a smoke test)")
    parser.add_argument(
        "--estimate-k",
        action="store_true",
        help="references estimate their own K (results: mapping_estimated_k.*)",
    )
    parser.add_argument(
        "--kmeans-start",
        action="store_true",
        help="references with K given start from k-means, as the paper does "
        "(leiden_start=False; results: mapping_kmeans_start.*)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    settings = QUICK if args.quick else {}
    reference_settings = {**settings, "leiden_start": not args.kmeans_start}
    warnings.simplefilter("ignore")
    adata = ad.read_h5ad(DATA)
    donors = args.donors or list(adata.obs["batch"].astype(str).unique())
    rows = []
    for seed in args.seeds:
        joint_model = DeepBID(seed=seed, progress=False, **settings).fit(adata, "batch")
        joint = {"latent": joint_model.latent(), "clusters": joint_model.clusters()}
        for donor in donors:
            scores = donor_scores(adata, donor, joint, seed, reference_settings, args.estimate_k)
            rows.append({"seed": seed, **scores})
            print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False), flush=True)
    name = "mapping_estimated_k" if args.estimate_k else "mapping"
    save(rows, args.out, name + ("_kmeans_start" if args.kmeans_start else ""), markdown)


def markdown(results: pd.DataFrame) -> str:
    """Per donor, mean over seeds; a last row over donors; the targets checked."""
    table = results.groupby("donor", sort=False)[
        ["query_cells", "reference_k", "ari_reference", "ari_mapped", "ari_mapped_untrained"]
        + ["ari_joint"]
        + ["ilisi_mapped", "ilisi_joint"]
    ].mean()
    table["ari_mapped_minus_joint"] = table["ari_mapped"] - table["ari_joint"]
    table["ilisi_ratio"] = table["ilisi_mapped"] / table["ilisi_joint"]
    ratio = results["map_seconds"] / results["reference_fit_seconds"]
    table["map_over_fit_time"] = ratio.groupby(results["donor"], sort=False).median()
    table.loc["mean"] = table.mean()
    first = results.iloc[0]
    return (
        f"commit {first['commit']}, {first['date']}, {first['cores']} cores; "
        f"{results['seed'].nunique()} seed(s), mean over seeds; map_over_fit_time: median "
        "of mapping seconds / reference fit seconds.\n\n" + markdown_table(table) + "\n"
    )


def save(rows: list[dict], out: Path, name: str, markdown: Callable[[pd.DataFrame], str]) -> None:
    """Write ``rows``, stamped with the commit and versions, to ``out/name.csv`` and
    their ``markdown`` summary to ``out/name.md``; print the summary."""
    results = pd.DataFrame(rows).assign(**provenance())
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / f"{name}.csv", index=False)
    text = markdown(results)
    (out / f"{name}.md").write_text(text)
    print(text)


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table, numbers to 3 decimals (``–`` where missing)."""
    header = [table.index.name or "", *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in table.iterrows():
        cells = ("–" if pd.isna(v) else f"{v:.3f}" for v in row)
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
