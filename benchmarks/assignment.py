"""How deepbid's final clusters compare with other ways of assigning the same cells.

Until 9c89b21 deepbid's clusters were the argmax of its memberships ``P``: eq. 14 with
the temperature and the cluster-proportion weights of the last re-estimation; this
comparison chose what replaced it (``mixture, tied`` on ``X_deepbid``, now the default
``final_mixture``). The fits here keep eq. 14 (``final_mixture=False``) as the baseline
every rule starts from. This script fits deepbid once per file and seed (the files and
scenarios of ``quality.py``, K estimated) and scores, on the codes the clustering step
works on (``final_alignment=False``: the same fit and clusters, ``obsm["X_deepbid"]``
before the final alignment) or, with ``--aligned``, on ``obsm["X_deepbid"]`` itself (the
default fit, batch offsets removed), and with the same centres, other rules a clustering
step could end with:

- ``eq. 14 on the embedding`` (``--aligned`` only): the argmax of eq. 14's memberships,
  temperature and weights recomputed from the aligned embedding instead of the codes;
- ``nearest centre``: each cell to its nearest centre (eq. 14 without weights, as the
  temperature goes to 0);
- ``k-means from centres``: Lloyd's algorithm started at deepbid's centres (scikit-learn);
- ``mixture, tied``: EM of an isotropic Gaussian mixture with one shared variance,
  started from ``P`` (squared distances, proportions re-estimated);
- ``mixture, per cluster``: the same with a variance per cluster;
- ``k-means, true K``: as in ``quality.py`` (there on the aligned embedding), for reference.

    python benchmarks/assignment.py              # seed 0, every file and scenario
    python benchmarks/assignment.py --seeds 0 1 2
    python benchmarks/assignment.py --aligned     # rules on X_deepbid

Writes results/assignment.csv and results/assignment.md (with the commit); with
``--aligned``, assignment_aligned.csv and assignment_aligned.md.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mapping import markdown_table
from quality import datasets, provenance
from scipy.spatial.distance import cdist
from scipy.special import softmax
from sklearn.cluster import KMeans

from deepbid import DeepBID, cluster, metrics

HERE = Path(__file__).resolve().parent
#: EM iterations of the mixture rules (they settle in well under this from ``P``).
EM_ITERATIONS = 50


def mixture(h: np.ndarray, p: np.ndarray, per_cluster: bool) -> np.ndarray:
    """Hard labels ``(n,)`` of an isotropic Gaussian mixture on ``h`` ``(n, d)``, EM
    started from the memberships ``p`` ``(n, K)``."""
    d = h.shape[1]
    for _ in range(EM_ITERATIONS):
        mass = p.sum(axis=0) + 1e-12
        centres = (p.T @ h) / mass[:, None]
        d2 = cdist(h, centres, "sqeuclidean")
        if per_cluster:
            var = (p * d2).sum(axis=0) / (mass * d)
        else:
            var = np.full(len(mass), (p * d2).sum() / (mass.sum() * d))
        p = softmax(np.log(mass / mass.sum()) - d / 2 * np.log(var) - d2 / (2 * var), axis=1)
    return p.argmax(axis=1)


def run(task: tuple[str, int, bool]) -> dict[str, object]:
    """Fit one file at one seed and score every assignment rule on its cells (on the
    codes, or on the aligned embedding when ``aligned``)."""
    name, seed, aligned = task
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    adata = datasets([name])[name]()
    model = DeepBID(seed=seed, progress=False, final_alignment=aligned, final_mixture=False).fit(
        adata, "batch"
    )
    labels = adata.obs["cell_type"].astype(str).to_numpy()[model.train_view.cells]
    h, p = model.latent().astype(np.float64), model.membership()
    kept = np.isfinite(h).all(axis=1)
    h, p, labels = h[kept], p[kept], labels[kept]
    centres = model.centres.numpy().astype(np.float64)
    lloyd = KMeans(len(centres), init=centres, n_init=1).fit_predict(h)
    true_k = KMeans(np.unique(labels).size, n_init=10, random_state=seed).fit_predict(h)
    rules = {"deepbid (argmax P)": p.argmax(axis=1)}
    if aligned:
        weights = None if model.log_weights is None else model.log_weights.double()
        rules["eq. 14 on the embedding"] = (
            cluster.memberships(
                torch.from_numpy(h), model.centres.double(), model.temperature, weights
            )
            .argmax(dim=1)
            .numpy()
        )
    rules |= {
        "nearest centre": cdist(h, centres).argmin(axis=1),
        "k-means from centres": lloyd,
        "mixture, tied": mixture(h, p, per_cluster=False),
        "mixture, per cluster": mixture(h, p, per_cluster=True),
        "k-means, true K": true_k,
    }
    row = {"dataset": name, "seed": seed, "K": len(centres)}
    return row | {rule: metrics.ari(labels, assigned) for rule, assigned in rules.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--only", nargs="*", default=None, help="files or scenarios to run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--aligned", action="store_true", help="rules on X_deepbid")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    tasks = [(name, seed, args.aligned) for name in datasets(args.only) for seed in args.seeds]
    with mp.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(run, tasks, chunksize=1)
    table = pd.DataFrame(rows)
    stamp = provenance()
    for key, value in stamp.items():
        table[key] = value
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "assignment_aligned" if args.aligned else "assignment"
    table.to_csv(out / f"{stem}.csv", index=False)
    mean = table.drop(columns=["seed", *stamp]).groupby("dataset", sort=False).mean()
    mean.loc["mean"] = mean.mean()
    header = (
        f"commit {stamp['commit']}, {stamp['date']}, {stamp['cores']} cores; seeds "
        f"{args.seeds}, mean over seeds. ARI against the cell types of each rule on one "
        f"fitted model's {'aligned embedding X_deepbid' if args.aligned else 'codes'} "
        "(K: deepbid's estimate).\n\n"
    )
    text = header + markdown_table(mean) + "\n"
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
