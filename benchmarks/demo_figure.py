"""The README's figure: UMAPs of the bundled CellBench data before and after deepbid.

Runs ``deepbid demo`` (the README's first command, the defaults) into a temporary
folder and stacks its ``umap_before.png`` over its ``umap_after.png``.

    python benchmarks/demo_figure.py        # writes docs/images/demo_umaps.png
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "demo_umaps.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "deepbid.cli", "demo", "-o", folder, "--quiet"], check=True
        )
        panels = [plt.imread(Path(folder) / f"umap_{when}.png") for when in ("before", "after")]
    width = max(p.shape[1] for p in panels)
    height = sum(p.shape[0] for p in panels)
    figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    top = 1.0
    for panel in panels:
        share = panel.shape[0] / height
        axes = figure.add_axes((0, top - share, panel.shape[1] / width, share))
        axes.imshow(panel)
        axes.axis("off")
        top -= share
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=100)
    print(OUT)


if __name__ == "__main__":
    main()
