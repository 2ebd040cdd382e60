"""Files on disk: reading ``.h5ad`` safely, and writing without leaving half a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anndata as ad

from .errors import InputError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_h5ad(path: str | os.PathLike, backed: str | None = None) -> ad.AnnData:
    """Read an ``.h5ad`` file, turning every way it can fail into an :class:`InputError`.

    ``backed`` (``"r"`` or ``"r+"``) leaves the expression matrix on disk, read in
    blocks when needed, as in :func:`anndata.read_h5ad`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    with open(path, "rb") as handle:
        if handle.read(8) != _HDF5_SIGNATURE:
            raise InputError(f"{str(path)!r} is not an .h5ad (HDF5) file; convert it with anndata")
    try:
        return ad.read_h5ad(path, backed=backed)
    except Exception as err:  # h5py and anndata raise many types for damaged files
        raise InputError(
            f"cannot read {str(path)!r} as .h5ad (truncated or damaged?): {err}"
        ) from None


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` beside ``path``, then rename onto ``path``, so an
    interrupted run never leaves a half-written file under the final name."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
