"""benchmarks/profiling.py: its timers give each phase its own seconds, its FLOP count is
that of the products a step runs, and a profiled command-line run adds up."""

import time

import pandas as pd
import pytest
import torch
from conftest import benchmark_script

from deepbid.datasets import simulate


@pytest.fixture(scope="module")
def profiling():
    with benchmark_script("profiling") as module:
        yield module


def test_a_phase_excludes_the_phases_it_calls(profiling):
    clock = profiling.Clock()
    inner = clock.wrap(lambda: time.sleep(0.05), "inner")
    outer = clock.wrap(lambda: (time.sleep(0.02), inner(), time.sleep(0.02)), "outer")
    start = time.perf_counter()
    outer()
    wall = time.perf_counter() - start
    assert clock.seconds["inner"] >= 0.05
    assert clock.seconds["outer"] >= 0.04
    assert clock.seconds["outer"] <= wall - clock.seconds["inner"] + 1e-6
    assert sum(clock.seconds.values()) == pytest.approx(wall, abs=5e-3)


def test_flops_are_those_of_a_linear_layers_three_products(profiling):
    layer = torch.nn.Linear(30, 20)
    x = torch.randn(8, 30, requires_grad=True)
    recorder = profiling.ShapeRecorder()
    with recorder:
        layer(x).sum().backward()
    # forward, gradient of the input, gradient of the weight
    assert sorted(recorder.shapes) == sorted([(8, 30, 20), (8, 20, 30), (20, 8, 30)])


def test_a_profiled_run_adds_up(profiling, tmp_path):
    path = tmp_path / "sim.h5ad"
    simulate(600, n_genes=200, n_batches=2, n_types=3, seed=0).write_h5ad(path)
    result = profiling.profile(str(path), denoised=True)
    rows = profiling.rows_of(
        600, True, result, {"commit": "x", "date": "d", "cores": 1, "threads": 1}
    )
    phases = {row["phase"]: row for row in rows}
    assert {"training: pretrain", "training: cluster", "training: decoder"} <= set(phases)
    assert {"K rule: Leiden scans", "final mixture (EM)", "writing the output"} <= set(phases)
    assert phases["other"]["seconds"] >= 0
    assert phases["other"]["seconds"] < 0.2 * phases["total"]["seconds"]
    cluster = phases["training: cluster"]
    assert cluster["steps"] > 0 and 0 < cluster["share_of_matmul_rate"] < 2
    assert "| training: cluster |" in profiling.markdown(pd.DataFrame(rows))
