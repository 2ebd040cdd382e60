"""benchmarks/denoise.py keeps working: its --quick mode with deepbid (scVI too where
installed), scored against the simulator's true means."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "denoise.py"
COLUMNS = (
    "seed",
    "method",
    "output",
    "truth_r_with_batch",
    "truth_r_batch_free",
    "batch_effect_left",
    "batch_effect_null",
    "batch_effect_abs",
    "heldout_r",
    "heldout_mae",
    "heldout_bias",
    "seconds",
    "n_cells",
    "n_genes",
    "commit",
    "date",
    "cores",
    "versions",
)
#: Which metric columns every kind of row fills.
FILLED = {
    "counts": ("truth_r_with_batch", "truth_r_batch_free", "batch_effect_null", "batch_effect_abs"),
    "batch effect kept": ("batch_effect_left", "batch_effect_null", "batch_effect_abs"),
    "held-out entries": ("heldout_r", "heldout_mae", "heldout_bias"),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("denoise")
    # scVI's few quick epochs take seconds; its import is most of its cost
    methods = ["deepbid"] + (["scvi"] if importlib.util.find_spec("scvi") else [])
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--methods", *methods, "--out", str(out)],
        check=True,
    )
    return out


def test_csv_has_every_column_and_finite_scores(run):
    table = pd.read_csv(run / "denoise.csv")
    assert set(COLUMNS) <= set(table.columns)
    methods = set(table["method"])
    assert {"log-normalised counts", "true mean (reference)", "deepbid", "gene average"} <= methods
    deepbid = table[table["method"] == "deepbid"]
    assert list(deepbid["output"]) == ["own batch", "average", "as batch0", "held-out entries"]
    decodings = ("truth_r_with_batch", "truth_r_batch_free", "batch_effect_left")
    decodings += ("batch_effect_null", "batch_effect_abs", "seconds")
    for _, row in table.iterrows():
        for column in FILLED.get(row["output"], decodings):
            assert np.isfinite(row[column]), (row["method"], row["output"], column)
    decoded = table[table["output"] != "held-out entries"]
    # the reference row has no correlations (checked finite above where required)
    correlations = decoded[["truth_r_with_batch", "truth_r_batch_free"]].stack().dropna()
    assert correlations.between(-1, 1).all()
    assert (decoded["batch_effect_left"] >= 0).all()
    counts = table[table["method"] == "log-normalised counts"].iloc[0]
    assert counts["batch_effect_left"] == 1.0 and counts["batch_effect_abs"] > 0
    assert (decoded["batch_effect_null"] >= 0).all() and counts["batch_effect_null"] < 1
    held = table[table["output"] == "held-out entries"]
    assert held["heldout_r"].between(-1, 1).all() and (held["heldout_mae"] > 0).all()
    assert (table["n_cells"] == 500).all() and (table["seed"] == 0).all()
    if importlib.util.find_spec("scvi"):
        assert list(table[table["method"] == "scvi"]["output"]) == list(deepbid["output"])


def test_provenance_and_markdown(run):
    table = pd.read_csv(run / "denoise.csv")
    assert table["commit"].str.fullmatch(r"([0-9a-f]{40}(\+dirty)?|unknown)").all()
    assert pd.to_datetime(table["date"]).notna().all()
    assert table["versions"].str.contains(r"deepbid=\S+; torch=", regex=True).all()
    text = (run / "denoise.md").read_text()
    assert text.startswith(f"commit `{table['commit'][0]}`")
    assert "--quick: a smoke test" in text
    assert "| deepbid | average | 1 |" in text and "| gene average | held-out entries | 1 |" in text
