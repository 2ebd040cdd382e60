"""List the results files made before the last change to ``src/``.

Each results CSV names the commit that made it (its ``commit`` column, ``+dirty`` when
``src/`` had uncommitted changes). A file is stale when ``src/`` differs between that
commit and HEAD: its numbers may no longer be what today's code gives.

    python benchmarks/stale.py            # stale files, one per line; exit 1 if any

Files without a commit column are listed as such.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def commit_of(path: Path) -> str | None:
    """The newest commit named in ``path``'s ``commit`` column (the last row's), or None."""
    frame = pd.read_csv(path)
    if "commit" not in frame.columns or frame.empty:
        return None
    return str(frame["commit"].dropna().iloc[-1]).removesuffix("+dirty")


def src_changed_since(commit: str) -> bool:
    """Whether ``src/`` differs between ``commit`` and HEAD (an unknown commit counts)."""
    done = subprocess.run(
        ["git", "diff", "--quiet", commit, "HEAD", "--", "src"], cwd=ROOT, capture_output=True
    )
    return done.returncode != 0


def main() -> None:
    stale = []
    for path in sorted((HERE / "results").rglob("*.csv")):
        commit = commit_of(path)
        name = path.relative_to(ROOT)
        if commit is None:
            stale.append(f"{name} (no commit column)")
        elif src_changed_since(commit):
            stale.append(f"{name} (made at {commit})")
    print("\n".join(stale) if stale else "every results file describes today's src/")
    sys.exit(1 if stale else 0)


if __name__ == "__main__":
    main()
