"""deepbid side by side with no integration (PCA), Harmony, Scanorama, BBKNN and scVI.

One protocol for every method. Each method runs in its own spawned process that reads
the raw counts itself and does its own preprocessing inside its timed run (the paper's
gene selection as ``deepbid.data.prepare`` does it: per batch, genes in >= 3 cells,
normalise to 1e4, log1p, top-1000 HVGs, union; then PCA 50 for Harmony and BBKNN,
Scanorama's own reduction, scVI on the raw counts of the same genes with its default
training length; deepbid's fit does all of it itself). deepbid and scVI run at every
seed of ``--seeds``; the others once, at their default seed 0.

Every output is scored by :func:`score`, the same code for all, on a
:class:`Representation`: an embedding (its exact kNN, its 15-neighbour UMAP graph) or,
for BBKNN, its own graph (neighbours by shortest-path distance on it; no embedding
metric, since BBKNN gives none: those are NaN, never computed on a UMAP).

Clustering protocols, ARI and NMI against the cell types for each:

- ``leiden_r1``: Leiden at resolution 1 on the method's graph;
- ``k_rule``: deepbid's own K rule (``deepbid.k_estimate.estimate_partition``) run on
  the method's embedding, so that the rule and the embedding are judged apart;
- ``leiden_best``: the resolution of a 0.05-2.0 Leiden sweep with the best ARI
  (an oracle: it sees the labels; an upper bound);
- ``kmeans_true_k``: k-means with the true number of cell types;
- ``own``: deepbid's own clusters, its row named ``deepbid (own clusters)``.

scIB metrics from scib-metrics (its functions, unscaled across methods; skipped when it
is not installed): Leiden NMI/ARI over its own resolution sweep, isolated labels,
silhouette label, cLISI (bio conservation); BRAS, iLISI, kBET, graph connectivity, PCR
comparison (batch correction); the aggregates are the means of each group's available
metrics, Total = 0.6 bio + 0.4 batch.

    pip install -e ".[benchmark]"
    python benchmarks/compare.py                          # every file in ../shared/data
    python benchmarks/compare.py --no-shared my.h5ad --methods pca harmony --max-cells 300

Writes compare.csv (one row per method and seed, with commit, date, cores and package
versions), compare.md (mean ± sd over seeds), compare_summary.md (scIB Total, bio, batch,
ARI and seconds: deepbid's own clusters, the others' K rule clusters) and
compare_<dataset>.png to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import multiprocessing as mp
import os
import queue as queue_module
import subprocess
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from scipy.sparse.csgraph import dijkstra
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

import deepbid
from deepbid import DeepBID, k_estimate, metrics, plotting
from deepbid.data import DataView, prepare

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
#: method -> the module its run needs (None: deepbid's own dependencies only).
METHODS = {
    "pca": None,
    "harmony": "harmonypy",
    "scanorama": "scanorama",
    "bbknn": "bbknn",
    "scvi": "scvi",
    "deepbid": None,
}
#: Methods trained from a random start: run at every seed; the others once, at seed 0.
SEEDED = ("scvi", "deepbid")
#: Distributions whose versions every results file records.
PACKAGES = (
    "deepbid",
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "scanpy",
    "anndata",
    "igraph",
    "leidenalg",
    "harmonypy",
    "scanorama",
    "bbknn",
    "scvi-tools",
    "scib-metrics",
    "jax",
)
#: Leiden resolutions of the oracle sweep (protocol ``leiden_best``); 1.0 is protocol ``leiden_r1``.
SWEEP = tuple(float(r) for r in np.round(np.arange(0.05, 2.0001, 0.05), 2))
#: scIB's neighbourhoods: 15 (Leiden, graph connectivity), 50 (kBET), 90 (LISI, perplexity 30).
NEIGHBOURS = (15, 50, 90)
#: ``--quick``: a smoke test's training lengths (deepbid's phases, scVI's epochs).
QUICK_DEEPBID = {"layer_epochs": 1, "pretrain_epochs": 2, "epochs": 2}
QUICK_SCVI_EPOCHS = 10
#: Clustering protocols, in table order.
PROTOCOLS = ("leiden_r1", "k_rule", "leiden_best", "kmeans_true_k", "own")
#: scIB metric columns of each aggregate.
BIO = (
    "scib_leiden_nmi",
    "scib_leiden_ari",
    "scib_isolated_labels",
    "scib_silhouette_label",
    "scib_clisi",
)
BATCH = ("scib_bras", "scib_ilisi", "scib_kbet", "scib_graph_connectivity", "scib_pcr_comparison")
AGGREGATES = ("scib_bio_conservation", "scib_batch_correction", "scib_total")


def available(method: str) -> bool:
    """Whether the package ``method`` needs is installed."""
    module = METHODS[method]
    return module is None or importlib.util.find_spec(module) is not None


def read_cells(path: Path, cells: np.ndarray | None) -> ad.AnnData:
    """The file's AnnData, restricted to the row indices ``cells`` when given."""
    adata = ad.read_h5ad(path)
    return adata if cells is None else adata[cells].copy()


