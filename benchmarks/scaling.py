"""Time and memory of deepbid against the number of cells, with scVI alongside.

Simulated counts (``deepbid.datasets.simulate``: 2,000 genes, 3 batches, 8 cell
types, per-batch gene scaling and library shifts, unequal type mixes) at 5k,
20k, 50k and 100k cells are written to h5ad first; then every run reads its
file in a fresh process and integrates it end to end with default settings
(reading, gene selection, pretraining, K estimation, clustering phase, and the
embedding, clusters and denoised matrix written into the AnnData). scVI, on the
same genes' counts with its default training length, runs at the sizes given by
``--scvi-cells``. Seconds are that process's wall time, memory its peak
resident set (VmHWM). ARI is of each method's own clusters (deepbid: its
clusters with K estimated; scVI: Leiden at resolution 1, as in compare.py)
and, for both, of k-means with the true K on the embedding.

deepbid's training arithmetic (the linear layers' multiply-adds, forward and
backward, counted from the settings) divided by the seconds its minibatch steps
took is reported as a fraction of the same process's dense float32 matmul rate.

    pip install -e ".[benchmark]"
    python benchmarks/scaling.py                      # 5k 20k 50k 100k; scVI at 5k 20k
    python benchmarks/scaling.py --cells 2000 5000 --scvi-cells
    python benchmarks/scaling.py --device cuda --cells 20000 100000 1000000 --scvi-cells 20000

Writes results/scaling.csv, results/scaling.md and results/scaling.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import queue as queue_module
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from compare import memory_mb
from sklearn.cluster import KMeans

import deepbid
from deepbid import metrics
from deepbid.data import prepare
from deepbid.evaluate import leiden

HERE = Path(__file__).resolve().parent


def markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of ``frame`` (numbers to 3 decimals)."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines) + "\n"


def matmul_rate(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """Median dense float32 ``size x size`` matmul rate on ``device``, FLOP/s."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / float(np.median(times))


def training_flops(settings: dict, n_genes: int, n_batches: int, n_cells: int) -> float:
    """Multiply-add FLOPs of the linear layers over all of deepbid's minibatch steps.

    Per cell a layer with ``P`` weights costs ``2P`` forward, ``2P`` for its weight
    gradient and ``2P`` for its input gradient (skipped where the input needs none).
    """
    f, hidden, latent = n_genes, settings["hidden_dim"], settings["latent_dim"]
    enc1, enc2, head = f * hidden, hidden * latent, hidden * f
    dec1 = (latent + (n_batches if settings["conditional_decoder"] else 0)) * hidden
    per_cell = {
        "pretrain_outer": 4 * enc1 + 6 * head,
        "pretrain_inner": 2 * enc1 + 4 * enc2 + 6 * dec1,
        "pretrain": 4 * enc1 + 6 * (enc2 + dec1 + 3 * head),
        "cluster": 4 * enc1 + 6 * (enc2 + dec1 + 2 * head),
    }
    epochs = {
        "pretrain_outer": settings["layer_epochs"],
        "pretrain_inner": settings["layer_epochs"],
        "pretrain": settings["pretrain_epochs"],
        "cluster": settings["epochs"],
    }
    return float(sum(per_cell[p] * epochs[p] for p in per_cell) * n_cells)


def kmeans_ari(embedding: np.ndarray, labels: np.ndarray) -> float:
    k = np.unique(labels).size
    return metrics.ari(labels, KMeans(k, n_init=3, random_state=0).fit_predict(embedding))


