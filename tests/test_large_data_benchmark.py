"""benchmarks/large_data.py: every variant is a valid setting that changes the fit on
large data, and a fit's row carries what the table reads."""

import numpy as np
import pytest
from conftest import FAST, benchmark_script

import deepbid
from deepbid.settings import Settings


@pytest.fixture(scope="module")
def large_data():
    with benchmark_script("large_data") as module:
        yield module


def test_each_alternative_changes_what_an_epoch_draws_on_large_data(large_data):
    default = Settings().for_cells(100_000)
    for name, settings in large_data.VARIANTS.items():
        variant = Settings.given(**settings).for_cells(100_000)
        differs = variant.cells_per_epoch("epochs") != default.cells_per_epoch("epochs")
        assert differs == (name != "default")


def test_a_fit_gives_k_ari_ilisi_and_seconds(large_data, small, monkeypatch):
    monkeypatch.setattr(
        large_data,
        "DeepBID",
        lambda seed, progress, **settings: deepbid.DeepBID(
            n_clusters=3, seed=seed, **{**FAST, "progress": progress, **settings}
        ),
    )
    row = large_data.fit(small, 0, {"epoch_cells": 100})
    assert row["n_clusters"] == 3 and row["ari"] > 0.5
    assert np.isfinite(row["ilisi_median"]) and row["seconds"] > 0
