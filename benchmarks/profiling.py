"""Where one ``deepbid integrate`` run's time goes, phase by phase, and how close training
comes to the machine's matmul rate.

The scaling scenario of ``scaling.py`` at each size, run in a fresh process through the
command line as ``scaling.py`` runs it (``--no-denoised``; ``--denoised`` adds a row with
the decoder phase and the denoised matrix). Timers wrap the functions that own each
phase; a phase's seconds are its own, without those of the phases it calls (the K rule
inside the clustering epochs is counted once, as the K rule), so the phases add up to
the run's wall time, the rest being ``other``.

Training's rate: before each training phase, one minibatch step (forward and backward,
no update; the random state restored) is recorded under a dispatch mode that notes the
shape of every matrix product. Its FLOPs per step, times the steps, over the seconds of
the phase's minibatch steps (``history[phase]["seconds"]``) is the achieved rate; the
same products timed alone in the same process give the matmul rate of those shapes.

    python benchmarks/profiling.py                          # 5k, 20k, 100k
    python benchmarks/profiling.py --cells 20000 --denoised

Writes ``results/profiling.csv`` (one row per size x phase) and ``results/profiling.md``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import multiprocessing as mp
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from quality import provenance
from scaling import SCENARIO
from torch.utils._python_dispatch import TorchDispatchMode

import deepbid

HERE = Path(__file__).resolve().parent
#: (module, attribute, phase) of every timed function; methods as ``Class.method``.
TIMED = (
    ("deepbid.cli", "read_h5ad", "reading the file"),
    ("shutil", "copyfile", "copying the input to the output"),
    ("deepbid.data", "_select_genes", "gene selection"),
    ("deepbid.model", "prepare", "reading counts into the view"),
    ("deepbid.train", "Trainer.run_epochs", "training: {phase}"),
    ("deepbid.train", "Trainer.reestimate", "clustering epochs: re-estimating C, P, tau"),
    ("deepbid.model", "embed", "embedding all cells"),
    ("deepbid.train", "embed", "embedding all cells"),
    ("deepbid.k_estimate", "initial_partition", "K rule: Leiden scans"),
    ("deepbid.model", "DeepBID._measure_alignment", "final alignment"),
    ("deepbid.cluster", "fit_mixture", "final mixture (EM)"),
    ("deepbid.cluster", "mixture_posteriors", "final mixture (EM)"),
    ("deepbid.k_estimate", "find_divisions", "test of modes"),
    ("deepbid.k_estimate", "divide", "test of modes"),
    ("deepbid.evaluate", "write_results", "results into the AnnData"),
    ("deepbid.model", "DeepBID.denoised", "denoised matrix"),
    ("deepbid.plotting", "log_pca", "metrics: unintegrated PCA"),
    ("deepbid.evaluate", "leiden", "metrics: Leiden of the unintegrated PCA"),
    ("deepbid.metrics", "scores", "metrics: scores"),
    ("anndata", "AnnData.write", "writing the output"),
)
#: Matrix-product operators whose shapes the FLOP count takes.
MATMULS = {"mm", "addmm"}


class Clock:
    """Exclusive seconds per phase: a timed call stops its caller's clock."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stack: list[list] = []  # [phase, start of its current stretch]

    def wrap(self, function, phase: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            name = phase.format(phase=args[2]) if "{phase}" in phase else phase
            now = time.perf_counter()
            if self.stack:
                outer = self.stack[-1]
                self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
            self.stack.append([name, now])
            try:
                return function(*args, **kwargs)
            finally:
                end = time.perf_counter()
                stretch = self.stack.pop()[1]
                self.seconds[name] = self.seconds.get(name, 0.0) + end - stretch
                if self.stack:
                    self.stack[-1][1] = end

        return timed


class ShapeRecorder(TorchDispatchMode):
    """Notes ``(n, k, m)`` of every matrix product dispatched under it."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in MATMULS:
            a, b = (args[0], args[1]) if name == "mm" else (args[1], args[2])
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        return func(*args, **(kwargs or {}))


def matmul_seconds(shapes: list[tuple[int, int, int]], repeats: int = 30) -> float:
    """Median seconds of the products ``shapes`` run back to back, alone."""
    operands = [(torch.randn(n, k), torch.randn(k, m)) for n, k, m in shapes]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def probe_step(trainer, view, phase: str, step) -> dict:
    """One step of ``phase`` recorded (no update, random states restored): its matrix
    products' shapes, FLOPs and the seconds they take alone."""
    idx = np.random.default_rng(0).choice(view.n_cells, trainer.settings.batch_size, False)
    state = torch.random.get_rng_state()
    recorder = ShapeRecorder()
    with recorder:
        inputs = tuple(torch.from_numpy(a).to(trainer.device) for a in view.rows(idx))
        total = sum(step(*inputs, idx).values())
        total.backward()
    for parameter in trainer.module.parameters():
        parameter.grad = None
    torch.random.set_rng_state(state)
    flops = sum(2 * n * k * m for n, k, m in recorder.shapes)
    return {"phase": phase, "flops": flops, "matmul_seconds": matmul_seconds(recorder.shapes)}


def _probing(run_epochs, probes: list[dict]):
    @functools.wraps(run_epochs)
    def probed(self, view, phase, epochs, params, step, *args, **kwargs):
        if getattr(self.settings, epochs) > 0:
            probes.append(probe_step(self, view, phase, step))
        return run_epochs(self, view, phase, epochs, params, step, *args, **kwargs)

    return probed


def install(clock: Clock, probes: list[dict]) -> None:
    """Wrap every function of :data:`TIMED` (and the probe into ``run_epochs``)."""
    for module_name, attribute, phase in TIMED:
        owner, name = importlib.import_module(module_name), attribute
        if "." in attribute:
            cls, name = attribute.split(".")
            owner = getattr(owner, cls)
        function = getattr(owner, name)
        if attribute == "Trainer.run_epochs":
            function = _probing(function, probes)
        setattr(owner, name, clock.wrap(function, phase))


def _child(path: str, denoised: bool, queue: mp.Queue) -> None:
    warnings.simplefilter("ignore")
    from deepbid.cli import main

    clock, probes = Clock(), []
    install(clock, probes)
    out = Path(path).with_suffix(".profiled.h5ad")
    argv = ["integrate", path, "-o", str(out), "--label-key", "cell_type", "--quiet"]
    argv.append("--denoised" if denoised else "--no-denoised")
    start = time.perf_counter()
    if main(argv) != 0:
        raise RuntimeError("deepbid integrate failed")
    wall = time.perf_counter() - start
    history = ad.read_h5ad(out, backed="r").uns["deepbid"]["history"]
    out.unlink()
    out.with_suffix(".metrics.csv").unlink()
    training = [
        {
            **probe,
            "steps": int(np.sum(history[probe["phase"]]["steps"])),
            "step_seconds": float(np.sum(history[probe["phase"]]["seconds"])),
        }
        for probe in probes
    ]
    queue.put({"wall": wall, "seconds": clock.seconds, "training": training})


def profile(path: str, denoised: bool) -> dict:
    """One profiled CLI run in a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(path, denoised, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def rows_of(n: int, denoised: bool, result: dict, stamp: dict) -> list[dict]:
    """Table rows of one run: a row per phase (seconds and share of the wall time), then
    ``other`` and ``total``; training phases carry their FLOP rates."""
    wall = result["wall"]
    rates = {t["phase"]: t for t in result["training"]}
    rows = []
    for phase, seconds in sorted(result["seconds"].items(), key=lambda kv: -kv[1]):
        row = {"cells": n, "denoised": denoised, "phase": phase, "seconds": seconds}
        training = rates.get(phase.removeprefix("training: "))
        if training is not None:
            achieved = training["flops"] * training["steps"] / training["step_seconds"]
            matmul = training["flops"] / training["matmul_seconds"]
            row |= {
                "steps": training["steps"],
                "gflop_per_step": training["flops"] / 1e9,
                "achieved_gflops": achieved / 1e9,
                "matmul_gflops": matmul / 1e9,
                "share_of_matmul_rate": achieved / matmul,
            }
        rows.append(row)
    rows.append(
        {
            "cells": n,
            "denoised": denoised,
            "phase": "other",
            "seconds": wall - sum(result["seconds"].values()),
        }
    )
    rows.append({"cells": n, "denoised": denoised, "phase": "total", "seconds": wall})
    for row in rows:
        row["share"] = row["seconds"] / wall
        row |= stamp
    return rows


def markdown(table: pd.DataFrame) -> str:
    """One block per run: phase, seconds, share; and the training phases' rates."""
    stamp = table.iloc[0]
    lines = [
        f"commit {stamp['commit']}, {stamp['date']}, {stamp['cores']} cores, "
        f"{stamp['threads']} torch thread(s); the scaling scenario, `deepbid integrate`; "
        "phases under 0.05 s are in the CSV only.",
        "",
    ]
    for (n, denoised), run in table.groupby(["cells", "denoised"], sort=False):
        flag = "--denoised" if denoised else "--no-denoised"
        lines += [f"**{n:,} cells, `{flag}`**", "", "| phase | s | share |", "|---|---|---|"]
        for row in run.itertuples():
            if row.seconds >= 0.05 or row.phase in ("other", "total"):
                lines.append(f"| {row.phase} | {row.seconds:.1f} | {row.share:.0%} |")
        trained = run.dropna(subset=["steps"])
        if len(trained):
            lines += [
                "",
                "| training phase | steps | GFLOP/step | GFLOP/s achieved | matmul GFLOP/s "
                "| share of matmul rate |",
                "|---|---|---|---|---|---|",
            ]
            for row in trained.itertuples():
                lines.append(
                    f"| {row.phase.removeprefix('training: ')} | {row.steps:.0f} "
                    f"| {row.gflop_per_step:.3f} | {row.achieved_gflops:.1f} "
                    f"| {row.matmul_gflops:.1f} | {row.share_of_matmul_rate:.0%} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=int, default=[5_000, 20_000, 100_000])
    parser.add_argument("--denoised", action="store_true", help="also a run with --denoised")
    parser.add_argument("--data", default=None, help="folder keeping the simulated h5ad files")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    stamp = provenance()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            path = Path(args.data or tmp) / f"sim_{n}.h5ad"
            if not path.exists():
                deepbid.datasets.simulate(n, **SCENARIO).write_h5ad(path)
            for denoised in (False, True) if args.denoised else (False,):
                rows += rows_of(n, denoised, profile(str(path), denoised), stamp)
                print(markdown(pd.DataFrame(rows)), flush=True)
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "profiling.csv", index=False)
    (out / "profiling.md").write_text(markdown(table))


if __name__ == "__main__":
    main()
