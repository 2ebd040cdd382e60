"""benchmarks/compare.py keeps working: a tiny run with the cheap peers that are installed."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


def test_compare_runs_on_a_subsample(small, tmp_path):
    if importlib.util.find_spec("harmonypy") is None:
        pytest.skip("the benchmark extra is not installed (pip install -e '.[benchmark]')")
    source = tmp_path / "tiny.h5ad"
    small.write_h5ad(source)
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--no-shared",
            str(source),
            "--max-cells",
            "150",
            "--methods",
            "pca",
            "harmony",
            "--out",
            str(tmp_path),
        ],
        check=True,
    )
    table = pd.read_csv(tmp_path / "compare.csv")
    assert list(table["method"]) == ["pca", "harmony"]
    for column in (
        "ari",
        "nmi",
        "ari_kmeans_true_k",
        "ilisi_median",
        "clisi_median",
        "batch_asw",
        "graph_connectivity",
        "seconds",
        "peak_rss_mb",
    ):
        assert table[column].notna().all()
    # Harmony mixes the two protocols more than no integration does
    assert table["ilisi_median"][1] > table["ilisi_median"][0]
    assert (tmp_path / "compare_tiny.png").stat().st_size > 10_000