def run_deepbid(path: str, device: str) -> dict:
    rate = matmul_rate(deepbid.model.resolve_device(device))
    start = time.perf_counter()
    adata = ad.read_h5ad(path)
    deepbid.integrate(adata, "batch", seed=0, device=device, progress=False)
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    info = adata.uns["deepbid"]
    history = info["history"]
    step_seconds = sum(float(np.sum(terms["seconds"])) for terms in history.values())
    used = adata.obs["deepbid_cluster"].notna().to_numpy()
    flops = training_flops(
        info["settings"], len(info["genes"]), len(info["batches"]), int(used.sum())
    )
    labels = adata.obs["cell_type"].astype(str).to_numpy()[used]
    embedding = adata.obsm["X_deepbid"][used]
    settings = info["settings"]
    return {
        "device": settings["device"],
        "seconds": seconds,
        "peak_rss_mb": peak,
        "ari": metrics.ari(labels, adata.obs["deepbid_cluster"].to_numpy()[used]),
        "ari_kmeans_true_k": kmeans_ari(embedding, labels),
        "n_clusters": int(settings["n_clusters"]),
        "epochs": f"{settings['layer_epochs']}+{settings['layer_epochs']}+"
        f"{settings['pretrain_epochs']}+{settings['epochs']}",
        "train_gflop_per_s": flops / step_seconds / 1e9,
        "matmul_gflop_per_s": rate / 1e9,
        "rate_fraction": flops / step_seconds / rate,
    }


def run_scvi(path: str, device: str) -> dict:
    import scvi

    scvi.settings.seed = 0
    start = time.perf_counter()
    adata = ad.read_h5ad(path)
    view = prepare(adata, "batch")
    holder = ad.AnnData(view.counts)
    holder.obs["batch"] = adata.obs["batch"].to_numpy()[view.cells]
    scvi.model.SCVI.setup_anndata(holder, batch_key="batch")
    model = scvi.model.SCVI(holder)
    accelerator = "gpu" if deepbid.model.resolve_device(device).type == "cuda" else "cpu"
    model.train(accelerator=accelerator, enable_progress_bar=False)
    embedding = model.get_latent_representation()
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM")
    labels = adata.obs["cell_type"].astype(str).to_numpy()[view.cells]
    clusters = leiden(embedding, seed=0)
    return {
        "device": accelerator,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "ari": metrics.ari(labels, clusters),
        "ari_kmeans_true_k": kmeans_ari(embedding, labels),
        "n_clusters": int(np.unique(clusters).size),
        "epochs": str(max(len(values) for values in model.history.values())),
    }


def _child(method: str, path: str, device: str, queue: mp.Queue) -> None:
    warnings.simplefilter("ignore")
    queue.put(globals()[f"run_{method}"](path, device))


def run_isolated(method: str, path: str, device: str) -> dict:
    """One run in a fresh process, so that its time and peak memory are its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(method, path, device, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{method} on {path} failed (exit {process.exitcode})") from None
    process.join()
    return result


def figure(table: pd.DataFrame, path: Path) -> None:
    """Log-log panels of seconds and peak memory against cells, a line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, title in (
        (axes[0], "seconds", "wall time (s)"),
        (axes[1], "peak_rss_mb", "peak resident memory (MB)"),
    ):
        for method, rows in table.groupby("method"):
            ax.plot(rows["cells"], rows[column], marker="o", label=method)
        cells = np.array(sorted(table["cells"].unique()), dtype=float)
        first = table[table["method"] == "deepbid"].sort_values("cells")[column].iloc[0]
        ax.plot(cells, first * cells / cells[0], ls=":", c="grey", label="linear")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cells")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=int, default=[5000, 20000, 50000, 100000])
    parser.add_argument("--scvi-cells", nargs="*", type=int, default=[5000, 20000])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument(
        "--batch-specific", type=int, default=0, help="types each held by one batch only"
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present) or 'cpu'")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    scvi_cells = args.scvi_cells if importlib.util.find_spec("scvi") else []
    if args.scvi_cells and not scvi_cells:
        print("scvi-tools not installed, scVI skipped (pip install -e '.[benchmark]')")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(set(args.cells) | set(scvi_cells)):
            path = str(Path(tmp) / f"sim_{n}.h5ad")
            deepbid.datasets.simulate(
                n, args.genes, n_batches=3, n_types=8, batch_specific=args.batch_specific, seed=0
            ).write_h5ad(path)
            runs = (("deepbid", args.cells), ("scvi", scvi_cells))
            methods = [method for method, sizes in runs if n in sizes]
            for method in methods:
                result = run_isolated(method, path, args.device)
                rows.append({"cells": n, "method": method, **result})
                print(pd.DataFrame([rows[-1]]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "scaling.csv", index=False)
    (out / "scaling.md").write_text(markdown(table.fillna("")))
    figure(table, out / "scaling.png")
    print(markdown(table.fillna("")))


if __name__ == "__main__":
    main()