def batch_of(view: DataView) -> np.ndarray:
    """Batch name of every cell of a :class:`~deepbid.data.DataView`."""
    return np.asarray(view.batch_categories)[view.batch_codes]


# -- each method: raw-count AnnData in, its own preprocessing, output dict out -------------
# Keys: "embedding" (n, d) or "graph" (BBKNN: kNN distances, connectivities), and
# "clusters" for a method that clusters itself (deepbid).


def _view_and_pca(adata: ad.AnnData, seed: int) -> tuple[DataView, np.ndarray]:
    view = prepare(adata, "batch")
    return view, plotting.log_pca(view.logx, n_comps=50, seed=seed)


def run_pca(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    return {"embedding": _view_and_pca(adata, seed)[1]}


def run_harmony(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    import harmonypy

    view, pca = _view_and_pca(adata, seed)
    meta = pd.DataFrame({"batch": batch_of(view)})
    z = np.asarray(
        harmonypy.run_harmony(pca, meta, "batch", verbose=False, random_state=seed).Z_corr
    )
    return {"embedding": z if z.shape[0] == pca.shape[0] else z.T}


def run_scanorama(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    import scanorama

    view = prepare(adata, "batch")
    batch, x = batch_of(view), view.logx.toarray()
    parts = [np.flatnonzero(batch == name) for name in view.batch_categories]
    integrated, _ = scanorama.integrate(
        [x[rows] for rows in parts], [view.genes] * len(parts), dimred=50, verbose=0, seed=seed
    )
    out = np.zeros((len(batch), integrated[0].shape[1]))
    for rows, values in zip(parts, integrated, strict=True):
        out[rows] = values
    return {"embedding": out}


def run_bbknn(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    import bbknn

    view, pca = _view_and_pca(adata, seed)
    holder = ad.AnnData(np.zeros((pca.shape[0], 1), dtype=np.float32))
    holder.obs["batch"] = batch_of(view)
    holder.obsm["X_pca"] = pca
    bbknn.bbknn(holder, batch_key="batch")
    return {"graph": (holder.obsp["distances"], holder.obsp["connectivities"])}


def run_scvi(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    import scvi

    scvi.settings.seed = seed
    view = prepare(adata, "batch")
    holder = ad.AnnData(view.counts)
    holder.obs["batch"] = batch_of(view)
    scvi.model.SCVI.setup_anndata(holder, batch_key="batch")
    model = scvi.model.SCVI(holder)
    epochs = QUICK_SCVI_EPOCHS if quick else None  # None: scVI's default for the data size
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    return {"embedding": model.get_latent_representation()}


def run_deepbid(adata: ad.AnnData, seed: int, quick: bool) -> dict:
    settings = QUICK_DEEPBID if quick else {}
    model = DeepBID(seed=seed, progress=False, **settings).fit(adata, "batch")
    return {"embedding": model.latent(), "clusters": model.clusters().astype(str)}


# -- one process per run: its own time and memory ------------------------------------------


def memory_mb(field: str) -> float:
    """``VmRSS``/``VmHWM`` of this process in MB (NaN where /proc is absent)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> float:
    """Restart the peak-RSS counter (VmHWM) at the current RSS; return that RSS in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass
    return memory_mb("VmRSS")


def _child(
    method: str, path: Path, cells: np.ndarray | None, seed: int, quick: bool, out: mp.Queue
) -> None:
    warnings.simplefilter("ignore")
    if METHODS[method] is not None:
        importlib.import_module(METHODS[method])  # importing is not the method's work
    adata = read_cells(path, cells)
    baseline = _reset_peak()
    start = time.perf_counter()
    result = globals()[f"run_{method}"](adata, seed, quick)
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    out.put({**result, "seconds": seconds, "peak_rss_mb": peak, "peak_added_mb": peak - baseline})


def run_isolated(method: str, path: Path, cells: np.ndarray | None, seed: int, quick: bool) -> dict:
    """Run one method in a fresh spawned process; its output dict plus ``seconds`` (wall
    time of its preprocessing and run), ``peak_rss_mb`` (the process's peak resident
    memory during the run) and ``peak_added_mb`` (that peak less the resident memory
    once the process had imported its libraries and read its cells)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(method, path, cells, seed, quick, results))
    process.start()
    while True:
        try:
            result = results.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(
                    f"{method} (seed {seed}) died: exit code {process.exitcode}"
                ) from None
    process.join()
    return result


# -- what is scored: an embedding or a graph -------------------------------------------------


@dataclass
class Representation:
    """A method's output as the scoring sees it.

    Attributes
    ----------
    embedding
        ``(n, d)``; ``None`` for a graph method (BBKNN).
    indices, distances
        ``(n, 90)`` nearest cells, the cell itself first: Euclidean in the embedding,
        or shortest-path distance along a graph method's graph.
    connectivities
        ``(n, n)`` the graph Leiden clusters: the embedding's 15-neighbour UMAP graph
        (scanpy's default), or the graph method's own.
    knn_graph
        ``(n, n)`` a graph method's own kNN distance graph; ``None`` for an embedding.
    """

    embedding: np.ndarray | None
    indices: np.ndarray
    distances: np.ndarray
    connectivities: sp.csr_matrix
    knn_graph: sp.csr_matrix | None = None


def from_embedding(x: np.ndarray, seed: int = 0) -> Representation:
    """The :class:`Representation` of an ``(n, d)`` embedding (exact neighbours)."""
    k = min(max(NEIGHBOURS), x.shape[0])
    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    holder = ad.AnnData(np.zeros((x.shape[0], 1), dtype=np.float32))
    holder.obsm["X_rep"] = x
    # exact kNN, as deepbid.evaluate.leiden: scanpy's approximate path fails on scipy >= 1.15
    sc.pp.neighbors(holder, use_rep="X_rep", transformer="sklearn", random_state=seed)
    return Representation(x, indices, distances, holder.obsp["connectivities"].tocsr())


def from_graph(knn_graph: sp.csr_matrix, connectivities: sp.csr_matrix) -> Representation:
    """The :class:`Representation` of a kNN graph: each cell's nearest cells along it
    (shortest paths, as scIB scores graph outputs), the graph itself for Leiden."""
    n = knn_graph.shape[0]
    k = min(max(NEIGHBOURS), n)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k))
    for start in range(0, n, 1024):  # (chunk, n) path lengths at a time
        rows = np.arange(start, min(start + 1024, n))
        paths = dijkstra(knn_graph, directed=False, indices=rows)
        nearest = np.argsort(paths, axis=1, kind="stable")[:, :k]
        indices[rows], distances[rows] = nearest, np.take_along_axis(paths, nearest, axis=1)
    return Representation(None, indices, distances, sp.csr_matrix(connectivities), knn_graph)


def representation(result: dict) -> Representation:
    """The :class:`Representation` of a method's output dict."""
    if "graph" in result:
        return from_graph(*result["graph"])
    return from_embedding(np.asarray(result["embedding"], dtype=np.float64))


# -- scoring: one function for every method ------------------------------------------------


def protocol(name: str, labels: np.ndarray, clusters: np.ndarray | None) -> dict[str, float]:
    """``k_``, ``ari_`` and ``nmi_`` of one clustering protocol (NaN where not applicable)."""
    if clusters is None:
        return {f"k_{name}": np.nan, f"ari_{name}": np.nan, f"nmi_{name}": np.nan}
    return {
        f"k_{name}": float(np.unique(clusters).size),
        f"ari_{name}": metrics.ari(labels, clusters),
        f"nmi_{name}": metrics.nmi(labels, clusters),
    }


def clustering_scores(
    rep: Representation, batch: np.ndarray, labels: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """ARI and NMI of the four protocols (the module docstring); the protocols that need
    an embedding (K rule, k-means) are NaN for a graph method."""
    graph = k_estimate.as_igraph(rep.connectivities)
    sweep = {r: k_estimate.leiden(graph, r, seed).astype(str) for r in SWEEP}
    best = max(SWEEP, key=lambda r: metrics.ari(labels, sweep[r]))
    rule = kmeans = None
    if rep.embedding is not None:
        rule, _ = k_estimate.estimate_partition(rep.embedding, pd.Categorical(batch).codes, seed)
        n_types = np.unique(labels).size
        kmeans = KMeans(n_types, n_init=10, random_state=seed).fit_predict(rep.embedding)
    return {
        **protocol("leiden_r1", labels, sweep[1.0]),
        **protocol("k_rule", labels, rule),
        **protocol("leiden_best", labels, sweep[best]),
        "resolution_best": best,
        **protocol("kmeans_true_k", labels, kmeans),
    }


def scib_neighbours(rep: Representation, k: int):
    """scib-metrics' ``NeighborsResults`` of the ``k`` nearest cells; for a graph method,
    its own (symmetric) graph stands in for the kNN graphs scib-metrics would derive from
    them (Leiden, kBET, graph connectivity), as scIB scores graph outputs."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    found = NeighborsResults(indices=rep.indices[:, :k], distances=rep.distances[:, :k])
    if rep.knn_graph is not None:
        # both are cached properties: once set, they are not derived from the neighbours
        found.knn_graph_connectivities = rep.connectivities
        found.knn_graph_distances = rep.connectivities
    return found


def scib_scores(
    rep: Representation, batch: np.ndarray, labels: np.ndarray, x_pre: np.ndarray
) -> dict[str, float]:
    """scIB's metrics (scib-metrics functions, their own rescaling into [0, 1], no
    min-max scaling across methods) and the aggregates; embedding metrics are NaN for
    a graph method. ``x_pre`` is the unintegrated PCA that PCR comparison starts from."""
    import scib_metrics as sm

    nn = {k: scib_neighbours(rep, k) for k in NEIGHBOURS}
    x = rep.embedding

    def on_embedding(function, *args, **kwargs) -> float:
        return np.nan if x is None else float(function(*args, **kwargs))

    leiden = sm.nmi_ari_cluster_labels_leiden(nn[15], labels, optimize_resolution=True)
    row = {
        "scib_leiden_nmi": float(leiden["nmi"]),
        "scib_leiden_ari": float(leiden["ari"]),
        "scib_isolated_labels": on_embedding(sm.isolated_labels, x, labels, batch),
        "scib_silhouette_label": on_embedding(sm.silhouette_label, x, labels),
        "scib_clisi": float(sm.clisi_knn(nn[90], labels)),
        "scib_bras": on_embedding(sm.bras, x, labels, batch),
        "scib_ilisi": float(sm.ilisi_knn(nn[90], batch)),
        "scib_kbet": float(sm.kbet_per_label(nn[50], batch, labels)),
        "scib_graph_connectivity": float(sm.graph_connectivity(nn[15], labels)),
        "scib_pcr_comparison": on_embedding(sm.pcr_comparison, x_pre, x, batch, categorical=True),
    }
    bio = float(np.nanmean([row[name] for name in BIO]))
    batch_correction = float(np.nanmean([row[name] for name in BATCH]))
    return {
        **row,
        "scib_bio_conservation": bio,
        "scib_batch_correction": batch_correction,
        "scib_total": 0.6 * bio + 0.4 * batch_correction,
    }


def score(
    rep: Representation,
    batch: np.ndarray,
    labels: np.ndarray,
    x_pre: np.ndarray,
    with_scib: bool,
) -> dict[str, float]:
    """Every score of one method's output: the clustering protocols and, when
    ``with_scib``, scIB's metrics. The same function for every method."""
    row = clustering_scores(rep, batch, labels)
    return {**row, **scib_scores(rep, batch, labels, x_pre)} if with_scib else row


# -- provenance ------------------------------------------------------------------------------


def provenance() -> dict[str, object]:
    """``commit`` (``+dirty`` when src/ has uncommitted changes), ``date`` (UTC),
    ``cores`` and ``versions`` of the installed packages of :data:`PACKAGES`."""
    root = HERE.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    # A copy of the tree without .git (e.g. on a GPU machine) names its commit in the environment.
    head = git("rev-parse", "HEAD") or os.environ.get("DEEPBID_COMMIT", "unknown")
    dirty = git("status", "--porcelain", "--", "src")
    versions = []
    for name in PACKAGES:
        if name == "deepbid":
            # the code that ran: an editable install's metadata keeps the version it was
            # installed at, and a source tree on PYTHONPATH has none
            versions.append(f"deepbid={deepbid.__version__}")
            continue
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "commit": head + ("+dirty" if dirty else ""),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "versions": "; ".join(versions),
    }


# -- tables and figures ----------------------------------------------------------------------


def summarise(values: pd.Series, digits: int) -> str:
    """``mean ± sd`` over seeds (sample sd), the value alone for one run, ``–`` for none."""
    values = values.dropna().astype(float)
    if values.empty:
        return "–"
    if values.size == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def markdown_table(result: pd.DataFrame, columns: dict[str, tuple[str, int]]) -> str:
    """One Markdown table: a row per dataset and method (in run order), ``columns``
    maps a CSV column to its header and decimals, each cell summarised over seeds."""
    present = {c: spec for c, spec in columns.items() if c in result.columns}
    header = ["data", "method", "runs", *(title for title, _ in present.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, method), runs in result.groupby(["dataset", "method"], sort=False):
        cells = [dataset, method, str(len(runs))]
        cells += [summarise(runs[c], digits) for c, (_, digits) in present.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(result: pd.DataFrame, seeds: list[int]) -> str:
    """compare.md: a provenance line, then clustering, scIB and cost tables."""
    names = {"leiden_r1": "Leiden r=1", "k_rule": "K rule", "leiden_best": "best Leiden"}
    names |= {"kmeans_true_k": "k-means true K", "own": "own clusters"}
    ari = {f"ari_{p}": (names[p], 3) for p in PROTOCOLS}
    ari |= {"k_leiden_r1": ("K (r=1)", 1), "k_k_rule": ("K (rule)", 1)}
    ari |= {"resolution_best": ("best resolution", 2)}
    nmi = {f"nmi_{p}": (names[p], 3) for p in PROTOCOLS}
    scib = {
        name: (name.removeprefix("scib_").replace("_", " "), 3) for name in BIO + BATCH + AGGREGATES
    }
    cost = {"seconds": ("seconds", 1), "peak_added_mb": ("peak MB added", 0)}
    cost |= {"peak_rss_mb": ("peak MB (process)", 0)}
    # a run that kept other methods' rows (--keep) names each commit with its own
    # date and package versions
    made = result.groupby("commit", sort=False)
    where = "\n\n".join(
        f"{', '.join(rows['method'].unique())}: commit `{commit}` · {rows['date'].iloc[0]} · "
        f"{rows['cores'].iloc[0]} cores · {rows['versions'].iloc[0]}"
        for commit, rows in made
    )
    parts = [
        f"{where}\n",
        f"deepbid and scVI: mean ± sd over seeds {', '.join(map(str, seeds))} (`runs`); "
        "the others: one run at their default seed 0. `–`: not applicable (BBKNN gives a "
        "graph, no embedding) or not run.\n",
        "**ARI** of each clustering protocol (best Leiden: an oracle that sees the labels)\n",
        markdown_table(result, ari),
        "**NMI** of each clustering protocol\n",
        markdown_table(result, nmi),
    ]
    if "scib_total" in result.columns:
        parts += [
            "**scIB metrics** (scib-metrics; bio: Leiden NMI/ARI … cLISI; batch: BRAS … PCR "
            "comparison; total = 0.6 bio + 0.4 batch)\n",
            markdown_table(result[~result["method"].str.endswith("(own clusters)")], scib),
        ]
    parts += [
        "**Cost**: wall time of preprocessing and run, peak resident memory\n",
        markdown_table(result[result["seconds"].notna()], cost),
    ]
    return "\n".join(parts)


def summary_markdown(result: pd.DataFrame) -> str:
    """compare_summary.md: per file and method, scIB Total, bio conservation and batch
    correction, ARI and seconds, means over seeds; the best Total of an embedding on each
    file in bold."""
    own = result[result["method"].str.endswith("(own clusters)")]
    own = own.assign(method=own["method"].str.removesuffix(" (own clusters)"))
    own_ari = own.groupby(["dataset", "method"])["ari_own"].mean()
    main = result[~result["method"].str.endswith("(own clusters)")]
    mean = main.groupby(["dataset", "method"], sort=False).mean(numeric_only=True)
    lines = [
        "| data | method | scIB Total | bio | batch | ARI | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in main["dataset"].unique():
        block = mean.loc[dataset]
        # BBKNN is scored on its graph alone (no embedding metric): its Total is of
        # other metrics, so the best is among the embeddings
        embeddings = block[block.get("scib_silhouette_label", block["seconds"]).notna()]
        best = embeddings["scib_total"].max() if "scib_total" in block else np.nan
        for method, row in block.iterrows():
            ari = own_ari.get((dataset, method), row.get("ari_k_rule", np.nan))
            total = row.get("scib_total", np.nan)
            cells = [f"{total:.3f}", f"{row.get('scib_bio_conservation', np.nan):.3f}"]
            cells += [f"{row.get('scib_batch_correction', np.nan):.3f}", f"{ari:.3f}"]
            cells += [f"{row['seconds']:.1f}"]
            if total == best:
                cells[0] = f"**{cells[0]}**"
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines).replace("nan", "–") + "\n"


def graph_umap(knn_graph: sp.csr_matrix, connectivities: sp.csr_matrix) -> np.ndarray:
    """2-d UMAP ``(n, 2)`` laid out from a graph method's own graph (figure only)."""
    holder = ad.AnnData(np.zeros((knn_graph.shape[0], 1), dtype=np.float32))
    holder.obsp["distances"], holder.obsp["connectivities"] = knn_graph, connectivities
    holder.uns["neighbors"] = {
        "distances_key": "distances",
        "connectivities_key": "connectivities",
        "params": {"method": "umap"},
    }
    sc.tl.umap(holder, random_state=0)
    return holder.obsm["X_umap"]


def figure(
    name: str, rows: pd.DataFrame, umaps: dict, batch: np.ndarray, labels: np.ndarray, path: Path
) -> None:
    """scIB Batch correction against Bio conservation (mean ± sd over seeds), then a
    UMAP grid: one row per method (first seed), coloured by batch and by cell type."""
    methods = list(umaps)
    fig = plt.figure(figsize=(10, 3.6 * (len(methods) + 1)))
    ax = fig.add_subplot(len(methods) + 1, 2, (1, 2))
    ax.margins(0.15)  # room for the labels of the extreme points
    if "scib_total" in rows.columns:
        for method, runs in rows.groupby("method", sort=False):
            if runs["scib_total"].isna().all():
                continue
            x, y = runs["scib_batch_correction"], runs["scib_bio_conservation"]
            sd = (x.std(), y.std()) if len(runs) > 1 else (0.0, 0.0)
            ax.errorbar(x.mean(), y.mean(), xerr=sd[0], yerr=sd[1], fmt="o", capsize=3)
            ax.annotate(
                method, (x.mean(), y.mean()), fontsize=8, xytext=(4, 4), textcoords="offset points"
            )
        ax.set_xlabel("scIB batch correction")
        ax.set_ylabel("scIB bio conservation")
    else:
        ax.text(0.5, 0.5, "scib-metrics not installed", ha="center", transform=ax.transAxes)
    ax.set_title(f"{name}: scIB aggregates (bars: sd over seeds)", fontsize=9)
    for i, method in enumerate(methods):
        for j, (what, values) in enumerate((("batch", batch), ("cell type", labels))):
            panel = fig.add_subplot(len(methods) + 1, 2, 2 * (i + 1) + j + 1)
            plotting.scatter(panel, umaps[method], values, f"{method} (seed 0): {what}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the run ---------------------------------------------------------------------------------


def kept_with(earlier: pd.DataFrame, new: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """``new``'s rows with ``earlier``'s rows of the datasets it covers and the methods
    not in ``methods``, per dataset in :data:`METHODS` order."""
    run = set(methods) | {f"{m} (own clusters)" for m in methods}
    earlier = earlier[earlier["dataset"].isin(new["dataset"]) & ~earlier["method"].isin(run)]
    both = pd.concat([earlier, new], ignore_index=True)
    order = {
        m: i for i, m in enumerate(m for name in METHODS for m in (name, f"{name} (own clusters)"))
    }
    datasets = {d: i for i, d in enumerate(new["dataset"].unique())}
    key = both["dataset"].map(datasets) * len(order) + both["method"].map(order)
    return both.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def benchmark_file(
    path: Path,
    methods: list[str],
    seeds: list[int],
    max_cells: int | None,
    quick: bool,
    out: Path,
    draw: bool = True,
) -> pd.DataFrame:
    """Every method (and seed) on one file: the rows of compare.csv; draws its figure
    (``draw``: a figure of some methods alone would replace that of all)."""
    adata = ad.read_h5ad(path)
    cells = None
    if max_cells and adata.n_obs > max_cells:
        cells = np.sort(np.random.default_rng(0).choice(adata.n_obs, max_cells, replace=False))
        adata = adata[cells].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the DC file is log-normalised: prepare warns
        view = prepare(adata, "batch")
    batch = batch_of(view)
    labels = adata.obs["cell_type"].astype(str).to_numpy()[view.cells]
    x_pre = plotting.log_pca(view.logx, n_comps=50, seed=0)  # unintegrated, for PCR
    with_scib = importlib.util.find_spec("scib_metrics") is not None
    rows, umaps = [], {}
    for method in methods:
        for seed in seeds if method in SEEDED else [0]:
            result = run_isolated(method, path, cells, seed, quick)
            rep = representation(result)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = score(rep, batch, labels, x_pre, with_scib)
            cost = {k: result[k] for k in ("seconds", "peak_rss_mb", "peak_added_mb")}
            rows.append({"dataset": path.stem, "method": method, "seed": seed, **scores, **cost})
            shown = {k: round(v, 3) for k, v in rows[-1].items() if isinstance(v, float)}
            print(path.stem, method, seed, shown, flush=True)
            if "clusters" in result:
                own = protocol("own", labels, result["clusters"])
                rows.append(
                    {
                        "dataset": path.stem,
                        "method": f"{method} (own clusters)",
                        "seed": seed,
                        **own,
                    }
                )
            if draw and method not in umaps:
                umaps[method] = (
                    graph_umap(rep.knn_graph, rep.connectivities)
                    if rep.embedding is None
                    else plotting.umap(rep.embedding)
                )
    frame = pd.DataFrame(rows)
    if draw:
        figure(path.stem, frame, umaps, batch, labels, out / f"compare_{path.stem}.png")
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="extra .h5ad files (batch, cell_type in obs)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="seeds of the seeded methods (deepbid, scVI)",
    )
    parser.add_argument("--max-cells", type=int, default=None, help="subsample each file")
    parser.add_argument("--no-shared", action="store_true", help="skip ../shared/data")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few epochs for deepbid and scVI (a smoke test, not a result)",
    )
    parser.add_argument(
        "--keep",
        metavar="CSV",
        help="an earlier compare.csv whose rows of the methods not run now are kept (with "
        "their own commit): rerun deepbid alone after a change to it",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    paths = ([] if args.no_shared else sorted(SHARED.glob("*.h5ad"))) + [
        Path(p) for p in args.paths
    ]
    methods = [m for m in args.methods if available(m)]
    skipped = sorted(set(args.methods) - set(methods))
    if skipped:
        print(f"not installed, skipped: {skipped} (pip install -e '.[benchmark]')")
    if importlib.util.find_spec("scib_metrics") is None:
        print("scib-metrics not installed: no scIB columns (pip install -e '.[benchmark]')")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frames = [
        benchmark_file(path, methods, args.seeds, args.max_cells, args.quick, out, not args.keep)
        for path in paths
    ]
    result = pd.concat(frames, ignore_index=True).assign(**provenance())
    if args.keep:
        result = kept_with(pd.read_csv(args.keep), result, methods)
    result.to_csv(out / "compare.csv", index=False)
    (out / "compare.md").write_text(markdown(result, args.seeds))
    (out / "compare_summary.md").write_text(summary_markdown(result))
    print((out / "compare.md").read_text())


if __name__ == "__main__":
    main()
