"""Data-parallel training: two CPU processes (gloo), each reading only its shard of an
h5ad file, end with the same model, which matches one process in quality."""

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
from deepbid.data import prepare
from deepbid.datasets import mixology_3cl
from deepbid.errors import InputError
from deepbid.settings import Settings


def _worker(rank: int, world: int, init_file: str, data: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        adata = ad.read_h5ad(data, backed="r")
        model = DeepBID(seed=0, progress=False, device="cpu").fit(adata, "batch")
        view = model.train_view
        model.save(os.path.join(out_dir, f"model{rank}.pt"))
        state = {k: v.numpy() for k, v in model.module.state_dict().items()}
        np.savez(
            os.path.join(out_dir, f"rank{rank}.npz"),
            clusters=model.clusters(),
            latent=model.latent(),
            denoised=model.denoised(transform_batch=None),
            centres=model.centres.numpy(),
            view_positions=view.positions,
            view_values=view.matrix.data.size,
            view_genes=np.asarray(view.genes),
            **state,
        )
    finally:
        distributed.close()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ddp_data") / "3cl.h5ad"
    mixology_3cl().write_h5ad(path)
    return str(path)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_file) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(out / "init"), data_file, str(out)), nprocs=2, join=True)
    return {r: {**np.load(out / f"rank{r}.npz"), "model": out / f"model{r}.pt"} for r in range(2)}


def test_processes_end_with_the_same_model(two_process_run):
    first, second = two_process_run[0], two_process_run[1]
    assert first.keys() == second.keys()
    for name in first:
        if name != "model" and not name.startswith("view_"):
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_each_process_holds_only_its_shard(two_process_run, data_file):
    whole = prepare(ad.read_h5ad(data_file), "batch")
    first, second = two_process_run[0], two_process_run[1]
    # the same genes, chosen from the whole selection sample
    assert list(first["view_genes"]) == list(second["view_genes"]) == whole.genes
    # the shards partition the cells, and each holds about half of the values
    together = np.concatenate([first["view_positions"], second["view_positions"]])
    assert np.array_equal(np.sort(together), np.arange(whole.n_cells))
    for part in (first, second):
        share = part["view_values"] / whole.matrix.data.size
        assert 0.4 < share < 0.6, share


def test_results_of_every_cell_in_order(two_process_run, data_file):
    # the trained model, run in one process on the whole file, gives every cell
    # the results the shards gathered
    adata = ad.read_h5ad(data_file)
    result = two_process_run[0]
    model = DeepBID.load(result["model"], device="cpu")
    np.testing.assert_allclose(result["latent"], model.latent(adata), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result["clusters"], model.clusters(adata))
    np.testing.assert_allclose(
        result["denoised"], model.denoised(adata, transform_batch=None), rtol=1e-4, atol=1e-5
    )


def test_two_processes_match_one_in_quality(two_process_run):
    adata = mixology_3cl()
    labels = adata.obs["cell_type"].to_numpy()
    single = DeepBID(seed=0, progress=False, device="cpu").fit(adata, "batch")
    ari_single = metrics.ari(labels, single.clusters())
    ari_ddp = metrics.ari(labels, two_process_run[0]["clusters"])
    assert ari_single > 0.85
    assert abs(ari_ddp - ari_single) <= 0.02, (ari_single, ari_ddp)


def test_shards_partition_the_cells_in_runs():
    assert not distributed.active()
    assert np.array_equal(distributed.shard(7), np.arange(7))
    for n in (5, 1_000, 123_457):
        parts = [distributed.shard(n, r, 3) for r in range(3)]
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))
        sizes = [p.size for p in parts]
        assert max(sizes) - min(sizes) <= distributed.RUN_CELLS
        # every process owns cells from the start and from the end of the file
        if n >= 1_000:
            assert all(p[0] < n / 10 and p[-1] > 0.9 * n for p in parts)


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
        # gloo on the CPU unless each of the two processes has a GPU of its own
        "--device",
        "cpu" if torch.cuda.device_count() < 2 else "auto",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-8000:]
    out = ad.read_h5ad(target)
    assert out.obsm["X_deepbid"].shape == (out.n_obs, Settings().latent_dim)
    table = pd.read_csv(tmp_path / "out.metrics.csv", index_col=0)
    assert table.loc["deepbid", "ari"] > 0.85


def test_more_processes_than_gpus_is_refused_before_cuda_is_touched(monkeypatch):
    """``torchrun --nproc-per-node 2`` on a machine with one GPU: the second process
    gets an InputError that says what to start instead, not CUDA's invalid-ordinal
    trace (seen on a one-GPU H200)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def touched(device):
        raise AssertionError("CUDA was asked for a device")

    monkeypatch.setattr(torch.cuda, "set_device", touched)
    with pytest.raises(InputError, match=r"--nproc-per-node 1.*--device cpu"):
        distributed.init_from_environment(torch.device("cuda"))
    assert not distributed.active()


def _bad_value_worker(rank: int, world: int, init_file: str, data: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        DeepBID(seed=0, progress=False, device="cpu").fit(ad.read_h5ad(data, backed="r"), "batch")
        message = "no error"
    except InputError as err:
        message = str(err)
    finally:
        distributed.close()
    with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
        f.write(message)


def test_a_bad_value_in_one_shard_stops_every_process(tmp_path):
    adata = mixology_3cl()
    last = adata.n_obs - 1
    assert last in distributed.shard(adata.n_obs, 1, 2)  # only process 1 reads it
    x = adata.X.toarray()
    x[last, 0] = np.nan
    adata.X = x
    adata.write_h5ad(tmp_path / "bad.h5ad")
    args = (2, str(tmp_path / "init"), str(tmp_path / "bad.h5ad"), str(tmp_path))
    mp.spawn(_bad_value_worker, args=args, nprocs=2, join=True)
    for rank in range(2):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "NaN" in message and str(last) in message, message
