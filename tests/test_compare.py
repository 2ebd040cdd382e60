"""benchmarks/compare.py keeps working: a small run of PCA, Harmony and a quick deepbid.

The scIB columns are checked where scib-metrics is installed and must be absent where
it is not; everything else runs either way.
"""

import importlib.util
import re
import subprocess
import sys
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"
PROTOCOLS = ("leiden_r1", "k_rule", "leiden_best", "kmeans_true_k")
SCIB = (
    "scib_leiden_nmi",
    "scib_leiden_ari",
    "scib_isolated_labels",
    "scib_silhouette_label",
    "scib_clisi",
    "scib_bras",
    "scib_ilisi",
    "scib_kbet",
    "scib_graph_connectivity",
    "scib_pcr_comparison",
    "scib_bio_conservation",
    "scib_batch_correction",
    "scib_total",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    if importlib.util.find_spec("harmonypy") is None:
        pytest.skip("harmonypy is not installed (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("compare")
    with as_file(files("deepbid.datasets") / "sc_mixology_3cl.h5ad") as source:
        subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                "--no-shared",
                str(source),
                "--max-cells",
                "300",
                "--methods",
                "pca",
                "harmony",
                "deepbid",
                "--seeds",
                "0",
                "1",
                "--quick",
                "--out",
                str(out),
            ],
            check=True,
        )
    return out


def test_every_protocol_for_every_embedding(run):
    table = pd.read_csv(run / "compare.csv")
    assert list(table["method"]) == [
        "pca",
        "harmony",
        "deepbid",
        "deepbid (own clusters)",
        "deepbid",
        "deepbid (own clusters)",
    ]
    assert list(table["seed"]) == [0, 0, 0, 0, 1, 1]
    methods = table[~table["method"].str.endswith("(own clusters)")]
    own = table[table["method"] == "deepbid (own clusters)"]
    for name in PROTOCOLS:
        for score in (f"ari_{name}", f"nmi_{name}"):
            assert methods[score].between(-1, 1).all(), score
            assert own[score].isna().all(), score
    assert own["ari_own"].between(-1, 1).all() and own["nmi_own"].between(-1, 1).all()
    assert methods["ari_own"].isna().all()
    # the oracle is at least as good as resolution 1, which is one of its resolutions
    assert (methods["ari_leiden_best"] >= methods["ari_leiden_r1"]).all()
    assert (methods["seconds"] > 0).all() and (methods["peak_added_mb"] > 0).all()


def test_scib_columns_present_exactly_when_installed(run):
    table = pd.read_csv(run / "compare.csv")
    methods = table[~table["method"].str.endswith("(own clusters)")]
    if importlib.util.find_spec("scib_metrics") is None:
        assert not any(column.startswith("scib_") for column in table.columns)
        return
    for column in SCIB:
        assert methods[column].between(0, 1).all(), column
    bio = methods[list(SCIB[:5])].mean(axis=1)
    batch = methods[list(SCIB[5:10])].mean(axis=1)
    np.testing.assert_allclose(methods["scib_total"], 0.6 * bio + 0.4 * batch)
    # Harmony mixes the two protocols more than no integration does
    assert methods["scib_ilisi"].iloc[1] > methods["scib_ilisi"].iloc[0]


def test_provenance_and_outputs(run):
    table = pd.read_csv(run / "compare.csv")
    assert table["commit"].str.fullmatch(r"([0-9a-f]{40}(\+dirty)?|unknown)").all()
    assert pd.to_datetime(table["date"]).notna().all()
    assert (table["cores"] >= 1).all()
    assert table["versions"].str.contains(r"deepbid=\S+; torch=", regex=True).all()
    text = (run / "compare.md").read_text()
    assert f"commit `{table['commit'][0]}`" in text.splitlines()[0]
    assert re.search(r"\| sc_mixology_3cl \| deepbid \| 2 \| \d\.\d{3} ± \d\.\d{3} \|", text)
    assert "| deepbid (own clusters) |" in text
    assert (run / "compare_sc_mixology_3cl.png").stat().st_size > 10_000
