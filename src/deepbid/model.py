"""The model: settings and a trained network; fit, latent, clusters, denoised, save, load."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import warnings
from collections.abc import Sequence

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from . import cluster, composition, distributed, k_estimate, mixing
from .data import DataView, batch_labels, check_anndata, prepare, prepare_like
from .errors import InputError, InputWarning
from .files import write_atomically
from .mapping import train_new_batches
from .module import Autoencoder
from .settings import Settings, scaled_epochs
from .train import Trainer, denoise, embed

#: Version of the file :meth:`DeepBID.save` writes (3: the K estimation report, the
#: given K and the encoder shifts of mapped batches; 4: the final alignment's batch
#: statistics; 5: its spreads and scales; 6: the final mixture; 7: the mixture on
#: the codes that places the offsets; 8: the divisions of clusters with two modes; 9:
#: each divided cluster's parts refitted together; 10: the alignment measured again in
#: the divided clusters, and the mixture refitted there; 11: the space divisions are
#: found and routed in, ``division_space``; 12: the batches' shifts apart from their
#: mix, ``alignment_components``).
FORMAT = 12


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; anything else is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {device!r} asked for but CUDA is not available; use 'auto' or 'cpu'"
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise InputError(
            f"device {device!r} asked for but this machine has {torch.cuda.device_count()} "
            "CUDA device(s), numbered from 0"
        )
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return resolved


def batch_positions(names: object, categories: Sequence[str]) -> list[int]:
    """Positions in ``categories`` of the batch(es) ``names`` of ``transform_batch``:
    ``"average"`` (every batch), one name, or several (names may be numbers)."""
    if np.ndim(names) == 0:
        names = list(categories) if names == "average" else [names]
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in categories]
    if unknown or not names:
        raise InputError(
            f"transform_batch names unknown batch(es) {unknown}; use None, 'average' or "
            f"one of the batches {list(categories)}"
        )
    return [list(categories).index(n) for n in names]


class DeepBID:
    """DeepBID batch integration, clustering and denoising of scRNA-seq counts.

    Inside an initialised ``torch.distributed`` process group (e.g. a script
    started by ``torchrun``) :meth:`fit` trains data-parallel: every process
    passes the same AnnData (in memory or backed) and reads and trains on only
    its share of the cells, with gradients and all cluster statistics
    all-reduced (see :mod:`deepbid.distributed`); every process ends with the
    same model and the results of all cells.

    Parameters
    ----------
    n_clusters
        Number of clusters ``K``; ``None`` estimates it from the data (and divides
        clusters with two modes at the end, ``divide_multimodal``).
    **settings
        Any field of :class:`~deepbid.settings.Settings` (``latent_dim``, ``epochs``,
        ``kappa2``, ``kappa_local``, ...); the defaults live there.
    seed
        Seeds every random choice; the same seed gives the same result on one machine,
        on the CPU and on CUDA (checked on an H100; README, "Scale"). The CPU and CUDA
        results differ from each other.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    progress
        Show a progress bar.

    Attributes
    ----------
    train_view
        The :class:`~deepbid.data.DataView` of the training cells after :meth:`fit`
        (``None`` for a loaded model): genes used, batches, cells kept.
    """

    def __init__(
        self,
        n_clusters: int | None = None,
        *,
        seed: int = 0,
        device: str = "auto",
        progress: bool = True,
        **settings,
    ) -> None:
        if n_clusters is not None and (
            not isinstance(n_clusters, (int, np.integer)) or n_clusters < 2
        ):
            raise InputError(
                f"n_clusters must be an integer >= 2 or None (estimate it), got {n_clusters!r}"
            )
        # numpy's and scikit-learn's generators take seeds below 2**32
        if (
            not isinstance(seed, (int, np.integer))
            or isinstance(seed, bool)
            or not 0 <= seed < 2**32
        ):
            raise InputError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        self.n_clusters = n_clusters
        self.options = Settings.given(**settings)
        self.seed = seed
        self.device = resolve_device(device)
        self.progress = progress
        self.module: Autoencoder | None = None
        self.mixture: cluster.Mixture | None = None
        self.divisions: list[k_estimate.Division] = []
        self.alignment: mixing.FinalAlignment | None = None
        self.part_alignment: mixing.FinalAlignment | None = None
        self.part_mixture: cluster.Mixture | None = None
        self.code_mixture: cluster.Mixture | None = None
        self.train_view: DataView | None = None
        # results for all training cells, kept where the view holds only a shard
        self._train_p: np.ndarray | None = None
        self._train_latent: np.ndarray | None = None
        self._train_codes: np.ndarray | None = None

    # -- training ------------------------------------------------------------------

    def fit(
        self,
        adata: ad.AnnData,
        batch_key: str = "batch",
        *,
        layer: str | None = None,
        genes: Sequence[str] | None = None,
    ) -> DeepBID:
        """Select genes, pretrain, then optimise the full objective on ``adata``.

        Parameters
        ----------
        adata
            Cells x genes with raw counts in ``X`` or ``layers[layer]`` (dense, sparse,
            or backed on disk); read, never modified.
        batch_key
            Column of ``adata.obs`` naming each cell's batch.
        layer
            Layer holding the raw counts; ``None`` reads ``X``.
        genes
            Train on exactly these genes instead of the per-batch HVG union.

        Returns
        -------
        The fitted model itself, for chaining (``DeepBID().fit(adata).latent()``).

        Raises
        ------
        InputError
            For input that cannot be integrated, before any training.
        TrainingError
            When a loss becomes NaN or infinite.
        """
        view = prepare(
            adata, batch_key, layer=layer, genes=genes, n_top_genes=self.options.n_top_genes
        )
        if self.n_clusters is not None and self.n_clusters > view.n_total:
            raise InputError(
                f"n_clusters={self.n_clusters} is more than the {view.n_total} usable cells"
            )
        self.settings = self.options.for_cells(view.n_total)
        torch.manual_seed(self.seed)
        self.module = Autoencoder(
            view.n_genes,
            view.n_batches,
            self.settings.hidden_dim,
            self.settings.latent_dim,
            self.settings.conditional_decoder,
        ).to(self.device)
        distributed.broadcast_module(self.module)
        trainer = Trainer(self.module, self.settings, self.device, self.seed)
        s = self.settings
        total = 2 * s.layer_epochs + s.pretrain_epochs + s.epochs + s.decoder_epochs
        quiet = not self.progress or distributed.rank() != 0
        with tqdm(total=total, desc="deepbid", unit="epoch", disable=quiet) as bar:
            trainer.pretrain(view, bar)
            h = embed(self.module, view, self.device)
            labels, first = k_estimate.initial_partition(
                h.cpu().numpy(), view.batch_codes, self.n_clusters, self.seed, s.leiden_start
            )
            self.k_estimate = {"pretrained": first}

            def repartition(codes: torch.Tensor) -> np.ndarray:
                labels, self.k_estimate["trained"] = k_estimate.initial_partition(
                    codes.cpu().numpy(), view.batch_codes, None, self.seed
                )
                return labels

            centres, p = trainer.cluster(
                view, h, labels, bar, repartition if self.n_clusters is None else None
            )
            trainer.fit_decoder(view, bar)
        self.centres, self.temperature = centres.cpu(), trainer.temperature
        self.log_weights = None if trainer.log_weights is None else trainer.log_weights.cpu()
        codes = embed(self.module, view, self.device).cpu()
        self.code_mixture = None
        if s.final_alignment and s.alignment_mixture:
            self.code_mixture = cluster.fit_mixture(codes, p.cpu(), reduce=distributed.all_sum)
        self.alignment = self._measure_alignment(
            view, codes, self._offset_weights(codes), view.n_batches
        )
        self.mixture, self.divisions = None, []
        self.part_alignment = self.part_mixture = None
        if s.final_mixture:
            z = self._embedding(codes, view.batch_codes)
            self.mixture = cluster.fit_mixture(
                torch.from_numpy(z), p.cpu(), reduce=distributed.all_sum
            )
            p = cluster.mixture_posteriors(torch.from_numpy(z), self.mixture)
            if self.n_clusters is None and s.divide_multimodal:
                # after the mixture, not before: EM from a few cells cut off a cluster
                # lets the new component take half of a large neighbouring type
                tested = self._division_space(z, codes)
                self.divisions, self.k_estimate["divided"] = k_estimate.find_divisions(
                    tested, p.numpy(), view.batch_codes, self.seed
                )
                p = k_estimate.divide(tested, p.numpy(), self.divisions)
                p = torch.from_numpy(p).float()
                if self.divisions and s.final_alignment and s.divided_alignment:
                    # a divided cluster holds types whose batches hold them in other
                    # proportions, and its offset was partly that difference of
                    # composition: measured again in the parts, then the mixture refitted
                    self.part_alignment = self._measure_alignment(view, codes, p, view.n_batches)
                    z = self._part_embedding(codes, p, view.batch_codes)
                    self.part_mixture = cluster.fit_mixture(
                        torch.from_numpy(z), p, reduce=distributed.all_sum
                    )
                    p = cluster.mixture_posteriors(torch.from_numpy(z), self.part_mixture)
            p = p.float()
        self.history = trainer.history
        self.genes, self.batch_categories = view.genes, view.batch_categories
        self.is_counts = view.is_counts
        self.median_library = view.median_library
        self.batch_key, self.layer = batch_key, layer
        self.train_view = view
        n, rows = view.n_total, view.positions
        self._train_p = distributed.gather_rows(p.cpu().numpy(), rows, n)
        self._train_latent = self._train_codes = None
        if distributed.active():
            # each process holds only its shard of the cells: keep all cells' results,
            # so that rank 0 writes them without the other shards' expression
            self._train_latent = distributed.gather_rows(codes.cpu().numpy(), rows, n)
            self._train_codes = distributed.gather_rows(view.batch_codes, rows, n)
        return self

    def map(
        self,
        query: ad.AnnData,
        batch_key: str | None = None,
        *,
        layer: str | None = None,
        epochs: int | None = None,
    ) -> DeepBID:
        """Map the cells of ``query`` onto this trained model without retraining it.

        Batches of ``query`` the model has not seen each get a decoder column and an
        encoder shift, trained on the query's cells alone (:mod:`deepbid.mapping`);
        the reference's weights and centres stay fixed. A query batch named like a
        training batch is taken as that batch (with a warning) and gets nothing new.

        Parameters
        ----------
        query
            Raw counts of new cells, with at least the model's genes.
        batch_key
            Column of ``query.obs`` holding each cell's batch; default: the model's.
        layer
            Layer of ``query`` holding the counts; default: the model's.
        epochs
            Mapping epochs; default: the clustering phase's epochs for the query's size.

        Returns
        -------
        A new model, this one's reference plus the query's batches, whose training
        cells are the query's: ``latent()``, ``clusters()``, ``membership()`` and
        ``denoised()`` give the query's results, and :func:`deepbid.write_results`
        writes them into ``query``. This model is not changed.
        """
        self._check_fitted()
        batch_key = self.batch_key if batch_key is None else batch_key
        layer = self.layer if layer is None else layer
        names = [str(c) for c in batch_labels(check_anndata(query), batch_key).categories]
        known = [name for name in names if name in self.batch_categories]
        new = [name for name in names if name not in self.batch_categories]
        if known:
            warnings.warn(
                f"query batch(es) {known} are named like training batches and are mapped "
                "as those batches; rename them to map them as new batches",
                InputWarning,
                stacklevel=2,
            )
        mapped = copy.copy(self)
        mapped.module = copy.deepcopy(self.module)
        mapped.batch_categories = [*self.batch_categories, *new]
        mapped.batch_key, mapped.layer = batch_key, layer
        view = prepare_like(
            query,
            batch_key,
            self.genes,
            mapped.batch_categories,
            self.is_counts,
            layer=layer,
            reference_median=self.median_library,
        )
        mapped.train_view = view
        mapped._train_p = mapped._train_latent = mapped._train_codes = None
        mapped.history = dict(self.history)
        if new:
            mapped.module.add_batches(len(new))
            if epochs is None:
                epochs = scaled_epochs("epochs", view.n_cells)
            settings = dataclasses.replace(self.settings, epochs=epochs)
            mapped.history.update(
                train_new_batches(
                    mapped.module,
                    view,
                    len(self.batch_categories),
                    self.centres,
                    self.temperature,
                    self.log_weights,
                    settings,
                    self.device,
                    self.seed,
                    self.progress,
                )
            )
            mapped._add_batch_alignment(view, len(self.batch_categories))
        return mapped

    def _measure_alignment(
        self,
        view: DataView,
        codes: torch.Tensor,
        p: torch.Tensor,
        n_batches: int,
        reference: mixing.FinalAlignment | None = None,
        n_reference: int = 0,
    ) -> mixing.FinalAlignment:
        """The final alignment of the ``(n, d)`` CPU codes of ``view``'s cells (of all
        processes) in the clusters of their memberships ``p`` ``(n, K)``: sums and
        counts per batch and cluster, each cell counted in its hard cluster with the
        weight of its membership there, the median squared distance of each
        batch's cells in each hard cluster from their own mean, and with
        ``alignment_components`` each batch's shift apart from its mix
        (:meth:`_shifts`; those of the batches from ``n_reference`` on against
        ``reference``'s components, where given)."""
        batch = torch.as_tensor(view.batch_codes, dtype=torch.long)
        labels = p.argmax(dim=1)
        hard = torch.nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)
        # a cell's small memberships in other clusters would pull each soft centroid
        # toward them by that share of the distance between clusters, in proportion
        # to the batch's mix of types: an offset that is composition, which removing
        # separates the batches. The weight of a cell in its own cluster keeps the
        # core of each cluster ahead of its edge.
        own = p * hard
        sums, counts = mixing.batch_cluster_sums(codes, own, batch, n_batches)
        sums, counts = distributed.all_sum(sums), distributed.all_sum(counts)
        # spreads about the hard members' unweighted mean: a radius counts every cell
        hard_sums, hard_counts = mixing.batch_cluster_sums(codes, hard, batch, n_batches)
        hard_sums, hard_counts = distributed.all_sum(hard_sums), distributed.all_sum(hard_counts)
        distances = mixing.centroid_distances(
            codes, labels, batch, mixing.batch_centroids(hard_sums, hard_counts)
        )
        # a median needs every cell's distance in one place
        whole = [
            torch.from_numpy(distributed.gather_rows(t.numpy(), view.positions, view.n_total))
            for t in (distances, batch, labels)
        ]
        spreads = mixing.batch_spreads(*whole, n_batches, p.shape[1])
        if not self.settings.alignment_components or (
            reference is not None and reference.shifts is None
        ):
            return mixing.final_alignment(sums, counts, spreads)
        mixtures = self._shifts(codes, own, batch, sums, counts, reference, n_reference)
        return mixing.final_alignment(sums, counts, spreads, None, *mixtures)

    def _shifts(
        self,
        codes: torch.Tensor,
        mass: torch.Tensor,
        batch: torch.Tensor,
        sums: torch.Tensor,
        counts: torch.Tensor,
        reference: mixing.FinalAlignment | None,
        n_reference: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each batch's shift in each cluster apart from its mix, ``(n_batches, K, d)``,
        with the ``(K, m, d)`` components and ``(K,)`` variances behind them
        (:mod:`deepbid.composition`): the centroid deviations, NaN and NaN in a
        cluster too small to fit (or, against ``reference``, fitted without them).

        ``mass`` ``(n, K)`` is each cell's weight in its hard cluster (0 elsewhere);
        the sums and counts are :func:`~deepbid.mixing.batch_cluster_sums`' of it."""
        n_batches, k, d = sums.shape
        labels = mass.argmax(dim=1)
        if reference is not None:
            # the new batches start from their centroids' deviations from the reference's
            sums = torch.cat([reference.sums[:n_reference], sums[n_reference:]])
            counts = torch.cat([reference.counts[:n_reference], counts[n_reference:]])
        weights, deviations = mixing.batch_deviations(sums, counts, n_reference or None)
        if reference is None:
            # two starts: the codes as they are, and with their centroid offsets removed
            begins = [torch.zeros_like(deviations), deviations]
            seeds = self._starting_centres(codes, batch, labels, begins)
        else:
            deviations[:n_reference] = reference.shifts[:n_reference]
        shifts = deviations.clone()
        centres = torch.full((k, self.settings.alignment_components, d), float("nan"))
        variances = torch.full((k,), float("nan"))
        anchor = weights * counts
        for c in range(k):
            known = None
            if reference is None:
                starts = [(seeds[i][c], begin) for i, begin in enumerate(begins)]
                starts = [(torch.from_numpy(s), begin) for s, begin in starts if s is not None]
            elif reference.variances[c].isfinite():
                known = composition.ShiftedMixture(
                    reference.centres[c],
                    None,
                    reference.shifts[:, c],
                    float(reference.variances[c]),
                )
                starts = [(None, deviations)]
            else:
                starts = []
            rows = labels == c
            fits = [
                composition.fit_shifted_mixture(
                    codes[rows],
                    mass[rows, c],
                    batch[rows],
                    n_batches,
                    start,
                    begin[:, c],
                    anchor[:, c],
                    known,
                    n_reference,
                    reduce=distributed.all_sum,
                )
                for start, begin in starts
            ]
            if not fits:
                continue
            # a mix and a shift can explain the same cells: the likelier optimum is kept
            best = max(fits, key=lambda fit: fit.log_likelihood)
            shifts[:, c] = best.shifts.to(shifts.dtype)
            centres[c] = best.centres.to(centres.dtype)
            variances[c] = best.variance
        return shifts, centres, variances

    def _starting_centres(
        self,
        codes: torch.Tensor,
        batch: torch.Tensor,
        labels: torch.Tensor,
        begins: list[torch.Tensor],
    ) -> list[list[np.ndarray | None]]:
        """For each of the ``(n_batches, K, d)`` starting shifts ``begins``, the
        k-means++ components of every cluster's cells so shifted, from one sample of
        the cells of all processes (:func:`~deepbid.composition.starting_centres`)."""
        k = begins[0].shape[1]
        placed = [(codes - begin[batch, labels]).numpy() for begin in begins]
        sample = cluster.gathered_sample(
            (*placed, labels.numpy()), cluster.KMEANS_INIT_CELLS, self.seed
        )
        seeds = None
        if distributed.rank() == 0:
            seeds = [
                composition.starting_centres(
                    points, sample[-1], k, self.settings.alignment_components, self.seed
                )
                for points in sample[:-1]
            ]
        return distributed.broadcast_object(seeds)

    def _add_batch_alignment(self, view: DataView, n_old: int) -> None:
        """The final alignment (and the one in divided clusters) of the batches
        ``n_old...`` from ``view``'s cells, measured against the reference's; the
        reference's own stay as they were, so its embedding does not change."""
        codes = torch.from_numpy(self._codes(view))
        n_batches = len(self.batch_categories)
        measured = self._measure_alignment(
            view, codes, self._offset_weights(codes), n_batches, self.alignment, n_old
        )
        self.alignment = mixing.extended(self.alignment, measured, n_old)
        if self.part_alignment is not None:
            z = self._embedding(codes, self._own_batches(view))
            p = torch.from_numpy(self._divided(z, codes)).float()
            measured = self._measure_alignment(
                view, codes, p, n_batches, self.part_alignment, n_old
            )
            self.part_alignment = mixing.extended(self.part_alignment, measured, n_old)

    # -- results ---------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.module is None:
            raise RuntimeError("the model is not trained: call fit() or DeepBID.load() first")

    def data_view(self, adata: ad.AnnData | None = None) -> DataView:
        """The :class:`~deepbid.data.DataView` the model works on: the training view
        for ``None``, else ``adata``'s cells on the model's genes and batches (read from
        its ``batch_key`` and ``layer``)."""
        self._check_fitted()
        if adata is None:
            if self.train_view is None:
                raise InputError("a loaded model needs the cells to work on: pass adata")
            return self.train_view
        return prepare_like(
            adata,
            self.batch_key,
            self.genes,
            self.batch_categories,
            self.is_counts,
            layer=self.layer,
            reference_median=self.median_library,
        )

    def _rows(self, view: DataView, values: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """``values`` of the view's cells as one row per cell of its AnnData, ``fill``
        in the rows of cells left out (zero counts)."""
        if view.cells.all():  # no copy: the denoised matrix alone is cells x genes
            return values
        out = np.full((view.cells.size, *values.shape[1:]), fill, dtype=values.dtype)
        out[view.cells] = values
        return out

    def _codes(self, view: DataView) -> np.ndarray:
        """The encoder's codes ``(n, d)`` of the view's cells, before the final alignment."""
        if view is self.train_view and self._train_latent is not None:
            return self._train_latent
        return embed(self.module, view, self.device).cpu().numpy()

    def _own_batches(self, view: DataView) -> np.ndarray:
        if view is self.train_view and self._train_codes is not None:
            return self._train_codes
        return view.batch_codes

    def _memberships(self, codes: torch.Tensor) -> torch.Tensor:
        """Eq. (14) of ``(n, d)`` CPU codes against the final centres: ``(n, K)``."""
        return cluster.memberships(codes, self.centres, self.temperature, self.log_weights)

    def _offset_weights(self, codes: torch.Tensor) -> torch.Tensor:
        """The memberships ``(n, K)`` that place the batch offsets of ``(n, d)`` CPU
        codes: the posteriors of the mixture fitted on the codes (``alignment_mixture``),
        else eq. (14)."""
        if self.code_mixture is None:
            return self._memberships(codes)
        return cluster.mixture_posteriors(codes, self.code_mixture).to(codes.dtype)

    def _embedding(self, codes: torch.Tensor, batch: np.ndarray) -> np.ndarray:
        """The integrated embedding ``(n, d)`` of ``(n, d)`` CPU codes of cells of the
        batches ``batch`` ``(n,)``: the codes after the final alignment, if any."""
        if not self.settings.final_alignment:
            return codes.numpy()
        # memberships recomputed from the codes, not the trainer's (its last fuzzy
        # k-means step leaves them 1e-4 apart): the same cells get the same embedding
        # as training cells and when passed in again
        return mixing.align(
            codes,
            self._offset_weights(codes),
            torch.as_tensor(batch, dtype=torch.long),
            self.alignment,
            self.settings.final_scaling,
        ).numpy()

    def _part_embedding(
        self, codes: torch.Tensor, p: torch.Tensor, batch: np.ndarray
    ) -> np.ndarray:
        """The ``(n, d)`` CPU codes aligned in the divided clusters of their memberships
        ``p`` ``(n, K')`` instead of eq. (14)'s."""
        return mixing.align(
            codes,
            p,
            torch.as_tensor(batch, dtype=torch.long),
            self.part_alignment,
            self.settings.final_scaling,
        ).numpy()

    def _division_space(self, z: np.ndarray, codes: torch.Tensor) -> np.ndarray:
        """The ``(n, d)`` points in which clusters are tested for two modes and divided
        (``division_space``): the codes, or the embedding ``z`` of the first alignment."""
        return codes.numpy() if self.settings.division_space == "codes" else z

    def _divided(self, z: np.ndarray, codes: torch.Tensor) -> np.ndarray:
        """Memberships ``(n, K')`` of the final mixture on the ``(n, d)`` embedding ``z``
        of the first alignment, its two-mode clusters divided in the division space."""
        p = cluster.mixture_posteriors(torch.from_numpy(z), self.mixture).numpy()
        return k_estimate.divide(self._division_space(z, codes), p, self.divisions)

    @property
    def _realigned(self) -> bool:
        """Whether the embedding is aligned again in the divided clusters."""
        s = self.settings
        return self.part_alignment is not None and s.final_alignment and s.divided_alignment

    def _latent(self, view: DataView) -> np.ndarray:
        return self._aligned(torch.from_numpy(self._codes(view)), self._own_batches(view))

    def _aligned(self, codes: torch.Tensor, batch: np.ndarray) -> np.ndarray:
        """The integrated embedding ``(n, d)`` of ``(n, d)`` CPU codes of cells of the
        batches ``batch``: the first alignment, and again in the divided clusters."""
        z = self._embedding(codes, batch)
        if not self._realigned:
            return z
        return self._part_embedding(codes, torch.from_numpy(self._divided(z, codes)).float(), batch)

    def _p(self, view: DataView) -> np.ndarray:
        if view is self.train_view and self._train_p is not None:
            return self._train_p
        # the cells are encoded once: the embedding and the divisions both read the codes
        codes = torch.from_numpy(self._codes(view))
        if self.mixture is None:
            return self._memberships(codes).numpy()
        z = self._aligned(codes, self._own_batches(view))
        if self._realigned:
            p = cluster.mixture_posteriors(torch.from_numpy(z), self.part_mixture).numpy()
        else:
            p = self._divided(z, codes)
        return p.astype(np.float32)

    def latent(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """Integrated embedding ``(n_obs, latent_dim)`` of the training cells, or of
        ``adata``'s cells (the model's genes, its batches); NaN rows for cells with
        zero counts."""
        view = self.data_view(adata)
        return self._rows(view, self._latent(view))

    def membership(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """Soft cluster assignments ``P`` ``(n_obs, K)``: the final mixture's posteriors
        on the integrated embedding (``final_mixture``), else eq. (14) on the codes; NaN
        rows for cells with zero counts."""
        view = self.data_view(adata)
        return self._rows(view, self._p(view))

    @property
    def cluster_count(self) -> int:
        """Number of clusters :meth:`clusters` assigns: the final mixture's components
        and their divisions (:func:`~deepbid.k_estimate.find_divisions`), else eq. (14)'s
        centres."""
        self._check_fitted()
        if self.mixture is None:
            return int(self.centres.shape[0])
        return int(self.mixture.means.shape[0]) + k_estimate.new_parts(self.divisions)

    def clusters(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """Hard cluster labels ``(n_obs,)``, the argmax of :meth:`membership`; -1 for
        cells with zero counts."""
        view = self.data_view(adata)
        return self._rows(view, self._p(view).argmax(axis=1), fill=-1)

    def denoised(
        self,
        adata: ad.AnnData | None = None,
        *,
        transform_batch: str | Sequence[str] | None = None,
        library_size: float | None = None,
    ) -> np.ndarray:
        """Denoised expression ``(n_obs, n_genes)`` on :attr:`genes`: each cell's NB mean.

        Parameters
        ----------
        adata
            Cells to decode; ``None``: the training cells.
        transform_batch
            ``None``: each cell decoded in its own batch (the batch effect kept, as
            the counts were measured). A batch name: every cell decoded as if it had
            been measured in that batch. A list of names, or ``"average"`` for all
            the model's batches: the mean over decoding in each — expression with the
            batch effect removed, in no batch's particular scale. With the final
            alignment, decoding in batch ``b`` starts from the codes with their batch's
            offsets in eq. (14)'s clusters removed (:meth:`latent` without the scaling
            and without the alignment in divided clusters), moved by ``b``'s offsets
            in the cell's clusters, so the batch effect the codes carry is ``b``'s
            too.
        library_size
            Counts per cell of the output; ``None``: the training data's median library
            size. (For log-normalised input, a multiple of the model's unit scale.)

        Returns
        -------
        Float32 array, NaN rows for cells with zero counts.
        """
        view = self.data_view(adata)
        if library_size is not None and not library_size > 0:
            raise InputError(f"library_size must be positive, got {library_size!r}")
        size_factor = 1.0 if library_size is None else library_size / self.median_library
        batches = (
            None
            if transform_batch is None
            else batch_positions(transform_batch, self.batch_categories)
        )
        own = self._own_batches(view)
        codes = self._codes(view)
        if batches is None or not self.settings.final_alignment:
            means = denoise(self.module, codes, own, self.device, batches, size_factor)
        else:
            # decoded in batch b from the codes with their offsets removed, moved by b's
            # offsets: the latent part of the batch effect is b's too, and a cell decoded
            # in its own batch gets back its own code (no final scaling: decoding wants
            # each batch's codes at their own spread)
            h = torch.from_numpy(codes)
            p = self._offset_weights(h)
            offsets = self.alignment.offsets
            aligned = mixing.remove_offsets(h, p, torch.as_tensor(own), offsets)
            means = denoise(
                self.module,
                aligned.numpy(),
                own,
                self.device,
                batches,
                size_factor,
                p.numpy(),
                offsets.numpy(),
            )
        return self._rows(view, means)

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained model to one file (written to a temporary name, then renamed)."""
        self._check_fitted()
        state = {
            "format": FORMAT,
            "state_dict": self.module.state_dict(),
            "settings": self.settings.to_dict(),
            "centres": self.centres,
            "temperature": self.temperature,
            "log_weights": self.log_weights,
            "mixture": None if self.mixture is None else self.mixture._asdict(),
            "code_mixture": None if self.code_mixture is None else self.code_mixture._asdict(),
            "divisions": [
                {
                    k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                    for k, v in d._asdict().items()
                }
                for d in self.divisions
            ],
            "alignment": self.alignment._asdict(),
            "part_alignment": None
            if self.part_alignment is None
            else self.part_alignment._asdict(),
            "part_mixture": None if self.part_mixture is None else self.part_mixture._asdict(),
            "genes": list(self.genes),
            "batch_categories": list(self.batch_categories),
            "is_counts": self.is_counts,
            "median_library": self.median_library,
            "batch_key": self.batch_key,
            "layer": self.layer,
            "seed": self.seed,
            "history": self.history,
            "k_estimate": _plain(self.k_estimate),
            "n_clusters_given": None if self.n_clusters is None else int(self.n_clusters),
            "mapped": self.module.batch_shift is not None,
        }
        write_atomically(path, lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> DeepBID:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path
            The model file.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda"``: where the loaded network runs.

        Returns
        -------
        The model, ready for :meth:`latent`, :meth:`denoised`, :meth:`map` and the rest
        on cells with its genes and batches.

        Raises
        ------
        InputError
            When the file is missing, not a deepbid model, or of another format version.
        """
        try:
            state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise InputError(f"cannot read a deepbid model from {path}: {err}") from None
        if not isinstance(state, dict) or "format" not in state:
            raise InputError(f"cannot read a deepbid model from {path}: not written by save()")
        if state["format"] != FORMAT:
            raise InputError(
                f"{path} was written by another deepbid version (model format "
                f"{state['format']}, this version reads {FORMAT}); fit the model again"
            )
        settings = Settings(**state["settings"])
        model = cls(
            n_clusters=state["n_clusters_given"],
            seed=state["seed"],
            device=device,
            progress=False,
            **state["settings"],
        )
        model.settings = settings
        model.module = Autoencoder(
            len(state["genes"]),
            len(state["batch_categories"]),
            settings.hidden_dim,
            settings.latent_dim,
            settings.conditional_decoder,
        ).to(model.device)
        if state["mapped"]:
            model.module.add_batches(0)
        model.module.load_state_dict(state["state_dict"])
        model.centres, model.temperature = state["centres"], state["temperature"]
        model.log_weights = state["log_weights"]
        model.mixture, model.code_mixture, model.part_mixture = (
            None if state[key] is None else cluster.Mixture(**state[key])
            for key in ("mixture", "code_mixture", "part_mixture")
        )
        model.alignment, model.part_alignment = (
            None if state[key] is None else mixing.FinalAlignment(**state[key])
            for key in ("alignment", "part_alignment")
        )
        model.divisions = [
            k_estimate.Division(
                **{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
            )
            for d in state["divisions"]
        ]
        model.genes, model.batch_categories = state["genes"], state["batch_categories"]
        model.is_counts, model.median_library = state["is_counts"], state["median_library"]
        model.batch_key, model.layer = state["batch_key"], state["layer"]
        model.history, model.k_estimate = state["history"], state["k_estimate"]
        return model

    def settings_dict(self) -> dict:
        """Everything needed to reproduce the run, for ``uns``."""
        return {
            **self.settings.to_dict(),
            "n_clusters": self.cluster_count,
            "n_clusters_given": None if self.n_clusters is None else int(self.n_clusters),
            "membership_temperature": self.temperature,
            "mixture_variance": None if self.mixture is None else self.mixture.variance,
            "seed": self.seed,
            "device": str(self.device),
            "batch_key": self.batch_key,
            "layer": self.layer,
            "is_counts": self.is_counts,
        }


def _plain(value: object) -> object:
    """``value`` with numpy scalars and arrays made Python numbers and lists, which
    :func:`torch.load` reads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
