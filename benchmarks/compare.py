"""deepbid side by side with no integration (PCA), Harmony, scVI, Scanorama and BBKNN.

Same preprocessing for every method (the paper's: per batch, genes in >= 3 cells,
normalise to 1e4, log1p, top-1000 HVGs; union), PCA 50 for the PCA-based peers,
scVI on the raw counts of the same genes with its default training length; deepbid
with its defaults (it preprocesses the same way itself). Every method runs in its own
process so that its wall time and peak memory are its own. Scores are computed here,
identically for all: ARI/NMI of Leiden (resolution 1; deepbid: its own clusters, K
estimated) and of k-means with the true K; median iLISI and cLISI; batch ASW; graph
connectivity.

    pip install -e ".[benchmark]"
    python benchmarks/compare.py                          # every file in ../shared/data
    python benchmarks/compare.py --methods pca harmony my.h5ad --max-cells 300

Writes results/compare.csv, results/compare.md and results/compare_<dataset>.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import resource
import time
import warnings
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.cluster import KMeans

from deepbid import DeepBID, metrics, plotting
from deepbid.data import prepare
from deepbid.evaluate import leiden

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
#: method -> the module it needs (None: only deepbid's own dependencies).
METHODS = {
    "pca": None,
    "harmony": "harmonypy",
    "scanorama": "scanorama",
    "bbknn": "bbknn",
    "scvi": "scvi",
    "deepbid": None,
}


def available(method: str) -> bool:
    module = METHODS[method]
    return module is None or importlib.util.find_spec(module) is not None


# -- the integration step of each method: inputs in, (embedding, clusters) out ---------


def run_pca(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    return inputs["pca"], None


def run_harmony(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    import harmonypy

    meta = pd.DataFrame({"batch": inputs["batch"]})
    z = harmonypy.run_harmony(inputs["pca"], meta, "batch", verbose=False, random_state=0).Z_corr
    z = np.asarray(z)
    return (z if z.shape[0] == len(inputs["batch"]) else z.T), None


def run_scanorama(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    import scanorama

    batch, x = inputs["batch"], inputs["logx"]
    names = sorted(set(batch))
    parts = [np.flatnonzero(batch == name) for name in names]
    integrated, _ = scanorama.integrate(
        [x[rows] for rows in parts], [inputs["genes"]] * len(parts), dimred=50, verbose=0, seed=0
    )
    out = np.zeros((len(batch), integrated[0].shape[1]))
    for rows, values in zip(parts, integrated, strict=True):
        out[rows] = values
    return out, None


def run_bbknn(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    import bbknn

    holder = ad.AnnData(np.zeros((len(inputs["batch"]), 1), dtype=np.float32))
    holder.obs["batch"] = inputs["batch"]
    holder.obsm["X_pca"] = inputs["pca"]
    bbknn.bbknn(holder, batch_key="batch")
    # BBKNN yields a graph, not an embedding: cluster the graph, score its UMAP
    sc.tl.leiden(holder, resolution=1.0, random_state=0, flavor="igraph", n_iterations=-1)
    sc.tl.umap(holder, random_state=0)
    return holder.obsm["X_umap"], holder.obs["leiden"].astype(str).to_numpy()


def run_scvi(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    import scvi

    scvi.settings.seed = 0
    holder = ad.AnnData(inputs["counts"])
    holder.obs["batch"] = inputs["batch"]
    scvi.model.SCVI.setup_anndata(holder, batch_key="batch")
    model = scvi.model.SCVI(holder)
    model.train(accelerator="cpu", enable_progress_bar=False)
    return model.get_latent_representation(), None


def run_deepbid(inputs: dict) -> tuple[np.ndarray, np.ndarray | None]:
    model = DeepBID(seed=0, progress=False).fit(inputs["adata"], "batch")
    return model.latent(), model.clusters().astype(str)


def _child(method: str, inputs: dict, queue: mp.Queue) -> None:
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    embedding, clusters = globals()[f"run_{method}"](inputs)
    seconds = time.perf_counter() - start
    queue.put((np.asarray(embedding, dtype=np.float64), clusters, seconds, peak_rss_mb()))


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps ``ru_maxrss`` across the exec
    that starts a spawned child (it would report the parent's peak), so the
    per-address-space ``VmHWM`` is read where it exists."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(method: str, inputs: dict) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Run one method in a fresh process: (embedding, clusters, seconds, peak RSS MB)."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, inputs, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


# -- scoring ----------------------------------------------------------------------------


def score(
    embedding: np.ndarray,
    clusters: np.ndarray | None,
    batch: np.ndarray,
    labels: np.ndarray,
) -> dict[str, float]:
    """Every metric of the table for one method's embedding."""
    if clusters is None:
        clusters = leiden(embedding, seed=0)
    n_types = np.unique(labels).size
    kmeans = KMeans(n_types, n_init=10, random_state=0).fit_predict(embedding)
    ilisi = float(np.median(metrics.lisi(embedding, batch)))
    clisi = float(np.median(metrics.lisi(embedding, labels)))
    row = {
        "n_clusters": int(np.unique(clusters).size),
        "ari": metrics.ari(labels, clusters),
        "nmi": metrics.nmi(labels, clusters),
        "ari_kmeans_true_k": metrics.ari(labels, kmeans),
        "nmi_kmeans_true_k": metrics.nmi(labels, kmeans),
        "ilisi_median": ilisi,
        "clisi_median": clisi,
        "batch_asw": metrics.batch_asw(embedding, batch, labels),
        "graph_connectivity": metrics.graph_connectivity(embedding, labels),
    }
    n_batches = np.unique(batch).size
    row["batch_score"] = float(np.mean([(ilisi - 1) / (n_batches - 1), row["batch_asw"]]))
    row["bio_score"] = float(
        np.mean([row["ari"], row["nmi"], 1 - (clisi - 1) / max(n_types - 1, 1)])
    )
    return row


