"""Quality of deepbid on the real datasets in ../shared/data and on simulated scenarios.

Runs deepbid with its defaults (K estimated everywhere) for several seeds and scores,
on the cells it kept: ARI/NMI of its own clusters; the number of clusters and ARI the
same fit gives without dividing the clusters that have two modes
(:func:`deepbid.k_estimate.find_divisions`), and without its final mixture (eq. 14's
argmax on the codes); ARI of k-means with the
true K and of deepbid's K rule (Leiden, :func:`deepbid.k_estimate.estimate_partition`), both on
its own embedding ``obsm["X_deepbid"]``; median iLISI over all cells and over the cells
of types that several batches hold (with the best a perfect mixing could reach there:
the inverse Simpson index of each such type's batch mix); median cLISI; seconds. On the
CellBench files, whose labels are demuxlet's genotype calls and which keep the cells
demuxlet called doublets, the ARI is also given on the singlets alone (a doublet holds
two cells' RNA under one label).

``--ablation`` runs the ablation instead and writes ``ablation.{csv,md}``: the
default, and the default with one step of its training left out (the within-batch
KL, the batch-conditioned decoder, the weighting of eq. 14 by cluster size) or the
paper's batch-mixing term added, each trained on its own; the default without its
final alignment (the embedding alone), its scaling, its final mixture, or the
division of clusters with two modes is scored on the default's own fit. Its table
applies the rule of which steps stay: a step stays when leaving it out lowers the
mean score over all sets by more than twice the seed-to-seed sd of the default's
mean (or the paper prescribes it, or a feature needs it).

    python benchmarks/quality.py                       # shared files + scenarios, 3 seeds
    python benchmarks/quality.py --ablation --seeds 1
    python benchmarks/quality.py --ablation --variants default \
        "without the within-batch KL (kappa1=0)"
    python benchmarks/quality.py --only sc_mixology_3cl --set kappa2=10 --out /tmp/q
    python benchmarks/quality.py --ablation --tables-from a/ablation.csv b/ablation.csv
    python benchmarks/quality.py --tables-from a/ablation.csv b/ablation.csv  # defaults

Writes ``results/quality.csv`` (one row per dataset x seed) and ``results/quality.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import subprocess
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from deepbid import DeepBID, k_estimate, metrics
from deepbid.datasets import simulate

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
#: Simulated scenarios (``deepbid.datasets.simulate`` arguments), each a known failure
#: mode of integration: types held by one batch only, one dominant type with rare
#: ones, a pair of close types across six batches, a strong batch effect, two
#: families of four types each (far apart, their types close: a hierarchy), and
#: CellBench's seven RNA mixtures of three cell lines (three pure, four pooled) over two
#: protocols, with the low overdispersion of pooled RNA (no biological variation).
SCENARIOS = {
    "sim_batch_specific": dict(
        n_cells=3000, n_batches=3, n_types=8, batch_specific=2, type_shares=[1] * 8, seed=1
    ),
    "sim_dominant_rare": dict(
        n_cells=4000,
        n_batches=3,
        n_types=8,
        type_shares=[0.5, 0.2, 0.12, 0.1, 0.04, 0.018, 0.012, 0.01],
        seed=2,
    ),
    "sim_close_6batches": dict(n_cells=3000, n_batches=6, n_types=6, close_pairs=1, seed=3),
    "sim_strong_batch": dict(
        n_cells=3000, n_batches=3, n_types=6, batch_specific=1, batch_strength=0.6, seed=4
    ),
    "sim_families": dict(
        n_cells=3000, n_batches=3, n_types=8, families=2, family_difference=0.5, seed=5
    ),
    "sim_rna_mixtures": dict(
        n_cells=3000,
        n_batches=2,
        n_types=7,
        mixtures=[
            [1, 0, 0],
            [0, 1, 0],
            [0, 0, 1],
            [1, 1, 1],
            [68, 16, 16],
            [16, 68, 16],
            [16, 16, 68],
        ],
        dispersion=10.0,
        seed=6,
    ),
}
#: Variants trained on their own by ``--ablation`` (settings of DeepBID): one step of
#: the default training left out each, and the paper's batch-mixing term added.
ABLATION = {
    "with the paper's mixing term (kappa2=100)": dict(kappa2=100.0),
    "without the within-batch KL (kappa1=0)": dict(kappa1=0.0),
    "without the batch-conditioned decoder": dict(conditional_decoder=False),
    "without weighted memberships (eq. 14 as written)": dict(weighted_memberships=False),
    "default": {},
}
#: Variants that differ from the default only after training: scored on the default's
#: own fit, so the comparison is paired and costs no extra training.
AFTER_TRAINING = {
    "default without the final alignment": dict(final_alignment=False),
    "default without the final scaling": dict(final_scaling=False),
    "default without the final mixture": dict(final_mixture=False),
    "default without the division of clusters with two modes": dict(divide_multimodal=False),
}
#: Row order of the ablation table.
ABLATION_ORDER = [*(v for v in ABLATION if v != "default"), *AFTER_TRAINING, "default"]


def provenance() -> dict[str, str | int]:
    """Commit (``+dirty`` when src/ has uncommitted changes), date, the machine's cores
    and the threads torch computes with (another count sums in another order)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=HERE, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") + (
        "+dirty" if git("status", "--porcelain", "--", "../src") else ""
    )
    return {
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count() or 1,
        "threads": torch.get_num_threads(),
    }


