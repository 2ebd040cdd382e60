"""The model: settings and a trained network; fit, latent, clusters, denoised, save, load."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import warnings
from collections.abc import Callable, Sequence

import anndata as ad
import numpy as np
import torch
from tqdm.auto import tqdm

from . import cluster, distributed, k_estimate, mixing
from .data import DataView, batch_labels, check_anndata, prepare, prepare_like
from .errors import InputError, InputWarning
from .files import write_atomically
from .mapping import train_new_batches
from .module import Autoencoder
from .settings import PRESETS, Settings, paper_settings, scaled_epochs
from .train import Trainer, denoise, embed

#: Version of the file :meth:`DeepBID.save` writes: one format for deepbid 0.2
#: (0.1's files, formats 1-12, are refused with a message to fit again).
FORMAT = 13


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
    preset
        ``"paper"``: the published method's configuration for the data's size
        (:func:`~deepbid.settings.paper_settings`: 300-wide code, the paper's weights,
        epochs and start, no step after training); it needs ``n_clusters``, as the
        paper does. ``settings`` given beside it override its values.
    **settings
        Any field of :class:`~deepbid.settings.Settings` (``latent_dim``, ``epochs``,
        ``kappa1``, ``final_alignment``, ...); the defaults live there.
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
        preset: str | None = None,
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
        if preset is not None and preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; known: {list(PRESETS)} or None")
        if preset == "paper" and n_clusters is None:
            raise InputError(
                "preset='paper' needs n_clusters: the paper's method takes the number of "
                "cell types as given (leave preset out to have it estimated)"
            )
        self.n_clusters = n_clusters
        self.preset = preset
        self.options = Settings.given(**settings)
        self._given = frozenset(settings)
        self.seed = seed
        self.device = resolve_device(device)
        self.progress = progress
        self.module: Autoencoder | None = None
        self.mixture: cluster.Mixture | None = None
        self.divisions: list[k_estimate.Division] = []
        self.alignment: mixing.FinalAlignment | None = None
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
        self.settings = self._resolved_settings(view.n_total)
        trainer = self._new_trainer(view)
        with self._progress_bar() as bar:
            trainer.pretrain(view, bar)
            h = self._encode(view)
            labels = self._initial_partition(h, view.batch_codes)
            centres, p = trainer.cluster(view, h, labels, bar, self._repartition(view))
            trainer.fit_decoder(view, bar)
        self.centres, self.temperature = centres.cpu(), trainer.temperature
        self.log_weights = None if trainer.log_weights is None else trainer.log_weights.cpu()
        self.history = trainer.history
        codes = self._encode(view).cpu()
        self.alignment = self._measure_alignment(
            view, codes, self._memberships(codes), view.n_batches
        )
        p = self._final_clusters(view, codes, p.cpu())
        self._keep_training_cells(view, codes, p, batch_key, layer)
        return self

    def _resolved_settings(self, n_cells: int) -> Settings:
        """The settings of a fit on ``n_cells`` cells: the preset's values (those the
        user did not set), then every size-dependent default resolved."""
        options = self.options
        if self.preset == "paper":
            paper = paper_settings(n_cells, self.n_clusters, options.batch_size)
            options = dataclasses.replace(
                options, **{k: v for k, v in paper.items() if k not in self._given}
            )
        return options.for_cells(n_cells)

    def _new_trainer(self, view: DataView) -> Trainer:
        """A fresh network for ``view``'s genes and batches (seeded, the same on every
        process) and its :class:`~deepbid.train.Trainer`."""
        torch.manual_seed(self.seed)
        s = self.settings
        self.module = Autoencoder(
            view.n_genes, view.n_batches, s.hidden_dim, s.latent_dim, s.conditional_decoder
        ).to(self.device)
        distributed.broadcast_module(self.module)
        return Trainer(self.module, s, self.device, self.seed)

    def _progress_bar(self) -> tqdm:
        """One bar over every epoch of every phase, shown by the first process only."""
        s = self.settings
        total = 2 * s.layer_epochs + s.pretrain_epochs + s.epochs + s.decoder_epochs
        quiet = not self.progress or distributed.rank() != 0
        return tqdm(total=total, desc="deepbid", unit="epoch", disable=quiet)

    def _encode(self, view: DataView) -> torch.Tensor:
        return embed(self.module, view, self.device)

    def _initial_partition(self, h: torch.Tensor, batch: np.ndarray) -> np.ndarray:
        """Hard labels ``(n,)`` of the ``(n, d)`` pretrained codes ``h`` of cells of the
        batches ``batch`` that fuzzy k-means starts from: the K rule's partition, or one
        with the given K; the rule's report is kept."""
        labels, report = k_estimate.initial_partition(
            h.cpu().numpy(),
            batch,
            self.n_clusters,
            self.seed,
            self.settings.leiden_start,
        )
        self.k_estimate = {"pretrained": report}
        return labels

    def _repartition(self, view: DataView) -> Callable[[torch.Tensor], np.ndarray] | None:
        """With K estimated, the K rule on the trained codes (``reestimate_at``)."""
        if self.n_clusters is not None:
            return None

        def repartition(codes: torch.Tensor) -> np.ndarray:
            labels, self.k_estimate["trained"] = k_estimate.initial_partition(
                codes.cpu().numpy(), view.batch_codes, None, self.seed
            )
            return labels

        return repartition

    def _final_clusters(self, view: DataView, codes: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Memberships ``(n, K')`` of the training cells from their ``(n, d)`` CPU codes
        and eq. (14)'s ``p`` ``(n, K)``: the final mixture's posteriors on the
        integrated embedding, its clusters with two modes divided (K estimated);
        ``p`` itself without the final mixture."""
        self.mixture, self.divisions = None, []
        if not self.settings.final_mixture:
            return p
        z = torch.from_numpy(self._embedding(codes, view.batch_codes))
        self.mixture = cluster.fit_mixture(z, p, reduce=distributed.all_sum)
        p = cluster.mixture_posteriors(z, self.mixture)
        if self.n_clusters is None and self.settings.divide_multimodal:
            # after the mixture, not before: EM from a few cells cut off a cluster
            # lets the new component take half of a large neighbouring type
            self.divisions, self.k_estimate["divided"] = k_estimate.find_divisions(
                z.numpy(), p.numpy(), view.batch_codes, self.seed
            )
            p = torch.from_numpy(k_estimate.divide(z.numpy(), p.numpy(), self.divisions))
        return p.float()

    def _keep_training_cells(
        self,
        view: DataView,
        codes: torch.Tensor,
        p: torch.Tensor,
        batch_key: str,
        layer: str | None,
    ) -> None:
        """Keep what :meth:`latent`, :meth:`denoised` and the rest need of the training
        cells: the view, and where it holds one shard, every cell's codes and P."""
        self.genes, self.batch_categories = view.genes, view.batch_categories
        self.is_counts = view.is_counts
        self.median_library = view.median_library
        self.batch_key, self.layer = batch_key, layer
        self.train_view = view
        n, rows = view.n_total, view.positions
        self._train_p = distributed.gather_rows(p.numpy(), rows, n)
        self._train_latent = self._train_codes = None
        if distributed.active():
            # each process holds only its shard of the cells: keep all cells' results,
            # so that rank 0 writes them without the other shards' expression
            self._train_latent = distributed.gather_rows(codes.numpy(), rows, n)
            self._train_codes = distributed.gather_rows(view.batch_codes, rows, n)

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
        DeepBID
            A new model, this one's reference plus the query's batches, whose training
            cells are the query's: ``latent()``, ``clusters()``, ``membership()`` and
            ``denoised()`` give the query's results, and :func:`deepbid.write_results`
            writes them into ``query``. This model is not changed.

        Raises
        ------
        RuntimeError
            When this model is neither trained nor loaded.
        InputError
            When ``query`` lacks the batch key, the layer or the model's genes, or
            holds values :func:`deepbid.integrate` refuses.
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
    ) -> mixing.FinalAlignment:
        """The final alignment of the ``(n, d)`` CPU codes of ``view``'s cells (of all
        processes) in the clusters of their memberships ``p`` ``(n, K)``: sums and
        counts per batch and cluster, each cell counted in its hard cluster with the
        weight of its membership there, and the median squared distance of each
        batch's cells in each hard cluster from their own mean."""
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
        return mixing.final_alignment(sums, counts, spreads)

    def _add_batch_alignment(self, view: DataView, n_old: int) -> None:
        """The final alignment of the batches ``n_old...`` from ``view``'s cells,
        measured against the reference's; the reference's own stay as they were, so
        its embedding does not change."""
        codes = torch.from_numpy(self._codes(view))
        measured = self._measure_alignment(
            view, codes, self._memberships(codes), len(self.batch_categories)
        )
        self.alignment = mixing.extended(self.alignment, measured, n_old)

    # -- results ---------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self.module is None:
            raise RuntimeError("the model is not trained: call fit() or DeepBID.load() first")

    def data_view(self, adata: ad.AnnData | None = None) -> DataView:
        """The :class:`~deepbid.data.DataView` the model works on.

        Parameters
        ----------
        adata
            Cells to work on: raw counts on at least the model's genes, with the model's
            ``batch_key`` in ``obs`` (and its ``layer``); ``None``: the training cells.

        Returns
        -------
        DataView
            The training view for ``None``, else ``adata``'s ``n_obs`` cells on the
            model's genes and batches.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        InputError
            When ``adata`` lacks the model's genes, batch key or layer or holds values
            :func:`deepbid.integrate` refuses, or when a loaded model gets no ``adata``.
        """
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
            self._memberships(codes),
            torch.as_tensor(batch, dtype=torch.long),
            self.alignment,
            self.settings.final_scaling,
        ).numpy()

    def _latent(self, view: DataView) -> np.ndarray:
        return self._embedding(torch.from_numpy(self._codes(view)), self._own_batches(view))

    def _p(self, view: DataView) -> np.ndarray:
        if view is self.train_view and self._train_p is not None:
            return self._train_p
        # the cells are encoded once: the embedding and the divisions both read the codes
        codes = torch.from_numpy(self._codes(view))
        if self.mixture is None:
            return self._memberships(codes).numpy()
        z = self._embedding(codes, self._own_batches(view))
        p = cluster.mixture_posteriors(torch.from_numpy(z), self.mixture).numpy()
        return k_estimate.divide(z, p, self.divisions).astype(np.float32)

    def latent(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """Integrated embedding of the training cells or of ``adata``'s cells.

        Parameters
        ----------
        adata
            Cells to work on: raw counts on at least the model's genes, with the model's
            ``batch_key`` in ``obs`` (and its ``layer``); ``None``: the training cells.

        Returns
        -------
        numpy.ndarray
            ``(n_obs, latent_dim)`` float32; NaN rows for cells with zero counts.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        InputError
            When ``adata`` lacks the model's genes, batch key or layer or holds values
            :func:`deepbid.integrate` refuses, or when a loaded model gets no ``adata``.
        """
        view = self.data_view(adata)
        return self._rows(view, self._latent(view))

    def membership(self, adata: ad.AnnData | None = None) -> np.ndarray:
        """Soft cluster assignments ``P``.

        The final mixture's posteriors on the integrated embedding (``final_mixture``),
        else eq. (14) on the codes.

        Parameters
        ----------
        adata
            Cells to work on: raw counts on at least the model's genes, with the model's
            ``batch_key`` in ``obs`` (and its ``layer``); ``None``: the training cells.

        Returns
        -------
        numpy.ndarray
            ``(n_obs, K)`` float32, rows summing to 1; NaN rows for cells with zero
            counts.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        InputError
            When ``adata`` lacks the model's genes, batch key or layer or holds values
            :func:`deepbid.integrate` refuses, or when a loaded model gets no ``adata``.
        """
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
        """Hard cluster labels, the argmax of :meth:`membership`.

        Parameters
        ----------
        adata
            Cells to work on: raw counts on at least the model's genes, with the model's
            ``batch_key`` in ``obs`` (and its ``layer``); ``None``: the training cells.

        Returns
        -------
        numpy.ndarray
            ``(n_obs,)`` integers in ``0 .. K-1``; -1 for cells with zero counts.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        InputError
            When ``adata`` lacks the model's genes, batch key or layer or holds values
            :func:`deepbid.integrate` refuses, or when a loaded model gets no ``adata``.
        """
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
            offsets in eq. (14)'s clusters removed (:meth:`latent` without the
            scaling), moved by ``b``'s offsets
            in the cell's clusters, so the batch effect the codes carry is ``b``'s
            too.
        library_size
            Counts per cell of the output; ``None``: the training data's median library
            size. (For log-normalised input, a multiple of the model's unit scale.)

        Returns
        -------
        numpy.ndarray
            ``(n_obs, n_genes)`` float32; NaN rows for cells with zero counts.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        InputError
            When ``library_size`` is not positive, a batch of ``transform_batch`` is
            not one of the model's, or ``adata`` fails the checks of :meth:`latent`.
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
            p = self._memberships(h)
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
        """Write the trained model to one file.

        The file is written under a temporary name and then renamed, so an interrupted
        save never leaves a half-written model.

        Parameters
        ----------
        path
            File to write (by convention ``.pt``); :meth:`load` reads it.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        """
        self._check_fitted()
        state = {
            "format": FORMAT,
            "state_dict": self.module.state_dict(),
            "settings": self.settings.to_dict(),
            "centres": self.centres,
            "temperature": self.temperature,
            "log_weights": self.log_weights,
            "mixture": None if self.mixture is None else self.mixture._asdict(),
            "divisions": [
                {
                    k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                    for k, v in d._asdict().items()
                }
                for d in self.divisions
            ],
            "alignment": self.alignment._asdict(),
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
            "preset": self.preset,
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
            preset=state["preset"],
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
        model.mixture = None if state["mixture"] is None else cluster.Mixture(**state["mixture"])
        model.alignment = mixing.FinalAlignment(**state["alignment"])
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
        """Everything needed to reproduce the run, as written to ``uns["deepbid"]``.

        Returns
        -------
        dict
            The settings, the number of clusters found and given, the preset, the
            membership temperature and the mixture's variance.

        Raises
        ------
        RuntimeError
            When the model is neither trained nor loaded.
        """
        return {
            **self.settings.to_dict(),
            "n_clusters": self.cluster_count,
            "n_clusters_given": None if self.n_clusters is None else int(self.n_clusters),
            "preset": "none" if self.preset is None else self.preset,
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