def inputs_for(adata: ad.AnnData) -> dict:
    """The shared preprocessing: the paper's gene selection, log data, PCA 50."""
    view = prepare(adata, "batch")
    return {
        "adata": adata,
        "batch": adata.obs["batch"].astype(str).to_numpy(),
        "genes": list(view.genes),
        "logx": view.logx.toarray(),
        "counts": view.counts,
        "pca": plotting.log_pca(view.logx, n_comps=50, seed=0),
    }


def figure(name: str, rows: pd.DataFrame, umaps: dict, batch, labels, path: Path) -> None:
    """Scatter of batch against bio score, then a UMAP grid (methods x batch / cell type)."""
    methods = list(umaps)
    fig = plt.figure(figsize=(10, 3.6 * (len(methods) + 1)))
    ax = fig.add_subplot(len(methods) + 1, 2, 1)
    for method, row in rows.iterrows():
        ax.scatter(row["batch_score"], row["bio_score"], s=40)
        ax.annotate(method, (row["batch_score"], row["bio_score"]), fontsize=8)
    ax.set_xlabel("batch mixing (iLISI scaled, batch ASW)")
    ax.set_ylabel("bio conservation (ARI, NMI, cLISI)")
    ax.set_title(name)
    for i, method in enumerate(methods):
        for j, (what, values) in enumerate((("batch", batch), ("cell type", labels))):
            panel = fig.add_subplot(len(methods) + 1, 2, 2 * (i + 1) + j + 1)
            plotting.scatter(panel, umaps[method], values, f"{method}: {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (numbers to 3 decimals)."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="extra .h5ad files (batch, cell_type in obs)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--max-cells", type=int, default=None, help="subsample each file")
    parser.add_argument("--no-shared", action="store_true", help="skip ../shared/data")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    paths = ([] if args.no_shared else sorted(SHARED.glob("*.h5ad"))) + [
        Path(p) for p in args.paths
    ]
    methods = [m for m in args.methods if available(m)]
    skipped = sorted(set(args.methods) - set(methods))
    if skipped:
        print(f"not installed, skipped: {skipped} (pip install -e '.[benchmark]')")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = []
    for path in paths:
        adata = ad.read_h5ad(path)
        if args.max_cells and adata.n_obs > args.max_cells:
            keep = np.random.default_rng(0).choice(adata.n_obs, args.max_cells, replace=False)
            adata = adata[np.sort(keep)].copy()
        inputs = inputs_for(adata)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        rows, umaps = {}, {}
        for method in methods:
            embedding, clusters, seconds, peak = run_isolated(method, inputs)
            rows[method] = {
                **score(embedding, clusters, inputs["batch"], labels),
                "seconds": seconds,
                "peak_rss_mb": peak,
            }
            umaps[method] = embedding if method == "bbknn" else plotting.umap(embedding)
            print(path.stem, method, {k: round(v, 3) for k, v in rows[method].items()}, flush=True)
        frame = pd.DataFrame(rows).T
        figure(path.stem, frame, umaps, inputs["batch"], labels, out / f"compare_{path.stem}.png")
        table.append(frame.assign(dataset=path.stem).rename_axis("method").reset_index())
    result = pd.concat(table)[["dataset", "method", *table[0].columns.drop(["dataset", "method"])]]
    result.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(
        "One run (seed 0) per method; Leiden resolution 1 for the peers, deepbid's own "
        "clusters (K estimated); seconds and peak RSS of each method's own process.\n\n"
        + markdown(result)
    )
    print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
