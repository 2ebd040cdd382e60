"""A one-page, self-contained HTML report of a finished integration."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from . import plotting
from .markers import log_normalised, markers
from .model import DeepBID

#: Figures of the report, in order, with their captions.
FIGURES = {
    "umap_before.png": "UMAP before integration (PCA of the log-normalised genes used)",
    "umap_after.png": "UMAP of the deepbid embedding",
    "k_choice.png": "How the number of clusters was chosen: the K rule's Leiden scans "
    "(star: chosen; crosses: set aside as batch splits or outliers of the scan) and the "
    "clusters tested for two modes after training",
    "composition.png": "Batch composition of each cluster (cell counts above the bars)",
    "markers_dotplot.png": "Top marker genes per cluster (Wilcoxon, one vs rest)",
    "loss_curves.png": "Training: per-epoch mean of the total loss and its largest "
    "weighted terms, one panel per phase",
}

#: The figures the report draws itself; the others come from the evaluation.
OWN_FIGURES = ("composition.png", "markers_dotplot.png")


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_report(
    directory: str | Path,
    adata: ad.AnnData,
    model: DeepBID,
    metrics: pd.DataFrame,
    *,
    batch_key: str,
    label_key: str | None = None,
    transferred: pd.DataFrame | None = None,
    cells: np.ndarray | None = None,
    figures: str | Path | None = None,
) -> Path:
    """Write ``report.html`` (figures embedded) into ``directory``.

    ``adata`` is the annotated result of :func:`deepbid.integrate` (marker genes
    are added to it); ``figures`` (``None``: ``directory``) must already hold
    ``umap_before.png``, ``umap_after.png``, ``k_choice.png`` and ``loss_curves.png``
    (as drawn by
    :func:`deepbid.evaluate.evaluate`); the report's own figures go into ``directory``.
    ``transferred``, the table of :func:`deepbid.transfer.transfer_summary`, adds a
    label-transfer section. ``cells`` (indices into ``adata``; ``None``: all) are the
    cells whose marker genes are ranked and drawn, a sample on large data.

    Returns
    -------
    The path of the page.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    drawn = directory if figures is None else Path(figures)
    comparison = _own_figures(directory, adata, model, batch_key, label_key, cells)
    settings = pd.Series(model.settings_dict(), name="value").to_frame()
    batches = html.escape(", ".join(model.batch_categories))
    sections = [
        "<h1>deepbid report</h1>",
        f"<p>{adata.n_obs:,} cells, {len(model.genes)} genes used, "
        f"{len(model.batch_categories)} batches ({batches}), "
        f"{model.cluster_count} clusters.</p>",
        "<h2>Metrics</h2>",
        metrics.to_html(float_format=lambda v: f"{v:.3f}", na_rep=""),
        "<h2>Figures</h2>",
        *(
            _img((directory if name in OWN_FIGURES else drawn) / name, caption)
            for name, caption in FIGURES.items()
        ),
    ]
    if comparison is not None:
        sections += [
            f"<h2>Clusters against {html.escape(label_key)}</h2>",
            "<h3>Contingency table</h3>",
            adata.uns["deepbid_contingency"].to_html(),
            "<h3>One-to-one matching and marker genes</h3>",
            comparison.to_html(),
        ]
    if transferred is not None:
        sections += [
            f"<h2>Labels transferred to {html.escape(transferred.index.name)}_deepbid</h2>",
            "<p>The known labels spread over the graph of each cell's 15 nearest cells "
            "(by angle in the embedding); confidence is the share of the cell's label "
            "distribution behind its label; 'unassigned': the cell's membership in "
            "clusters without labelled cells.</p>",
            transferred.to_html(float_format=lambda v: f"{v:.3f}", na_rep=""),
        ]
    sections += ["<h2>Settings</h2>", settings.to_html()]
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>deepbid report</title>"
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "img{max-width:100%}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>"
    )
    path = directory / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _own_figures(
    directory: Path,
    adata: ad.AnnData,
    model: DeepBID,
    batch_key: str,
    label_key: str | None,
    cells: np.ndarray | None,
) -> pd.DataFrame | None:
    """Draw the report's own figures into ``directory``: the batch composition of each
    cluster and the dot plot of marker genes ranked on ``cells`` (indices into
    ``adata``; ``None``: all). Returns the marker comparison with ``label_key``, if
    given (:func:`deepbid.markers`)."""
    kept = adata.obs["deepbid_cluster"].notna().to_numpy()
    plotting.composition(
        adata.obs["deepbid_cluster"].astype(str).to_numpy()[kept],
        adata.obs[batch_key].astype(str).to_numpy()[kept],
        directory / "composition.png",
    )
    ranked = np.flatnonzero(kept) if cells is None else cells[kept[cells]]
    comparison = markers(adata, label_key=label_key, layer=model.layer, cells=ranked)
    chosen = adata[ranked]
    lognorm = log_normalised(chosen.to_memory() if chosen.isbacked else chosen, model.layer)
    lognorm.obs["deepbid_cluster"] = lognorm.obs["deepbid_cluster"].astype(str).astype("category")
    lognorm.uns["rank_genes_groups"] = adata.uns["rank_genes_groups"]
    plotting.marker_dotplot(lognorm, "deepbid_cluster", directory / "markers_dotplot.png")
    return comparison
