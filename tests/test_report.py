"""Marker genes, the cluster-to-reference comparison, and the HTML report.

The report is checked by parsing its HTML (no browser is installed in CI): every
figure must be an embedded PNG that decodes.
"""

import base64
import html.parser

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from deepbid import k_estimate, plotting
from deepbid.cli import main
from deepbid.markers import compare, markers
from deepbid.report import FIGURES


def test_compare_matches_one_to_one_and_splits_markers():
    contingency = pd.DataFrame(
        [[50, 2, 0], [3, 40, 1], [0, 30, 5], [1, 0, 20]],
        index=["0", "1", "2", "3"],
        columns=["A", "B", "C"],
    )
    ours = {"0": ["g1", "g2"], "1": ["g3", "g9"], "2": ["g4"], "3": ["g5", "g6"]}
    theirs = {"A": ["g1", "g7"], "B": ["g3"], "C": ["g6"]}
    table = compare(contingency, ours, theirs)
    assert table["matched_label"].to_dict() == {"0": "A", "1": "B", "2": "", "3": "C"}
    assert table.loc["1", "shared_markers"] == "g3" and table.loc["1", "new_markers"] == "g9"
    assert table.loc["2", "matched_cells"] == 0 and table.loc["3", "shared_markers"] == "g6"


def test_markers_of_cell_lines_are_found_and_plottable(small):
    small.obs["cluster"] = small.obs["cell_type"].astype(str).astype("category")
    table = markers(small, "cluster", label_key="cell_type", n_genes=20)
    # clusters equal to the labels: each matches its own line and shares all its markers
    assert (table.index == table["matched_label"]).all()
    assert (table["new_markers"] == "").all()
    # EGFR is amplified in HCC827 (CellBench): it must rank among that line's markers
    names = pd.DataFrame(small.uns["rank_genes_groups"]["names"])
    assert "EGFR" in list(names["HCC827"][:50])
    sc.pl.rank_genes_groups(small, n_genes=5, show=False)  # scanpy finds the ranking


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.headings, self._in_h = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self._in_h = tag in ("h1", "h2", "h3")

    def handle_data(self, data):
        if self._in_h:
            self.headings.append(data)
            self._in_h = False


@pytest.mark.parametrize("label", [True, False])
def test_report_page_embeds_every_figure(small, tmp_path, label):
    source = tmp_path / "in.h5ad"
    # every third cell's label hidden, for the label transfer
    hidden = [i % 3 == 0 for i in range(small.n_obs)]
    small.obs["partial"] = small.obs["cell_type"].astype(str).where(~pd.Series(hidden).to_numpy())
    small.write_h5ad(source)
    argv = [
        "integrate",
        str(source),
        "-o",
        str(tmp_path / "out.h5ad"),
        "--report",
        str(tmp_path / "report"),
        "--n-clusters",
        "3",
        "--epochs",
        "3",
        "--quiet",
    ]
    # with labels, the figures go to a folder of their own (the README's example)
    labelled = ["--label-key", "cell_type", "--transfer-labels", "partial"]
    labelled += ["--figures", str(tmp_path / "figs")]
    assert main(argv + (labelled if label else [])) == 0
    drawn = tmp_path / ("figs" if label else "report")
    assert (drawn / "umap_after.png").exists() and (drawn / "loss_curves.png").exists()
    parser = _Images()
    parser.feed((tmp_path / "report" / "report.html").read_text())
    assert len(parser.sources) == len(FIGURES)
    for name, src in zip(FIGURES, parser.sources, strict=True):
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :])
        # with K given, the K figure is one line of text: how the start was found
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > (
            2000 if name == "k_choice.png" else 5000
        )
    assert "Metrics" in parser.headings and "Settings" in parser.headings
    assert ("Clusters against cell_type" in parser.headings) == label
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    assert "rank_genes_groups" in out.uns
    assert ("deepbid_markers" in out.uns) == label
    # one loss panel per phase: its total and its weighted terms, which sum to it,
    # and none of its bookkeeping (steps, timings, membership change, temperature)
    history = out.uns["deepbid"]["history"]
    panels = dict(plotting.loss_panels(history))
    # the phases in the order they ran, though the file sorts its keys
    assert list(panels) == ["pretrain_outer", "pretrain_inner", "pretrain", "cluster", "decoder"]
    cluster = panels["cluster"]
    assert {"total", "nb", "kmeans"} <= set(cluster)
    assert not set(cluster) & {"seconds", "steps", "membership_change", "temperature"}
    terms = sum(np.asarray(v) for t, v in cluster.items() if t != "total")
    np.testing.assert_allclose(terms, cluster["total"], rtol=1e-5)
    assert len(history["cluster"]["seconds"]) == 3  # recorded, only not drawn
    assert ("Labels transferred to partial_deepbid" in parser.headings) == label
    if label:
        transferred = out.obs["partial_deepbid"].astype(str)[hidden]
        assert (transferred == out.obs["cell_type"].astype(str)[hidden]).mean() > 0.8


def test_k_choice_draws_the_scan_that_chose_k(tmp_path):
    # three separated types in two batches: the K rule's scan finds them
    rng = np.random.default_rng(0)
    types = np.repeat([0, 1, 2], 120)
    batch = np.tile([0, 1], 180)
    codes = np.eye(3)[types] @ rng.normal(0, 6, (3, 10)) + rng.normal(size=(360, 10))
    labels, report = k_estimate.estimate_partition(codes.astype(np.float32), batch, seed=0)
    assert labels.max() + 1 == 3 and report["n_clusters"][report["chosen"]] == 3
    divided = {"cluster": [0, 1, 2], "cells": [120] * 3, "p_value": [0.5, 1e-3, 0.9]}
    divided["divided"] = [False, True, False]
    estimated = plotting.k_choice(
        {"pretrained": report, "divided": divided}, 4, tmp_path / "estimated.png"
    )
    given = plotting.k_choice({"pretrained": {"resolution": 0.3}}, 3, tmp_path / "given.png")
    for path in (estimated, given):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a scan panel and a panel of the tests for two modes, against one panel for K given
    assert estimated.stat().st_size > 1.5 * given.stat().st_size
