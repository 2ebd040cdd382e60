"""Wall time of ``deepbid integrate`` at an earlier commit and now, alternated on one machine.

A speed claim ("within 10 % of before") needs both versions timed in the same session:
seconds from another day or machine mean little. This script checks out ``--before``
into a temporary git worktree, simulates the scenario of ``scaling.py`` once at
``--cells`` (8 batches, 10 types, two of them held by one batch only, one at 1 %), and
runs each version's command line on that file in a fresh process
(``deepbid integrate FILE -o OUT --label-key cell_type --no-denoised``, K estimated),
before and after in turn, ``--rounds`` times, so that any drift of the machine hits
both. The current tree's ``src/`` is "after".

Per run: wall seconds of the process, the fit's seconds from its metrics table, peak
resident memory (VmHWM), and the table's ARI, median iLISI and number of clusters.

    python benchmarks/speed_check.py --before b93f36c            # 20,000 cells, 2 rounds

Writes results/speed_check.csv (every run) and speed_check.md (median seconds of each
version and their ratio), both stamped with the commits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from compare import provenance
from scaling import SCENARIO, markdown

import deepbid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Runs a version's command line and prints the process's peak memory last.
CHILD = (
    "import sys\n"
    "from deepbid.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')]\n"
    "print('PEAK_KB', peak[0].split()[1] if peak else 'nan')\n"
    "sys.exit(code)\n"
)


def run(src: Path, data: Path, work: Path) -> dict[str, float]:
    """One ``deepbid integrate`` of ``data`` with the package in ``src``, in a new process."""
    out, table = work / "out.h5ad", work / "metrics.csv"
    argv = ["integrate", str(data), "-o", str(out), "--label-key", "cell_type"]
    argv += ["--no-denoised", "--quiet", "--metrics", str(table)]
    env = os.environ | {"PYTHONPATH": str(src)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"deepbid integrate with {src} failed:\n{done.stderr[-3000:]}")
    peak = done.stdout.rsplit("PEAK_KB", 1)[1].split()[0]
    row = pd.read_csv(table, index_col=0).loc["deepbid"]
    out.unlink()
    return {
        "seconds": seconds,
        "fit_seconds": float(row["seconds"]),
        "peak_rss_mb": float(peak) / 1024,
        "ari": float(row["ari"]),
        "ilisi_median": float(row["ilisi_median"]),
        "n_clusters": int(row["n_clusters"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit to compare with (git rev)")
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    git = ["git", "-C", str(ROOT)]
    before = subprocess.run(
        [*git, "rev-parse", "--short", args.before], capture_output=True, text=True, check=True
    ).stdout.strip()
    stamp = provenance()
    after = stamp["commit"][:7] + ("+dirty" if stamp["commit"].endswith("+dirty") else "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = tmp / "before"
        subprocess.run([*git, "worktree", "add", "--detach", str(tree), before], check=True)
        try:
            data = tmp / f"sim_{args.cells}.h5ad"
            deepbid.datasets.simulate(args.cells, **SCENARIO).write_h5ad(data)
            versions = {f"{before} (before)": tree / "src", f"{after} (after)": ROOT / "src"}
            for round_ in range(1, args.rounds + 1):
                for name, src in versions.items():
                    rows.append({"commit": name, "round": round_, **run(src, data, tmp)})
                    print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.assign(**stamp).to_csv(out / "speed_check.csv", index=False)
    medians = frame.groupby("commit", sort=False)["seconds"].median()
    ratio = medians.iloc[1] / medians.iloc[0]
    text = (
        f"`python benchmarks/speed_check.py --before {args.before} --cells {args.cells} "
        f"--rounds {args.rounds}`; run at commit {stamp['commit']}, {stamp['date']}, "
        f"{stamp['cores']} cores; {stamp['versions']}\n\n"
        + markdown(frame)
        + f"\nMedian seconds: {medians.iloc[0]:.1f} before, {medians.iloc[1]:.1f} after "
        f"(after / before = {ratio:.3f}).\n"
    )
    (out / "speed_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
