"""Time, memory and quality against the number of cells: deepbid's command line end to
end, Harmony, and scVI at two training lengths.

One simulated scenario at every size (``deepbid.datasets.simulate``: 2,000 genes,
8 batches, 10 cell types of which two are held by one batch only and one holds 1 % of
the cells, per-batch gene scaling and library shifts), written to h5ad first. Every
run then starts a fresh process that reads that file:

- ``deepbid``: the command line, ``deepbid integrate FILE -o OUT --label-key cell_type
  --no-denoised`` (reading, gene selection, training, K estimated, results written to
  OUT, and its own metrics table); ``steps`` are its optimiser steps and ``passes`` its
  passes over all cells (two reading, then one per clustering epoch plus two
  embeddings).
- ``harmony``: log-normalisation and PCA (50 components, scanpy's sparse PCA) of the
  genes deepbid selects, then harmonypy, all timed; skipped above ``--harmony-max``
  cells and stopped after 30 minutes.
- ``scvi``: scvi-tools on the raw counts of the same genes, with its default number of
  epochs (``scvi``) and with deepbid's number of optimiser steps at that size
  (``scvi (deepbid's steps)``), at the sizes of ``--scvi-cells``.

Seconds are the run's wall time, memory its process's peak resident set (VmHWM). Every
method is scored by the same code on the same 20,000 randomly drawn cells (all cells
below that): ARI of deepbid's own clusters (K estimated), for the peers of Leiden at
resolution 1 and of k-means with the true K on their embeddings; median iLISI of the
batches on each embedding.

    pip install -e ".[benchmark]"
    python benchmarks/scaling.py                          # 5k 20k 100k 1M; ~2 h on 2 cores
    python benchmarks/scaling.py --cells 5000 20000 --scvi-cells 5000

Writes results/scaling.csv and results/scaling.md (with the commit and versions) and
results/scaling.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import multiprocessing as mp
import queue as queue_module
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import h5py
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from compare import memory_mb, provenance
from sklearn.cluster import KMeans

import deepbid
from deepbid import metrics
from deepbid.data import prepare
from deepbid.evaluate import leiden, scored_sample

HERE = Path(__file__).resolve().parent
#: ``simulate`` arguments besides the size.
SCENARIO = dict(
    n_genes=2000,
    n_batches=8,
    n_types=10,
    batch_specific=2,
    type_shares=[0.2, 0.15, 0.12, 0.12, 0.1, 0.1, 0.08, 0.07, 0.05, 0.01],
    seed=0,
)
#: Longest a run may take (s); Harmony past it is reported as not finished.
LIMIT = 30 * 60


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (numbers to 3 decimals)."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def run_deepbid(path: str, device: str, steps: int | None) -> dict:
    from deepbid.cli import main

    out = Path(path).with_suffix(".deepbid.h5ad")
    table = Path(path).with_suffix(".metrics.csv")
    argv = ["integrate", path, "-o", str(out), "--label-key", "cell_type", "--no-denoised"]
    start = time.perf_counter()
    code = main([*argv, "--quiet", "--device", device, "--metrics", str(table)])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"deepbid integrate exited with {code}")
    with h5py.File(out, "r") as f:
        info = ad.io.read_elem(f["uns/deepbid"])
        clusters = ad.io.read_elem(f["obs"])["deepbid_cluster"]
        embedding = f["obsm/X_deepbid"]
        sample = scored_sample(embedding.shape[0], 0)
        embedding = embedding[sample]
    history = info["history"]
    return {
        "seconds": seconds,
        "integrate_seconds": float(pd.read_csv(table, index_col=0).loc["deepbid", "seconds"]),
        "peak_rss_mb": memory_mb("VmHWM"),
        "steps": int(sum(np.sum(terms["steps"]) for terms in history.values())),
        "passes": 2 + len(history["cluster"]["steps"]) + 2,
        "clusters": clusters.astype(str).to_numpy()[sample],
        "embedding": embedding,
        "sample": sample,
    }


def _genes_view(path: str):
    adata = ad.read_h5ad(path)
    return adata, prepare(adata, "batch")


def run_harmony(path: str, device: str, steps: int | None) -> dict:
    import harmonypy
    import scanpy as sc

    start = time.perf_counter()
    adata, view = _genes_view(path)
    holder = ad.AnnData(view.logx)
    sc.pp.pca(holder, n_comps=50, random_state=0)
    meta = pd.DataFrame({"batch": adata.obs["batch"].to_numpy()[view.cells]})
    z = np.asarray(
        harmonypy.run_harmony(holder.obsm["X_pca"], meta, "batch", random_state=0).Z_corr
    )
    z = z if z.shape[0] == view.n_cells else z.T
    seconds = time.perf_counter() - start
    sample = scored_sample(view.n_cells, 0)
    return {
        "seconds": seconds,
        "peak_rss_mb": memory_mb("VmHWM"),
        "embedding": z[sample],
        "sample": sample,
    }


def run_scvi(path: str, device: str, steps: int | None) -> dict:
    import scvi

    scvi.settings.seed = 0
    start = time.perf_counter()
    adata, view = _genes_view(path)
    holder = ad.AnnData(view.counts)
    holder.obs["batch"] = adata.obs["batch"].to_numpy()[view.cells]
    scvi.model.SCVI.setup_anndata(holder, batch_key="batch")
    model = scvi.model.SCVI(holder)
    accelerator = "gpu" if deepbid.model.resolve_device(device).type == "cuda" else "cpu"
    options = {}
    if steps is not None:  # scVI trains on 90 % of the cells, 128 per step
        per_epoch = math.ceil(0.9 * view.n_cells / 128)
        options["max_epochs"] = max(1, round(steps / per_epoch))
    model.train(accelerator=accelerator, enable_progress_bar=False, **options)
    embedding = model.get_latent_representation()
    seconds = time.perf_counter() - start
    epochs = max(len(values) for values in model.history.values())
    sample = scored_sample(view.n_cells, 0)
    return {
        "seconds": seconds,
        "peak_rss_mb": memory_mb("VmHWM"),
        "steps": epochs * math.ceil(0.9 * view.n_cells / 128),
        "embedding": embedding[sample],
        "sample": sample,
    }


def _child(method: str, path: str, device: str, steps: int | None, queue: mp.Queue) -> None:
    warnings.simplefilter("ignore")
    queue.put(globals()[f"run_{method}"](path, device, steps))


def run_isolated(method: str, path: str, device: str, steps: int | None = None) -> dict | None:
    """One run in a fresh process, so that its time and peak memory are its own;
    ``None`` when it passes :data:`LIMIT`."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, path, device, steps, queue))
    process.start()
    start = time.perf_counter()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{method} on {path} failed (exit {process.exitcode})") from None
            if time.perf_counter() - start > LIMIT:
                process.kill()
                return None
    process.join()
    return result


