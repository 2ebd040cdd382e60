"""Command-line tool: ``deepbid integrate IN.h5ad -o OUT.h5ad`` and ``deepbid demo``."""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

import anndata as ad

from . import __version__, distributed
from .datasets import mixology_3cl
from .errors import InputError, InputWarning, TrainingError
from .evaluate import evaluate
from .files import read_h5ad, write_atomically
from .model import DeepBID, resolve_device
from .report import write_report
from .settings import PRESETS
from .transfer import known_labels, transfer_labels, transfer_summary


def _model_from(args: argparse.Namespace) -> DeepBID:
    settings = {} if args.epochs is None else {"epochs": args.epochs}
    if args.denoised is False:
        # the decoder phase serves the denoised matrix alone, as in deepbid.integrate
        settings["decoder_epochs"] = 0
    return DeepBID(
        n_clusters=args.n_clusters,
        preset=args.preset,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        **settings,
    )


def _run(
    adata: ad.AnnData,
    args: argparse.Namespace,
    *,
    figures: Path | None,
    report: Path | None,
    metrics: Path,
) -> None:
    """Integrate ``adata`` in place, draw, report, and write the metrics table."""
    model = _model_from(args)
    if distributed.rank() != 0:  # a torchrun worker trains its shard; rank 0 writes
        model.fit(adata, args.batch_key, layer=args.layer)
        return
    figures = figures or report
    transfer_key = getattr(args, "transfer_labels", None)
    if transfer_key is not None:
        if transfer_key not in adata.obs.columns:
            raise InputError(f"--transfer-labels {transfer_key!r} is not a column of adata.obs")
        known_labels(adata, transfer_key)  # no labelled cell: say so before training
    table, scored = evaluate(
        adata,
        model,
        args.batch_key,
        layer=args.layer,
        label_key=args.label_key,
        figures=figures,
        denoised=args.denoised,
    )
    transferred = None
    if transfer_key is not None:
        transfer_labels(adata, transfer_key)
        transferred = transfer_summary(adata, transfer_key)
        print(f"labels transferred to obs['{transfer_key}_deepbid']:")
        print(transferred.to_string(float_format=lambda v: f"{v:.3f}"))
    if report is not None:
        page = write_report(
            report,
            adata,
            model,
            table,
            batch_key=args.batch_key,
            label_key=args.label_key,
            transferred=transferred,
            cells=scored,
            figures=figures,
        )
        print(f"report: {page}")
    if figures is not None:
        print(f"figures: {figures}/*.png")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    table.to_csv(metrics)
    print(f"metrics table: {metrics}")


