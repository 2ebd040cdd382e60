"""Data-parallel training: two CPU processes (gloo) match one process in quality."""

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepbid import DeepBID, distributed, metrics
from deepbid.datasets import mixology_3cl


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = DeepBID(seed=0, progress=False, device="cpu").fit(mixology_3cl(), "batch")
        state = {k: v.numpy() for k, v in model.module.state_dict().items()}
        np.savez(
            os.path.join(out_dir, f"rank{rank}.npz"),
            clusters=model.clusters(),
            centres=model.centres.numpy(),
            **state,
        )
    finally:
        distributed.close()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(out / "init"), str(out)), nprocs=2, join=True)
    return {r: dict(np.load(out / f"rank{r}.npz")) for r in range(2)}


def test_processes_end_with_the_same_model(two_process_run):
    first, second = two_process_run[0], two_process_run[1]
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_two_processes_match_one_in_quality(two_process_run):
    adata = mixology_3cl()
    labels = adata.obs["cell_type"].to_numpy()
    single = DeepBID(seed=0, progress=False, device="cpu").fit(adata, "batch")
    ari_single = metrics.ari(labels, single.clusters())
    ari_ddp = metrics.ari(labels, two_process_run[0]["clusters"])
    assert ari_single > 0.85
    assert abs(ari_ddp - ari_single) <= 0.02, (ari_single, ari_ddp)


def test_shards_partition_the_cells():
    assert not distributed.active()
    assert np.array_equal(distributed.shard(7), np.arange(7))


def test_cli_under_torchrun_writes_one_result(tmp_path):
    source = tmp_path / "in.h5ad"
    mixology_3cl().write_h5ad(source)
    target = tmp_path / "out.h5ad"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "deepbid.cli",
        "integrate",
        str(source),
        "-o",
        str(target),
        "--label-key",
        "cell_type",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = ad.read_h5ad(target)
    assert out.obsm["X_deepbid"].shape == (out.n_obs, 300)
    table = pd.read_csv(tmp_path / "out.metrics.csv", index_col=0)
    assert table.loc["deepbid", "ari"] > 0.85
