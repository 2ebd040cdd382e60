"""benchmarks/stability.py: the two orders of a set are fitted and matched cell by cell,
and its table reads the targets off the rows."""

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, benchmark_script

import deepbid


@pytest.fixture(scope="module")
def stability():
    with benchmark_script("stability") as module:
        yield module


def test_both_orders_are_matched_cell_by_cell(stability, small, monkeypatch):
    """A fit whose clusters follow the cells, not their positions, agrees with itself in
    any order (ARI 1 between the orders), and the rows carry K, ARI and iLISI."""
    monkeypatch.setattr(
        stability,
        "DeepBID",
        lambda seed, progress: deepbid.DeepBID(
            n_clusters=3, seed=seed, **{**FAST, "progress": progress}
        ),
    )
    rows = stability.both_orders(small, seed=0)
    assert [r["order"] for r in rows] == ["given", "shuffled"]
    assert all(r["n_clusters"] == 3 and np.isfinite(r["ilisi_median"]) for r in rows)
    assert rows[0]["ari_between_orders"] == rows[1]["ari_between_orders"]
    # the shuffled order trains on other minibatches: close, not the same clusters
    assert rows[0]["ari_between_orders"] > 0.5


def test_the_table_marks_a_changed_k_and_a_spread_over_seeds(stability):
    def rows(name, ks, aris, between):
        return [
            {
                "dataset": name,
                "seed": seed,
                "order": order,
                "n_clusters": k,
                "ari": ari,
                "ari_between_orders": b,
                "ilisi_median": 1.5,
                "seconds": 1.0,
                "commit": "abc",
                "date": "today",
                "cores": 2,
                "threads": 1,
            }
            for seed, (pair_k, pair_ari, b) in enumerate(zip(ks, aris, between, strict=True))
            for order, k, ari in zip(("given", "shuffled"), pair_k, pair_ari, strict=True)
        ]

    results = pd.DataFrame(
        rows("steady", [(3, 3)] * 3, [(0.91, 0.91), (0.92, 0.92), (0.91, 0.90)], [1.0, 0.99, 0.98])
        + rows("flips", [(9, 10), (9, 9), (9, 9)], [(0.93, 0.94)] * 3, [0.99, 0.99, 0.99])
        + rows("spread", [(4, 4)] * 3, [(0.80, 0.80), (0.90, 0.90), (0.85, 0.85)], [1.0] * 3)
    )
    table = {
        line.split(" | ")[0].strip("| "): line for line in stability.table(results).splitlines()
    }
    assert table["steady"].endswith("| yes | 0.980 | 0.010 | yes | 0.913 / 1.50 |")
    assert "| no | 0.990 | 0.000 | no |" in table["flips"]
    assert "| yes | 1.000 | 0.050 | no |" in table["spread"]