def datasets(only: list[str] | None) -> dict[str, callable]:
    """Name -> loader of every shared file and scenario (those in ``only``, if given)."""
    files = sorted(SHARED.glob("*.h5ad"))
    if not files:
        # a run without the real files would silently score the scenarios alone
        raise SystemExit(f"no .h5ad files in {SHARED}: the shared data must sit beside the repo")
    loaders = {path.stem: (lambda p=path: ad.read_h5ad(p)) for path in files}
    loaders |= {name: (lambda a=args: simulate(**a)) for name, args in SCENARIOS.items()}
    return {name: load for name, load in loaders.items() if not only or name in only}


def shared_type_ilisi(
    ilisi: np.ndarray, batch: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Median iLISI over the cells of types that at least two batches hold (>= 10 cells
    each), and the median of what perfect mixing gives them: the inverse Simpson index
    of their type's batch mix."""
    table = pd.crosstab(labels, batch)
    shared = table.index[(table >= 10).sum(axis=1) >= 2]
    mix = table.loc[shared].div(table.loc[shared].sum(axis=1), axis=0)
    ideal = 1.0 / (mix**2).sum(axis=1)
    cells = np.isin(labels, shared)
    return float(np.median(ilisi[cells])), float(np.median(ideal.loc[labels[cells]].to_numpy()))


def fit(adata: ad.AnnData, seed: int, settings: dict) -> tuple[DeepBID, float]:
    """deepbid fitted on ``adata`` with ``settings``, and the seconds it took."""
    start = time.perf_counter()
    model = DeepBID(seed=seed, progress=False, **settings).fit(adata, "batch")
    return model, time.perf_counter() - start


def after_training(model: DeepBID, flags: dict) -> DeepBID:
    """``model`` read with the settings ``flags`` that act after training: a copy. The
    final alignment and scaling shape the embedding alone (the clusters stay the fit's);
    without the final mixture the clusters are eq. 14's on the codes."""
    late = copy.copy(model)
    late.settings = dataclasses.replace(model.settings, **flags)
    if not late.settings.final_mixture:
        # the divisions are of the final mixture's clusters: none without it
        late.mixture, late.divisions, late._train_p = None, [], None
    if not late.settings.divide_multimodal:
        late.divisions, late._train_p = [], None
    return late


def undivided(model: DeepBID) -> np.ndarray:
    """Clusters of the final mixture alone, without the divisions of
    :func:`deepbid.k_estimate.find_divisions`: the same fit's clusters with
    ``divide_multimodal=False``; eq. 14's clusters where there is no final mixture."""
    return after_training(model, {"divide_multimodal": False}).clusters()[model.train_view.cells]


def singlets(adata: ad.AnnData) -> np.ndarray | None:
    """``(n_obs,)`` mask of the cells demuxlet called singlets, or ``None`` where the file
    has no demuxlet calls."""
    if "demuxlet_cls" not in adata.obs:
        return None
    return (adata.obs["demuxlet_cls"].astype(str) == "SNG").to_numpy()


def score(model: DeepBID, adata: ad.AnnData, seed: int, seconds: float) -> dict[str, float]:
    """Scores of a fitted ``model`` on the cells it kept (see the module docstring)."""
    cells = model.train_view.cells
    batch = adata.obs["batch"].astype(str).to_numpy()[cells]
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]
    latent, clusters = model.latent()[cells], model.clusters()[cells]
    n_types = np.unique(labels).size
    kmeans = KMeans(n_types, n_init=10, random_state=seed).fit_predict(latent)
    rule, _ = k_estimate.estimate_partition(latent, batch, seed)
    ilisi = metrics.lisi(latent, batch)
    single = singlets(adata)
    single = None if single is None else single[cells]
    shared, ideal = shared_type_ilisi(ilisi, batch, labels)
    return {
        "n_batches": np.unique(batch).size,
        "true_k": n_types,
        "n_clusters": model.cluster_count,
        "n_clusters_undivided": model.cluster_count - k_estimate.new_parts(model.divisions),
        "ari": metrics.ari(labels, clusters),
        "nmi": metrics.nmi(labels, clusters),
        "ari_singlets": np.nan if single is None else metrics.ari(labels[single], clusters[single]),
        "ari_eq14": metrics.ari(
            labels, after_training(model, {"final_mixture": False}).clusters()[cells]
        ),
        "ari_undivided": metrics.ari(labels, undivided(model)),
        "ari_kmeans_true_k": metrics.ari(labels, kmeans),
        "ari_k_rule_on_latent": metrics.ari(labels, rule),
        "ilisi_median": float(np.median(ilisi)),
        "ilisi_shared_types": shared,
        "ilisi_shared_ideal": ideal,
        "clisi_median": float(np.median(metrics.lisi(latent, labels))),
        "seconds": seconds,
    }