def _integrate(args: argparse.Namespace) -> None:
    source, target = Path(args.input), Path(args.output)
    if target.resolve() == source.resolve():
        raise InputError("the output path is the input file; deepbid never overwrites its input")
    if not target.parent.is_dir():
        raise InputError(f"output folder {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise InputError(f"the output path {str(target)!r} is a folder; name an .h5ad file")
    if target.suffix.lower() != ".h5ad":
        # a name like out.csv would hold HDF5 that no reader of its suffix can open
        raise InputError(
            f"the output {str(target)!r} does not end in .h5ad; deepbid writes an AnnData "
            f"file: name it, e.g., {str(target.with_suffix('.h5ad'))!r}"
        )
    options = {
        "figures": Path(args.figures) if args.figures else None,
        "report": Path(args.report) if args.report else None,
        "metrics": Path(args.metrics) if args.metrics else target.with_suffix(".metrics.csv"),
    }
    _check_destinations(**options)
    if distributed.rank() != 0:
        adata = read_h5ad(source, backed="r")
        try:
            _run(adata, args, **options)
        finally:
            adata.file.close()
        return

    def integrate_copy(path: str) -> None:
        # the output starts as a byte copy of the input, opened with its matrix left on
        # disk: training streams it, and only deepbid's results are written back
        read_h5ad(source, backed="r").file.close()  # a clear error for a bad file first
        shutil.copyfile(source, path)
        adata = read_h5ad(path, backed="r+")
        try:
            _run(adata, args, **options)
            adata.write()
        finally:
            adata.file.close()

    write_atomically(target, integrate_copy)
    print(f"integrated AnnData: {target}")


def _check_destinations(figures: Path | None, report: Path | None, metrics: Path) -> None:
    """Refuse, before training, destinations that could only fail once it is done."""
    for option, folder in (("--figures", figures), ("--report", report)):
        if folder is not None and folder.exists() and not folder.is_dir():
            raise InputError(f"{option} {str(folder)!r} is a file; name a folder")
    if metrics.is_dir():
        raise InputError(f"--metrics {str(metrics)!r} is a folder; name a .csv file")
    if not metrics.parent.is_dir():
        raise InputError(f"the folder of --metrics {str(metrics)!r} does not exist")


def _demo(args: argparse.Namespace) -> None:
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{str(outdir)!r} is a file; name a folder for the demo's outputs")
    outdir.mkdir(parents=True, exist_ok=True)
    print("deepbid demo: CellBench sc_mixology, 499 cells, 3 cell lines, CEL-seq2 + Drop-seq")
    args.batch_key, args.label_key, args.layer = "batch", "cell_type", None
    adata = mixology_3cl()
    _run(adata, args, figures=outdir, report=outdir, metrics=outdir / "metrics.csv")
    output = outdir / "demo.h5ad"
    write_atomically(output, lambda tmp: adata.write_h5ad(tmp, compression="gzip"))
    print(f"integrated AnnData: {output}")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--n-clusters",
        type=int,
        default=None,
        metavar="K",
        help="number of clusters; default: estimated from the data",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="'paper': the published method's configuration (needs --n-clusters); "
        "default: deepbid's",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same result on one machine (default 0)",
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the clustering phase (default: the paper's 20 up to 5,000 cells, "
        "proportionally fewer above)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    denoised = parser.add_mutually_exclusive_group()
    denoised.add_argument(
        "--denoised",
        dest="denoised",
        action="store_const",
        const=True,
        default=None,
        help="always write obsm['deepbid_denoised'] (a dense cells x genes matrix; by "
        "default written up to 10^8 values)",
    )
    denoised.add_argument(
        "--no-denoised",
        dest="denoised",
        action="store_const",
        const=False,
        help="never write obsm['deepbid_denoised']",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepbid",
        description="DeepBID: batch integration, clustering and denoising of scRNA-seq counts.",
    )
    parser.add_argument("--version", action="version", version=f"deepbid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    integrate = sub.add_parser(
        "integrate",
        help="integrate the batches of an .h5ad file",
        description="Integrate IN.h5ad (raw counts) and write OUT.h5ad with obsm['X_deepbid'], "
        "obs['deepbid_cluster'], obsm['deepbid_membership'], obsm['deepbid_denoised'] and "
        "uns['deepbid']; print a metrics table and optionally draw figures.",
    )
    _integrate_arguments(integrate)
    _common(integrate)
    integrate.set_defaults(func=_integrate)
    demo = sub.add_parser(
        "demo",
        help="integrate the bundled CellBench dataset and draw figures",
        description="Run deepbid on the bundled CellBench sc_mixology data (3 cell lines, "
        "2 protocols): writes demo.h5ad, metrics.csv and PNG figures to OUTDIR.",
    )
    demo.add_argument("-o", "--outdir", default="deepbid_demo", help="output folder")
    _common(demo)
    demo.set_defaults(func=_demo)
    return parser


def _integrate_arguments(integrate: argparse.ArgumentParser) -> None:
    """The arguments of ``deepbid integrate`` that ``deepbid demo`` does not take."""
    integrate.add_argument("input", help="input .h5ad with raw counts (never modified)")
    integrate.add_argument("-o", "--output", required=True, help="output .h5ad (not the input)")
    integrate.add_argument(
        "--batch-key", default="batch", help="obs column with each cell's batch (default 'batch')"
    )
    integrate.add_argument(
        "--label-key",
        default=None,
        help="obs column with known cell types: adds ARI, NMI and cLISI",
    )
    integrate.add_argument(
        "--transfer-labels",
        default=None,
        metavar="LABEL_KEY",
        help="obs column with labels for some cells ('unknown', 'unID' or missing for the "
        "others): label the others from their labelled neighbours in the embedding, "
        "never in a cluster without labelled cells, in obs['LABEL_KEY_deepbid'] with "
        "obs['LABEL_KEY_deepbid_confidence']",
    )
    integrate.add_argument("--layer", default=None, help="layer holding raw counts (default: X)")
    integrate.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="write UMAPs before/after and loss curves as PNGs here",
    )
    integrate.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write report.html here: one self-contained page with settings, metrics, "
        "UMAPs, loss curves, cluster composition and marker genes",
    )
    integrate.add_argument(
        "--metrics",
        default=None,
        metavar="CSV",
        help="metrics table path (default: OUT with suffix .metrics.csv)",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deepbid`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    warnings.simplefilter("always", InputWarning)
    warnings.formatwarning = lambda message, category, *_, **__: (
        f"deepbid: {category.__name__}: {message}\n"
    )
    finished = False
    try:
        distributed.init_from_environment(resolve_device(args.device))
        args.func(args)
        finished = True
    except (InputError, TrainingError) as err:
        print(f"deepbid: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder not writable, a full disk: the system's words
        where = f": {err.filename}" if err.filename else ""
        print(f"deepbid: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    finally:
        # after training, the other processes wait here while rank 0 writes the results
        distributed.close(wait=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
