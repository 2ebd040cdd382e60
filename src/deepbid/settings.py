"""Every hyper-parameter of deepbid and its default, in one place.

A few defaults depend on the number of cells (the paper's large-data weights,
and epochs that shrink above :data:`FULL_EPOCH_CELLS` cells so that a phase
takes about the same number of optimiser steps at any size); those fields are
``None`` until :meth:`Settings.for_cells` resolves them. The README's defaults
table gives the evidence behind each value.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: From this many cells the paper switches to its large-data weights.
LARGE_DATA_CELLS = 10_000
#: Up to this many cells every phase runs the paper's epochs; beyond it epochs
#: shrink in proportion, so a phase takes about the same number of optimiser
#: steps at any size (scVI scales its epochs the same way).
FULL_EPOCH_CELLS = 5_000
#: Epochs of each phase (the paper's, and deepbid's decoder phase), and the fewest a
#: large data set gets.
DEFAULT_EPOCHS = {
    "layer_epochs": (10, 1),
    "pretrain_epochs": (20, 2),
    "epochs": (20, 3),
    "decoder_epochs": (10, 1),
}
#: The paper's (lambda1, lambda2) below and from LARGE_DATA_CELLS cells.
PAPER_LAMBDAS = {False: (5.0, 0.01), True: (1.0, 1e-4)}
#: The paper's learning rate below and from LARGE_DATA_CELLS cells.
PAPER_LR = {False: 1e-3, True: 1e-5}
#: Names ``DeepBID(preset=...)`` takes.
PRESETS = ("paper",)
#: Range of each numeric setting: ``(low, high, low included, high included)``; 0
#: epochs skip a phase.
RANGES = {
    **dict.fromkeys(("hidden_dim", "latent_dim", "n_top_genes"), (1, math.inf, True, False)),
    "batch_size": (2, math.inf, True, False),
    "lr": (0.0, math.inf, False, False),
    **dict.fromkeys(DEFAULT_EPOCHS, (0, math.inf, True, False)),
    "epoch_cells": (2, math.inf, True, False),
    **dict.fromkeys(
        ("lambda1", "lambda2", "kappa1", "kappa2"),
        (0.0, math.inf, True, False),
    ),
    "reestimate_at": (0.0, 1.0, False, True),
    "input_dropout": (0.0, 1.0, True, False),
}


def paper_settings(n_cells: int, n_clusters: int, batch_size: int) -> dict[str, object]:
    """The paper's configuration (``preset="paper"``) for ``n_cells`` cells and
    ``n_clusters`` clusters, as settings of this project.

    The paper's code is 300 wide; it pretrains for 20 epochs and clusters for 20 at a
    learning rate of 1e-3 below :data:`LARGE_DATA_CELLS` cells and 1e-5 from there,
    starts fuzzy k-means from k-means, decodes without the batch, uses eq. (14) as
    written and stops after training. Its weights (kappa1 = 0.01, kappa2 = 100 and
    :data:`PAPER_LAMBDAS`) multiply sums over the cells of a minibatch; here every
    term is a per-cell mean. ``L_NB``, ``L_A`` and ``L_KL1`` sum over cells there, so
    their weights carry over; ``L_O`` and eq. (10) are one sum per minibatch, so
    divided by the minibatch's cells their weights are ``lambda2 / batch_size`` and
    ``kappa2 / batch_size``; and eq. (10) sums over the K clusters where here each
    cluster counts by its share of cells (``1 / K`` each for equal clusters), which
    multiplies ``kappa2`` by ``n_clusters``. Adam runs in every phase (the paper
    clusters with SGD).
    """
    large = n_cells >= LARGE_DATA_CELLS
    lambda1, lambda2 = PAPER_LAMBDAS[large]
    return {
        "latent_dim": 300,
        "lr": PAPER_LR[large],
        "layer_epochs": 10,
        "pretrain_epochs": 20,
        "epochs": 20,
        "decoder_epochs": 0,
        "epoch_cells": n_cells,  # every cell, every epoch
        "lambda1": lambda1,
        "lambda2": lambda2 / batch_size,
        "kappa1": 0.01,
        "kappa2": 100.0 * n_clusters / batch_size,
        "conditional_decoder": False,
        "leiden_start": False,
        "weighted_memberships": False,
        "final_alignment": False,
        "final_scaling": False,
        "final_mixture": False,
        "divide_multimodal": False,
    }


def scaled_epochs(name: str, n_cells: int) -> int:
    """Epochs of phase ``name`` (a key of :data:`DEFAULT_EPOCHS`) for ``n_cells`` cells."""
    default, minimum = DEFAULT_EPOCHS[name]
    return max(minimum, min(default, math.ceil(default * FULL_EPOCH_CELLS / n_cells)))


@dataclass(frozen=True)
class Settings:
    """Hyper-parameters of one training run.

    Attributes
    ----------
    hidden_dim, latent_dim
        Widths of the outer hidden layers and of the latent code ``h`` (the paper's
        code is 300 wide; 64 scores higher on all ten benchmark sets together and
        keeps the number of clusters stable across seeds: README, defaults table).
    n_top_genes
        Highly variable genes taken per batch (their union is used).
    conditional_decoder
        Feed the batch (one-hot) to the decoder.
    batch_size
        Cells per minibatch, over all processes of a distributed run.
    lr
        Adam learning rate of every phase.
    layer_epochs, pretrain_epochs, epochs
        Epochs of each layer-wise pretraining stage, of the stacked pretraining and
        of the clustering phase; ``None``: the paper's 10, 20 and 20 up to
        :data:`FULL_EPOCH_CELLS` cells, proportionally fewer above (at least 1, 2, 3).
    decoder_epochs
        Epochs of the decoder phase after clustering (not in the paper): the
        decoder alone learns the counts from the codes of thinned input
        (``input_dropout``), so that the denoised values are predictions from the
        cell's other genes rather than the counts it was shown; ``None``: 10 up to
        :data:`FULL_EPOCH_CELLS` cells, proportionally fewer above (at least 1);
        0 leaves the decoder as clustering left it.
    epoch_cells
        Most cells one epoch of any phase draws (a fresh random subset each epoch when
        the data are larger). ``None``: per phase, the cells from which its default
        epochs stop shrinking at their floor (:func:`scaled_epochs`), its paper epochs
        times :data:`FULL_EPOCH_CELLS` over its fewest epochs: 33,334 cells per
        clustering epoch, 50,000 in the other phases. Every phase then takes the
        optimiser steps it takes on :data:`FULL_EPOCH_CELLS` cells at any size, and
        only the full-data passes between epochs (codes, C and P) grow with the data.
    lambda1, lambda2
        Weights of the k-means loss ``L_A`` and of the weight penalty ``L_O``;
        ``None``: the paper's (5, 0.01) below :data:`LARGE_DATA_CELLS` cells, else (1, 1e-4).
    kappa1
        Weight of the within-batch self-training KL (eq. 7-9).
    kappa2
        Weight of the paper's batch-mixing KL (eq. 10) over the K clusters: every
        cluster toward the overall batch mix. Off by default: with it at the paper's
        100 the mean ablation score fell by 0.045 against leaving it out, and a
        batch-specific type is pushed into the other batches (README, "Ablation");
        the conditional decoder and the final alignment mix the batches instead.
    leiden_start
        With ``n_clusters`` given, start fuzzy k-means from Leiden at a resolution that
        gives that many clusters (:func:`~deepbid.k_estimate.partition_with_k`; not in
        the paper); ``False``: from k-means, as the paper does.
    reestimate_at
        With K estimated, the share of the clustering epochs after which the K rule
        draws the partition afresh on the codes, taken only if finer (not in the
        paper). The default, 1, looks at the trained codes, from which the final
        clusters are drawn: over the benchmark files and scenarios (3 seeds) it kept
        every rare type of the dominant-type scenario (ARI 1.000, K = 8 on every
        seed) where halfway (0.5) lost one or two on two seeds (0.955), and found
        K = 10 on every pancreas seed (0.932 against 0.928); the other sets did not
        move (README, defaults table).
    weighted_memberships
        Weight eq. (14) by the clusters' proportions, as a mixture model does.
    input_dropout
        Share of input entries zeroed (the rest scaled up to keep the mean) in each
        minibatch of the decoder phase.
    final_alignment
        Remove from the integrated embedding the batch offsets left at the end of
        training (not in the paper): each cell moves by its
        batch's trusted offset from the centroid of its clusters, weighted by its
        memberships (:func:`~deepbid.mixing.batch_offsets`). Eq. (14)'s memberships
        and the denoised values are computed before it; the clusters change only
        through ``final_mixture``, fitted on the aligned embedding.
    final_scaling
        With ``final_alignment``, also scale each batch's cells in each cluster
        about their centroid so that their median squared distance from it is the
        clusters' (:func:`~deepbid.mixing.batch_scales`; not in the paper). The
        embedding alone changes, as with the alignment.
    final_mixture
        End the clustering with EM of an isotropic Gaussian mixture with one shared
        variance on the integrated embedding, started from eq. (14)'s memberships
        (:func:`~deepbid.cluster.fit_mixture`; not in the paper): memberships and
        clusters are its posteriors. Over the benchmark files and scenarios (3 seeds)
        its mean ARI is 0.928 against 0.923 for eq. (14)'s argmax on the same fits
        (sc_mixology_5cl 0.949 against 0.924, sc_mixology_3cl 0.906 against 0.910;
        README, defaults table).
    divide_multimodal
        With ``final_mixture`` and the number of clusters estimated, divide every
        cluster of the mixture whose cells show two modes in the integrated embedding
        (:func:`~deepbid.k_estimate.find_divisions`; not in the paper): the K rule's
        silhouette keeps groups of nested types together (RNA mixtures of three cell
        lines, families of close types).
    """

    hidden_dim: int = 500
    latent_dim: int = 64
    n_top_genes: int = 1000
    conditional_decoder: bool = True
    batch_size: int = 128
    lr: float = 1e-3
    layer_epochs: int | None = None
    pretrain_epochs: int | None = None
    epochs: int | None = None
    decoder_epochs: int | None = None
    epoch_cells: int | None = None
    lambda1: float | None = None
    lambda2: float | None = None
    kappa1: float = 0.01
    kappa2: float = 0.0
    leiden_start: bool = True
    reestimate_at: float = 1.0
    weighted_memberships: bool = True
    input_dropout: float = 0.7
    final_alignment: bool = True
    final_scaling: bool = True
    final_mixture: bool = True
    divide_multimodal: bool = True

    @classmethod
    def given(cls, **values) -> Settings:
        """Settings from user keywords, with a clear error for an unknown name or a value
        of the wrong type or out of range."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
        for name, value in values.items():
            _check_setting(name, value, str(fields[name].type))
        return cls(**values)

    def for_cells(self, n_cells: int) -> Settings:
        """These settings with every size-dependent default resolved for ``n_cells``."""
        epochs = {
            name: scaled_epochs(name, n_cells)
            for name in DEFAULT_EPOCHS
            if getattr(self, name) is None
        }
        lambda1, lambda2 = PAPER_LAMBDAS[n_cells >= LARGE_DATA_CELLS]
        return dataclasses.replace(
            self,
            **epochs,
            lambda1=lambda1 if self.lambda1 is None else self.lambda1,
            lambda2=lambda2 if self.lambda2 is None else self.lambda2,
        )

    def cells_per_epoch(self, epochs: str) -> int:
        """Most cells an epoch of the phase whose epochs are the field ``epochs`` (a key
        of :data:`DEFAULT_EPOCHS`) draws: ``epoch_cells``, or by default the cells from
        which the phase's epochs stay at their floor."""
        if self.epoch_cells is not None:
            return self.epoch_cells
        default, minimum = DEFAULT_EPOCHS[epochs]
        return math.ceil(default * FULL_EPOCH_CELLS / minimum)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_setting(name: str, value: object, annotation: str) -> None:
    """Raise :class:`InputError` unless ``value`` fits setting ``name`` of type
    ``annotation`` (``"int"``, ``"float | None"``, ...) and its range."""
    if value is None and annotation.endswith("| None"):
        return
    kind = annotation.removesuffix(" | None")
    wanted = {"int": "an integer", "float": "a number", "bool": "True or False"}
    fits = {
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
        "bool": isinstance(value, (bool, np.bool_)),
    }[kind]
    if not fits:
        none = " or None" if annotation.endswith("| None") else ""
        raise InputError(f"{name} must be {wanted[kind]}{none}, got {value!r}")
    if name not in RANGES:
        return
    low, high, closed_low, closed_high = RANGES[name]
    above = value >= low if closed_low else value > low
    below = value <= high if closed_high else value < high
    if not (above and below):
        interval = f"{'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"
        raise InputError(f"{name} must be in {interval}, got {value!r}")
