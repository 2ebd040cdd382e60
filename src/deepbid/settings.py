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
#: Range of each numeric setting: ``(low, high, low included, high included)``; 0
#: epochs skip a phase.
RANGES = {
    **dict.fromkeys(("hidden_dim", "latent_dim", "n_top_genes"), (1, math.inf, True, False)),
    "batch_size": (2, math.inf, True, False),
    "lr": (0.0, math.inf, False, False),
    **dict.fromkeys(DEFAULT_EPOCHS, (0, math.inf, True, False)),
    "epoch_cells": (2, math.inf, True, False),
    **dict.fromkeys(
        ("lambda1", "lambda2", "kappa1", "kappa2", "kappa_local", "kappa_align"),
        (0.0, math.inf, True, False),
    ),
    "local_membership": (0.0, 1.0, False, False),
    "alignment_components": (0, math.inf, True, False),
    "reestimate_at": (0.0, 1.0, False, True),
    "n_mixing_clusters": (2, math.inf, True, False),
    "input_dropout": (0.0, 1.0, True, False),
}
#: The values each string setting takes.
CHOICES = {
    "local_target": ("global", "cluster"),
    "division_space": ("embedding", "codes"),
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
        Most cells one epoch draws (a fresh random subset each epoch when the data
        are larger; ``None``: every cell). With the epoch floor it caps the steps of
        training at any size, so only the full-data passes between epochs (codes,
        C and P, mixing counts) grow with the number of cells.
    lambda1, lambda2
        Weights of the k-means loss ``L_A`` and of the weight penalty ``L_O``;
        ``None``: the paper's (5, 0.01) below :data:`LARGE_DATA_CELLS` cells, else (1, 1e-4).
    kappa1
        Weight of the within-batch self-training KL (eq. 7-9).
    kappa2
        Weight of the paper's batch-mixing KL (eq. 10) over the K clusters: every
        cluster toward the overall batch mix. Off by default: ``kappa_local``'s term
        mixes the same way at a finer scale, and adding this one lowered the mean
        ablation score (README, "Ablation").
    kappa_local
        Weight of the batch-mixing KL over a fine partition of the latent space:
        every small neighbourhood toward the batch mix of ``local_target``.
    local_target
        ``"cluster"``: the batch mix of the cluster holding the neighbourhood
        (batches mix inside a cell type; a type that only some batches hold is not
        pushed into the others); ``"global"`` (default): the overall batch mix
        (Harmony's diversity penalty; deepbid 0.1's term), which kept the
        batch-specific types of every benchmark scenario apart.
    local_membership
        Mean membership of cells in their own fine cluster, which sets the temperature
        of the fine memberships: lower spreads each cell over the neighbouring
        clusters, so that the mixing gradient reaches clusters held by other batches.
    kappa_align
        Weight of the share of latent variance that batch explains inside the K
        clusters (:class:`~deepbid.mixing.BatchAlignment`): moves each batch's cells
        of a cluster onto the cluster's centroid during training. Off by default:
        trained with it (previous default, 3 seeds), the strong-batch scenario lost a
        type on every seed and the dominant-type scenario on one (README, "Ablation");
        the final alignment removes the batch offsets on the trained embedding instead.
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
    n_mixing_clusters
        Size of the fine partition; ``None``: one cluster per 30 cells, at most 100
        (Harmony's default).
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
    alignment_mixture
        With ``final_alignment``, measure and remove each batch's offsets in the
        clusters of an isotropic Gaussian mixture fitted on the codes (EM from eq.
        (14)'s memberships, :func:`~deepbid.cluster.fit_mixture`; not in the paper)
        instead of eq. (14)'s. Off by default: the codes still hold the batch effect,
        so with many batches the mixture can divide a large type by batch, and the
        offsets measured in its clusters carry that division into the embedding
        (20,000 cells, 8 batches: ARI 0.946 with it, 0.997 without).
    alignment_components
        With ``final_alignment`` and more than 0, measure each batch's offset in each
        cluster apart from its mix of what the cluster holds: the cluster's cells are
        fitted by this many Gaussian components that the batches share with weights
        of their own, shifted by one vector per batch, and the shift is the offset
        (:mod:`~deepbid.composition`; not in the paper). 0 takes the difference between
        the batch's centroid and the cluster's, which holds the difference of mix too:
        two close types or a family of types that the batches hold in unequal shares
        blur into each other. Over the ten benchmark sets (3 seeds) 4 keeps the
        families and RNA-mixture scenarios' types apart better than 0 (ARI 0.990
        against 0.973, 0.928 against 0.864) and scores higher on the mean (README,
        defaults table); 4 from a scan of 2 to 16 on those two scenarios.
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
        cluster of the mixture whose cells show two modes in ``division_space``
        (:func:`~deepbid.k_estimate.find_divisions`; not in the paper): the K rule's
        silhouette keeps groups of nested types together (RNA mixtures of three cell
        lines, families of close types).
    division_space
        Where a cluster's cells are tested for two modes and its parts found:
        ``"embedding"``, the integrated embedding after the final alignment, or
        ``"codes"``, the encoder's codes before it. Two types that share a cluster and
        that the batches hold in unequal shares lie farther apart in the codes (the
        alignment, measured in the shared cluster, removes that difference of
        composition as if it were batch effect), but the codes also hold the batch
        effect: over 3 seeds of the ten benchmark sets, ``"codes"`` found the RNA
        mixtures' seventh group on one seed and divided a cell line of CellBench's 3
        cell lines on another (README, defaults table).
    divided_alignment
        With ``final_alignment`` and a cluster divided (``divide_multimodal``), measure
        the final alignment again in the divided clusters and refit the mixture on its
        result (not in the paper). A divided cluster holds types that the batches hold
        in other proportions, so its offset is partly that difference of composition,
        not batch effect (families scenario, 3 seeds: README, defaults table).
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
    epoch_cells: int | None = 100_000
    lambda1: float | None = None
    lambda2: float | None = None
    kappa1: float = 0.01
    kappa2: float = 0.0
    kappa_local: float = 20.0
    local_target: str = "global"
    local_membership: float = 0.95
    kappa_align: float = 0.0
    leiden_start: bool = True
    reestimate_at: float = 1.0
    weighted_memberships: bool = True
    n_mixing_clusters: int | None = None
    input_dropout: float = 0.7
    final_alignment: bool = True
    alignment_mixture: bool = False
    alignment_components: int = 4
    final_scaling: bool = True
    final_mixture: bool = True
    divide_multimodal: bool = True
    division_space: str = "embedding"
    divided_alignment: bool = True

    @classmethod
    def given(cls, **values) -> Settings:
        """Settings from user keywords, with a clear error for an unknown name, a value of
        the wrong type or out of range, or a string setting outside its ``CHOICES``."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
        for name, value in values.items():
            _check_setting(name, value, str(fields[name].type))
        settings = cls(**values)
        for name, choices in CHOICES.items():
            if getattr(settings, name) not in choices:
                raise InputError(
                    f"{name} must be one of {list(choices)}, got {getattr(settings, name)!r}"
                )
        return settings

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_setting(name: str, value: object, annotation: str) -> None:
    """Raise :class:`InputError` unless ``value`` fits setting ``name`` of type
    ``annotation`` (``"int"``, ``"float | None"``, ...) and its range."""
    if value is None and annotation.endswith("| None"):
        return
    kind = annotation.removesuffix(" | None")
    wanted = {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}
    fits = {
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "float": isinstance(value, numbers.Real) and not isinstance(value, bool),
        "bool": isinstance(value, (bool, np.bool_)),
        "str": isinstance(value, str),
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
