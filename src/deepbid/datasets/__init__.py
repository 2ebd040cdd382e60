"""Data shipped with deepbid (no download ever happens at run time)."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata as ad


def mixology_3cl() -> ad.AnnData:
    """CellBench sc_mixology: 499 cells of 3 lung cancer cell lines, 2 protocols.

    Raw UMI counts in ``X``; ``obs['batch']`` is the protocol (CEL-seq2,
    Drop-seq), ``obs['cell_type']`` the cell line. Provenance and licence:
    ``datasets/README.md`` in the package (Tian et al. 2019, GEO GSE118767, MIT).
    """
    with as_file(files(__name__) / "sc_mixology_3cl.h5ad") as path:
        return ad.read_h5ad(path)