def score(result: dict, labels: np.ndarray, batch: np.ndarray) -> dict:
    """ARI and median iLISI of a run on its scored cells (see the module docstring)."""
    cells = result.pop("sample")
    x, truth = result.pop("embedding"), labels[cells]
    out = {"ilisi_median": float(np.median(metrics.lisi(x, batch[cells])))}
    if "clusters" in result:
        out["ari"] = metrics.ari(truth, result.pop("clusters"))
    else:
        out["ari"] = metrics.ari(truth, leiden(x, seed=0))
    k = np.unique(truth).size
    out["ari_kmeans_true_k"] = metrics.ari(
        truth, KMeans(k, n_init=3, random_state=0).fit_predict(x)
    )
    return out


def figure(table: pd.DataFrame, path: Path) -> None:
    """Log-log panels of seconds and peak memory against cells, a line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, title in (
        (axes[0], "seconds", "wall time (s)"),
        (axes[1], "peak_rss_mb", "peak resident memory (MB)"),
    ):
        for method, rows in table.dropna(subset=[column]).groupby("method"):
            ax.plot(rows["cells"], rows[column], marker="o", label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def exponent(table: pd.DataFrame, low: int) -> tuple[float, int]:
    """Slope of log seconds on log cells for deepbid's rows from ``low`` cells up (from
    its smallest size where fewer than two sizes reach ``low``: a line needs two), and
    the size it starts from; NaN from a single size."""
    rows = table[table["method"] == "deepbid"]
    if (rows["cells"] >= low).sum() >= 2:
        rows = rows[rows["cells"] >= low]
    if rows["cells"].nunique() < 2:
        return float("nan"), int(rows["cells"].min())
    slope = np.polyfit(np.log(rows["cells"]), np.log(rows["seconds"]), 1)[0]
    return float(slope), int(rows["cells"].min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=int, default=[1_000_000, 100_000, 20_000, 5_000])
    parser.add_argument("--scvi-cells", nargs="*", type=int, default=[5_000, 20_000, 100_000])
    parser.add_argument(
        "--scvi-default-max",
        type=int,
        default=100_000,
        help="largest size with scVI's default epochs (above: deepbid's steps only)",
    )
    parser.add_argument("--data", default=None, help="folder keeping the simulated h5ad files")
    parser.add_argument("--harmony-max", type=int, default=1_000_000)
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present) or 'cpu'")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    scvi_cells = args.scvi_cells if importlib.util.find_spec("scvi") else []
    harmony = importlib.util.find_spec("harmonypy") is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = provenance()
    rows = []

    def record(n: int, method: str, result: dict | None, labels, batch) -> None:
        row = {"cells": n, "method": method}
        if result is None:
            row["note"] = f"not finished in {LIMIT // 60} min"
        else:
            row |= score(result, labels, batch) | result
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(out / "scaling.csv", index=False)

    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            path = Path(args.data or tmp) / f"sim_{n}.h5ad"
            if not path.exists():
                deepbid.datasets.simulate(n, **SCENARIO).write_h5ad(path)
            obs = ad.read_h5ad(path, backed="r").obs
            labels = obs["cell_type"].astype(str).to_numpy()
            batch = obs["batch"].astype(str).to_numpy()
            path = str(path)
            result = run_isolated("deepbid", path, args.device)
            steps = result["steps"]
            record(n, "deepbid", result, labels, batch)
            if harmony and n <= args.harmony_max:
                record(n, "harmony", run_isolated("harmony", path, args.device), labels, batch)
            if n in scvi_cells:
                if n <= args.scvi_default_max:
                    record(n, "scvi", run_isolated("scvi", path, args.device), labels, batch)
                result = run_isolated("scvi", path, args.device, steps)
                record(n, "scvi (deepbid's steps)", result, labels, batch)
            for name in Path(path).parent.glob(f"sim_{n}.*.*"):
                name.unlink()  # deepbid's output and metrics
    table = pd.DataFrame(rows).sort_values(["cells", "method"])
    table.to_csv(out / "scaling.csv", index=False)
    slope, first = exponent(table, 20_000)
    header = f"commit {stamp['commit']}, {stamp['date']}, {stamp['cores']} cores; "
    header += f"{stamp['versions']}\n\n"
    if np.isfinite(slope):
        header += (
            f"deepbid's log seconds on log cells from {first // 1000}k up: slope {slope:.2f}\n\n"
        )
    (out / "scaling.md").write_text(header + markdown(table.fillna("")))
    figure(table, out / "scaling.png")
    print(header + markdown(table.fillna("")))


if __name__ == "__main__":
    main()
