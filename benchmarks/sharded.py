"""Memory of data-parallel training: one process against two (torchrun, gloo), each
reading only its shard of the same h5ad file.

A simulated file (``deepbid.datasets.simulate``, the scaling benchmark's scenario:
2,000 genes, 8 batches, 10 types) is written once. Then ``DeepBID.fit`` runs on it,
read with ``backed="r"``, in one process and under ``torchrun --nproc-per-node 2``.
Every process reports:

- ``view MB``: what it holds of the expression matrix after reading (its view's
  sparse matrix of the selected genes: data, indices, row pointers);
- ``peak RSS MB``: its peak resident set over the whole run (VmHWM), which also
  counts Python, torch and the network;
- ``cells``: the cells it trains on.

The training is shortened (one epoch per phase): memory, not quality, is measured
here; that two processes match one in quality is tested in
``tests/test_distributed.py``.

    pip install -e ".[benchmark]"
    python benchmarks/sharded.py --cells 200000   # ~5 min on 2 cores

Writes results/sharded.csv and results/sharded.md (with the commit and versions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import pandas as pd
from compare import memory_mb, provenance
from scaling import SCENARIO, markdown

import deepbid
from deepbid import distributed

HERE = Path(__file__).resolve().parent
#: One epoch per phase: enough to exercise every full-data pass once.
SHORT = dict(layer_epochs=1, pretrain_epochs=1, epochs=1)


def worker(path: str, out: str) -> None:
    """Fit on ``path`` (backed) in this process, under torchrun or alone; write a JSON."""
    distributed.init_from_environment(deepbid.model.resolve_device("cpu"))
    try:
        start = time.perf_counter()
        adata = ad.read_h5ad(path, backed="r")
        model = deepbid.DeepBID(seed=0, device="cpu", progress=False, **SHORT)
        model.fit(adata, "batch")
        matrix = model.train_view.matrix
        record = {
            "processes": distributed.world_size(),
            "rank": distributed.rank(),
            "cells": model.train_view.n_cells,
            "view MB": (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes) / 1e6,
            "peak RSS MB": memory_mb("VmHWM"),
            "seconds": time.perf_counter() - start,
        }
        with open(Path(out) / f"w{record['processes']}_r{record['rank']}.json", "w") as f:
            json.dump(record, f)
    finally:
        distributed.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--worker", nargs=2, metavar=("FILE", "OUTDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.h5ad"
        deepbid.datasets.simulate(args.cells, **SCENARIO).write_h5ad(path)
        me = [str(Path(__file__).resolve()), "--worker", str(path), tmp]
        runs = {
            1: [sys.executable, *me],
            2: [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            + ["--nproc-per-node", "2", *me],
        }
        for processes, command in runs.items():
            print(f"{processes} process(es): {' '.join(command[:6])} ...", flush=True)
            subprocess.run(command, check=True, env=env)
        records = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("w*_r*.json"))]
    table = pd.DataFrame(records)[
        ["processes", "rank", "cells", "view MB", "peak RSS MB", "seconds"]
    ]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    results = HERE / "results"
    table.to_csv(results / "sharded.csv", index=False)
    info = provenance()
    (results / "sharded.md").write_text(
        f"# Sharded reading: one process against two ({args.cells:,} simulated cells)\n\n"
        f"commit {info['commit']}, {info['date']}, {info['cores']} cores; "
        f"{info['versions']}\n\n"
        "`python benchmarks/sharded.py`: `DeepBID.fit` on the h5ad read with "
        "`backed='r'`, training shortened to one epoch per phase (memory is measured, "
        "not quality). `view MB`: the expression matrix a process holds after reading; "
        "`peak RSS MB`: the process's peak resident set over the run.\n\n" + markdown(table) + "\n"
    )


if __name__ == "__main__":
    main()