def runs(
    adata: ad.AnnData, seed: int, variants: dict[str, dict], after: dict[str, dict]
) -> dict[str, dict[str, float]]:
    """Variant name -> scores: each of ``variants`` fitted, and each of ``after`` (settings
    read only after training) scored on the ``"default"`` variant's fit."""
    scores = {}
    for name, settings in variants.items():
        model, seconds = fit(adata, seed, settings)
        scores[name] = score(model, adata, seed, seconds)
        if name == "default":
            for late, flags in after.items():
                scores[late] = score(after_training(model, flags), adata, seed, seconds)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on")
    parser.add_argument("--only", nargs="+", help="dataset or scenario names")
    parser.add_argument("--ablation", action="store_true", help="compare mixing-term variants")
    parser.add_argument(
        "--variants", nargs="+", metavar="NAME", help="with --ablation: only these variants"
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override DeepBID settings (numbers or strings)",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--tables-from",
        nargs="+",
        metavar="CSV",
        help="fit nothing: write the table of these runs' rows together (other seeds of one run)",
    )
    args = parser.parse_args()
    if args.tables_from:
        rows = pd.concat([pd.read_csv(f) for f in args.tables_from])
        if not args.ablation:
            # an ablation run's default rows are a quality run of the same seeds
            rows = rows[rows["variant"] == "default"]
        write(rows, Path(args.out), args.ablation)
        return
    overrides = {k: _parse(v) for k, v in (item.split("=", 1) for item in args.set)}
    variants = ABLATION if args.ablation else {"default": {}}
    if args.ablation and args.variants:
        unknown = sorted(set(args.variants) - set(ABLATION))
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; known: {list(ABLATION)}")
        variants = {name: ABLATION[name] for name in args.variants}
    # the variants read after training are scored on the default's fit
    after = AFTER_TRAINING if args.ablation and "default" in variants else {}
    if overrides:
        variants = {name: {**settings, **overrides} for name, settings in variants.items()}
    stamp = provenance()
    rows = []
    for name, load in datasets(args.only).items():
        adata = load()
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = runs(adata, seed, variants, after)
            for variant, row in scores.items():
                rows.append({"dataset": name, "variant": variant, "seed": seed, **row, **stamp})
                print(
                    {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()},
                    flush=True,
                )
    write(pd.DataFrame(rows), Path(args.out), args.ablation)


def write(results: pd.DataFrame, out: Path, ablation: bool) -> None:
    """Write ``results`` (one row per dataset x seed x variant) and its table to ``out``."""
    stem = "ablation" if ablation else "quality"
    save(results, out, stem, ablation_table(results) if ablation else summary(results))


def save(results: pd.DataFrame, out: Path, stem: str, text: str) -> None:
    """``stem.csv`` (the rows of ``results``) and ``stem.md`` (their table, ``text``) in
    ``out``; the table is printed too."""
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(text)
    print(text)


def _parse(value: str):
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _or_dash(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.3f}"


