"""deepbid: deep batch integration, clustering and denoising of scRNA-seq data (DeepBID).

>>> import deepbid
>>> deepbid.integrate(adata, batch_key="batch")  # doctest: +SKIP
"""

from . import datasets, metrics
from .api import OUTPUT_KEYS, integrate, write_results
from .errors import InputError, InputWarning, TrainingError
from .markers import markers
from .model import DeepBID
from .transfer import transfer_labels

__all__ = [
    "DeepBID",
    "InputError",
    "InputWarning",
    "OUTPUT_KEYS",
    "TrainingError",
    "datasets",
    "integrate",
    "markers",
    "metrics",
    "transfer_labels",
    "write_results",
]
__version__ = "0.2.0"