def _dataset_order(names) -> list[str]:
    """Real files by name, then the scenarios in their defined order, so tables joined from
    several runs (--tables-from) read the same as one run."""
    scenarios = list(SCENARIOS)
    return sorted(
        dict.fromkeys(names),
        key=lambda n: (n in SCENARIOS, scenarios.index(n) if n in SCENARIOS else n),
    )


def _header(results: pd.DataFrame) -> str:
    first = results.iloc[0]
    # rows of several runs (--tables-from) name every commit that made them
    commits = " + ".join(dict.fromkeys(results["commit"].astype(str)))
    return (
        f"commit {commits}, {first['date']}, {first['cores']} cores"
        + (f", {first['threads']} torch thread(s)" if "threads" in results else "")
        + "; "
        f"{results['seed'].nunique()} seed(s) per dataset, mean (sd) over seeds.\n\n"
    )


def summary(results: pd.DataFrame) -> str:
    """Markdown: per dataset, mean and sd over seeds of every score."""
    grouped = results.groupby("dataset", sort=False)
    mean, sd = grouped.mean(numeric_only=True), grouped.std(numeric_only=True).fillna(0.0)
    lines = [
        "| dataset | batches | K true | K (mean) | ARI (sd) | ARI singlets | NMI "
        "| K / ARI without division | ARI without final mixture "
        "| ARI k-means true K | ARI K rule on X_deepbid | median iLISI (sd) "
        "| iLISI shared types / ideal | median cLISI | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _dataset_order(mean.index):
        m, s = mean.loc[name], sd.loc[name]
        lines.append(
            f"| {name} | {m['n_batches']:.0f} | {m['true_k']:.0f} | {m['n_clusters']:.1f} "
            f"| {m['ari']:.3f} ({s['ari']:.3f}) | {_or_dash(m['ari_singlets'])} "
            f"| {m['nmi']:.3f} | {m['n_clusters_undivided']:.1f} / {m['ari_undivided']:.3f} "
            f"| {m['ari_eq14']:.3f} "
            f"| {m['ari_kmeans_true_k']:.3f} "
            f"| {m['ari_k_rule_on_latent']:.3f} "
            f"| {m['ilisi_median']:.3f} ({s['ilisi_median']:.3f}) "
            f"| {m['ilisi_shared_types']:.3f} / {m['ilisi_shared_ideal']:.3f} "
            f"| {m['clisi_median']:.3f} | {m['seconds']:.1f} |"
        )
    return _header(results) + "\n".join(lines) + "\n"


def ablation_table(results: pd.DataFrame) -> str:
    """Markdown: ARI and median iLISI of every variant on every dataset, and the mean
    over datasets of ARI + iLISI / number of batches."""
    results = results.assign(score=results["ari"] + results["ilisi_median"] / results["n_batches"])
    mean = results.groupby(["dataset", "variant"], sort=False).mean(numeric_only=True)
    names = _dataset_order(results["dataset"])
    present = set(results["variant"])
    variants = [v for v in ABLATION_ORDER if v in present]
    # the rule: per seed, the mean score over all sets; a step stays when leaving it
    # out lowers that mean by more than twice the default's seed-to-seed sd
    per_seed = results.groupby(["variant", "seed"])["score"].mean()
    noise = 2 * per_seed.loc["default"].std(ddof=1) if "default" in present else np.nan
    lines = [
        "| variant | " + " | ".join(names) + " | mean ARI + iLISI/B | change | beyond 2 sd |",
        "|---|" + "---|" * (len(names) + 3),
    ]
    for variant in variants:
        cells = [
            f"{mean.loc[(n, variant), 'ari']:.3f} / {mean.loc[(n, variant), 'ilisi_median']:.2f}"
            if (n, variant) in mean.index
            else "–"
            for n in names
        ]
        scores = mean.xs(variant, level="variant")["score"]
        # a variant run on some datasets only is not averaged as if it were all of them
        count = "" if scores.size == len(names) else f" ({scores.size} of {len(names)})"
        change = scores.mean() - mean.xs("default", level="variant")["score"].mean()
        beyond = "–" if variant == "default" else ("yes" if abs(change) > noise else "no")
        lines.append(
            f"| {variant} | "
            + " | ".join(cells)
            + f" | {scores.mean():.3f}{count} | {change:+.3f} | {beyond} |"
        )
    return (
        _header(results)
        + "Each cell: ARI / median iLISI. change: against the default; twice the default's "
        + f"seed-to-seed sd of its mean score is {noise:.3f}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


if __name__ == "__main__":
    main()
