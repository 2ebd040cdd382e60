"""The training loop: layer-wise pretraining, then the joint clustering objective (eq. 11)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import cluster, distributed, losses, mixing
from .data import DataView
from .errors import TrainingError
from .module import Autoencoder
from .settings import Settings

#: Cells per forward pass when embedding or decoding the whole data set.
CHUNK = 4096


def _batch(view: DataView, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(device) for a in view.rows(idx))


#: The training phases in the order they run (``history``'s keys; a mapped model adds
#: ``"map"``).
PHASES = ("pretrain_outer", "pretrain_inner", "pretrain", "cluster", "decoder", "map")
#: Per-epoch entries of ``history[phase]`` that are not weighted loss terms: their sum,
#: the step count and timing, and the clustering phase's report after each epoch.
NOT_TERMS = frozenset(
    {
        "total",
        "steps",
        "seconds",
        "membership_change",
        "fuzzy_iterations",
        "temperature",
        "n_clusters",
        "mixing_across_nats",
    }
)


class Trainer:
    """Trains an :class:`~deepbid.module.Autoencoder` on a :class:`~deepbid.data.DataView`.

    Parameters
    ----------
    module
        The network, already on ``device``.
    settings
        Hyper-parameters.
    device
        Where tensors live.
    seed
        Seeds the minibatch order (plus the process rank under torch.distributed).
    """

    def __init__(
        self,
        module: Autoencoder,
        settings: Settings,
        device: torch.device,
        seed: int,
    ) -> None:
        self.module = module
        self.settings = settings
        self.device = device
        self.seed = seed
        # processes of a distributed run shuffle their shards independently
        self.rng = np.random.default_rng(seed + distributed.rank())
        self.history: dict[str, dict[str, list[float]]] = {}

    def run_epochs(
        self,
        view: DataView,
        phase: str,
        epochs: str,
        params: Iterable[torch.nn.Parameter],
        step: Callable[..., dict[str, torch.Tensor]],
        bar: tqdm,
        after_epoch: Callable[[], dict[str, float]] | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        """Run the epochs of Adam that the setting named ``epochs`` gives, each over at
        most :meth:`Settings.cells_per_epoch` cells, on the terms ``step`` returns for
        each minibatch.

        ``step(x, counts, size_factors, batch, idx)`` returns named loss terms,
        already weighted, whose sum is minimised; their per-epoch means go to
        ``history[phase][term]``, with the ``total``, the optimiser ``steps`` and the
        ``seconds`` the epoch's minibatch steps took. ``weight_decay`` adds
        ``weight_decay * param`` to every gradient: the gradient of
        ``weight_decay / 2`` times the squared norms of ``params``.
        """
        params = list(params)
        # the fused update is one pass over each parameter instead of a dozen, a
        # third of the optimiser's time on CPU; other devices keep the default
        fused = self.device.type in ("cpu", "cuda") or None
        optimiser = torch.optim.Adam(
            params, lr=self.settings.lr, weight_decay=weight_decay, fused=fused
        )
        # batch_size and epoch_cells are global: processes split them, so a
        # distributed run takes the same steps per epoch as a single process
        world = distributed.world_size()
        n_epochs, cap = getattr(self.settings, epochs), self.settings.cells_per_epoch(epochs)
        n_used = distributed.all_min(min(view.n_cells, -(-cap // world)))
        batch_size = -(-self.settings.batch_size // world)
        for epoch in range(1, n_epochs + 1):
            sums: dict[str, float] = {}
            n_steps = 0
            start = time.perf_counter()
            for idx in view.minibatches(batch_size, self.rng, n_used):
                terms = step(*_batch(view, idx, self.device), idx)
                total = sum(terms.values())
                optimiser.zero_grad(set_to_none=True)
                total.backward()
                if not torch.isfinite(distributed.average_gradients(params, total)):
                    bad = [name for name, value in terms.items() if not torch.isfinite(value)]
                    raise TrainingError(
                        f"{phase} epoch {epoch}: loss term(s) {bad} became NaN or infinite; "
                        "try a lower lr, or check the input for extreme values"
                    )
                optimiser.step()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item()
                n_steps += 1
            record = {name: value / n_steps for name, value in sums.items()}
            record["total"] = sum(record.values())
            record["steps"] = float(n_steps)
            record["seconds"] = time.perf_counter() - start
            if after_epoch is not None:
                record.update(after_epoch())
            for name, value in record.items():
                self.history.setdefault(phase, {}).setdefault(name, []).append(value)
            bar.set_postfix_str(f"{phase} loss {record['total']:.4g}", refresh=False)
            bar.update(1)

    def pretrain(self, view: DataView, bar: tqdm) -> None:
        """Layer-wise MSE pretraining (``f-500-f``, then ``500-d-500``), then the
        stacked autoencoder on ``L_rec + L_NB`` so the NB heads start trained."""
        m = self.module

        def outer(x, counts, sf, batch, idx):
            return {"rec": losses.reconstruction_loss(x, m.rec(m.hidden(x)))}

        def inner(x, counts, sf, batch, idx):
            a = m.hidden(x).detach()
            a_hat = m.decode_hidden(torch.tanh(m.enc2(a)), batch)
            return {"rec": losses.reconstruction_loss(a, a_hat)}

        def stacked(x, counts, sf, batch, idx):
            out = m(x, batch, sf)
            return {
                "rec": losses.reconstruction_loss(x, m.rec(out["d"])),
                "nb": losses.nb_loss(counts, out["mu"], out["theta"]),
            }

        outer_params = [*m.enc1.parameters(), *m.rec.parameters()]
        inner_params = [*m.enc2.parameters(), *m.dec1.parameters()]
        self.run_epochs(view, "pretrain_outer", "layer_epochs", outer_params, outer, bar)
        self.run_epochs(view, "pretrain_inner", "layer_epochs", inner_params, inner, bar)
        self.run_epochs(view, "pretrain", "pretrain_epochs", m.parameters(), stacked, bar)

    def fit_decoder(self, view: DataView, bar: tqdm) -> None:
        """Train the decoder alone (encoder, codes and clusters fixed) on ``L_NB`` from
        the codes of input thinned by ``Settings.input_dropout``.

        A decoder trained only on the codes of the whole input learns each cell's
        own counts, zeros included, the longer it trains; from a thinned input it
        must predict every count from the cell's other genes, as a denoising
        autoencoder does.
        """
        m, s = self.module, self.settings

        def thinned(x, counts, sf, batch, idx):
            with torch.no_grad():
                h = m.encode(torch.nn.functional.dropout(x, s.input_dropout), batch)
            mu, theta = m.nb_params(m.decode_hidden(h, batch), sf)
            return {"nb": losses.nb_loss(counts, mu, theta)}

        params = [*m.dec1.parameters(), *m.mu.parameters(), *m.theta.parameters()]
        self.run_epochs(view, "decoder", "decoder_epochs", params, thinned, bar)

    def cluster(
        self,
        view: DataView,
        h: torch.Tensor,
        labels: np.ndarray,
        bar: tqdm,
        repartition: Callable[[torch.Tensor], np.ndarray] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimise eq. (11) from the hard starting ``labels`` of the ``(n, d)``
        pretrained codes ``h``; re-estimate the temperature, ``C`` and ``P``
        (eq. 13-14, to stability) and the full-data batch statistics of the mixing
        term after every epoch.

        ``repartition`` (codes -> hard labels), when given, draws the partition
        afresh once, after ``Settings.reestimate_at`` of the epochs (by default the
        last), and fuzzy k-means restarts from it if it has more clusters: on codes
        whose batches have been mixed, types that the pretrained codes blurred
        together (with batch effects) can come apart.

        Returns
        -------
        ``(centres (K, d), memberships (n, K))`` at the end of training.
        """
        self.start_clustering(view, h, labels)
        again = max(1, int(self.settings.reestimate_at * self.settings.epochs))
        epoch = 0

        def update() -> dict[str, float]:
            nonlocal epoch
            epoch += 1
            old = self.state["p"]
            codes = embed(self.module, view, self.device)
            if repartition is not None and epoch == again:
                labels = repartition(codes)
                # only a finer partition is taken: mixing can pull types together
                # as well as apart, and a merged type cannot be recovered
                if distributed.all_max(int(labels.max()) + 1) > self.state["p"].shape[1]:
                    self.set_partition(labels)
            iterations = self.reestimate(codes)
            change = (
                (self.state["p"] - old).abs().sum(dim=1).mean().item() / 2
                if self.state["p"].shape == old.shape
                else 1.0
            )
            return {
                "membership_change": change,
                "fuzzy_iterations": float(iterations),
                "temperature": self.state["tau"],
                "n_clusters": float(self.state["p"].shape[1]),
                **self.mixing_report(),
            }

        self.run_epochs(
            view,
            "cluster",
            "epochs",
            self.clustering_params,
            self.cluster_terms,
            bar,
            update,
            # L_O's gradient, 2 lambda2 w: added inside the fused Adam update, where
            # autograd through the squared norms of all weights took a fifth of a step
            weight_decay=2 * self.settings.lambda2,
        )
        self.temperature = self.state["tau"]
        self.log_weights = self.state["log_weights"]
        return self.state["centres"], self.state["p"]

    def set_partition(self, labels: np.ndarray) -> None:
        """Hard memberships ``(n, K)`` from ``(n,)`` labels, dropping clusters no
        process holds."""
        k = distributed.all_max(int(labels.max()) + 1)
        p = torch.nn.functional.one_hot(
            torch.as_tensor(labels, dtype=torch.long, device=self.device), k
        ).to(self.state_dtype)
        self.state["p"] = p[:, distributed.all_sum(p.sum(dim=0)) > 0]

    def start_clustering(self, view: DataView, h: torch.Tensor, labels: np.ndarray) -> None:
        """Set up the clustering phase on the ``(n, d)`` codes ``h`` of ``view``'s cells,
        starting from hard ``labels`` ``(n,)``: C, P and the mixing statistics."""
        self.state, self.state_dtype = {}, h.dtype
        # the MSE head serves the pretraining alone: it neither trains nor counts in L_O
        self.clustering_params = [
            param for name, param in self.module.named_parameters() if not name.startswith("rec.")
        ]
        self.set_partition(labels)
        self.n_batches = view.n_batches
        self.batch_codes = torch.as_tensor(view.batch_codes, dtype=torch.long, device=self.device)
        n_total = int(distributed.all_sum(torch.tensor(view.n_cells)).item())
        s = self.settings
        # the running statistics follow the codes over the cells one epoch draws
        # (None: all of them)
        cap = s.cells_per_epoch("epochs")
        self.horizon = cap if cap < n_total else None
        self.reestimate(h)

    def reestimate(self, h: torch.Tensor) -> int:
        """Re-estimate, from the codes ``h`` of all cells: the temperature, C and P
        (eq. 13-14) and the exact batch x cluster counts of the mixing term (eq. 10).
        Returns the fuzzy k-means iterations run."""
        s, state = self.settings, self.state
        # the latent scale drifts during training: recalibrate eq. 14's
        # temperature on the current partition each time, or centres collapse
        k = state["p"].shape[1]
        state["tau"] = cluster.calibrate_temperature(
            h, state["p"].argmax(dim=1), k, reduce=distributed.all_sum
        )
        state["centres"], state["p"], state["log_weights"], iterations = cluster.fuzzy_kmeans(
            h, state["p"], state["tau"], s.weighted_memberships, reduce=distributed.all_sum
        )
        type_counts = distributed.all_sum(
            mixing.batch_cluster_counts(state["p"], self.batch_codes, self.n_batches)
        )
        overall = type_counts.sum(dim=1, keepdim=True) / type_counts.sum()
        state["across"] = mixing.BatchMix(type_counts, overall.expand_as(type_counts), self.horizon)
        return iterations

    def mixing_report(self) -> dict[str, float]:
        """Full-data divergence of eq. (10) at the last re-estimation (nats), whether
        or not ``kappa2`` trains on it."""
        return {"mixing_across_nats": self.state["across"].value()}

    def cluster_terms(
        self,
        x: torch.Tensor,
        counts: torch.Tensor,
        sf: torch.Tensor,
        batch: torch.Tensor,
        idx: np.ndarray,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms of eq. (11) on one minibatch (``idx``: its cells' rows).

        The mixing term carries the exact gradient of its full-data divergence
        (:mod:`deepbid.mixing`); the running counts take in this minibatch first.
        ``weights`` (``lambda2 L_O``) is its value alone: :meth:`cluster` adds its
        gradient through Adam's ``weight_decay``.
        """
        m, s, state = self.module, self.settings, self.state
        out = m(x, batch, sf)
        h, c = out["h"], state["centres"]
        terms = {
            "nb": losses.nb_loss(counts, out["mu"], out["theta"]),
            "kmeans": s.lambda1 * losses.adaptive_kmeans(h, c, state["p"][idx]),
            "weights": s.lambda2 * _no_grad(losses.weight_penalty, self.clustering_params),
            "kl_within": s.kappa1 * losses.kl_within_batch(h, batch),
        }
        if s.kappa2 > 0:
            p = cluster.memberships(h, c, state["tau"], state["log_weights"])
            state["across"].update(
                distributed.all_sum(mixing.batch_cluster_counts(p.detach(), batch, self.n_batches))
            )
            terms["kl_mix"] = s.kappa2 * mixing.surrogate(p, batch, state["across"].log_ratio())
        return terms


def _no_grad(function: Callable[..., torch.Tensor], *args: object) -> torch.Tensor:
    with torch.no_grad():
        return function(*args)


def _encoded(
    module: Autoencoder, view: DataView, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.from_numpy(view.batch_codes[idx]).to(device)
    return module.encode(torch.from_numpy(view.inputs(idx)).to(device), batch), batch


@torch.no_grad()
def embed(module: Autoencoder, view: DataView, device: torch.device) -> torch.Tensor:
    """Latent codes ``(n_cells, latent_dim)`` of every cell of ``view``, on ``device``."""
    module.eval()
    parts = [_encoded(module, view, idx, device)[0] for idx in view.minibatches(CHUNK)]
    module.train()
    return torch.cat(parts)


@torch.no_grad()
def denoise(
    module: Autoencoder,
    latent: np.ndarray,
    own: np.ndarray,
    device: torch.device,
    batches: Sequence[int] | None = None,
    size_factor: float = 1.0,
    memberships: np.ndarray | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """NB means ``(n_cells, n_genes)`` decoded from the codes ``latent`` ``(n_cells, d)``.

    Parameters
    ----------
    own
        ``(n_cells,)`` batch codes of the cells.
    batches
        Batch codes to decode every cell with, averaging the means over them;
        ``None`` decodes each cell with its own batch.
    size_factor
        Library size of the output over the training data's median library size.
    memberships, offsets
        ``(n_cells, K)`` and ``(n_batches, K, d)``, with ``batches`` and an aligned
        ``latent``: decoding in batch ``b`` starts from ``latent + memberships @
        offsets[b]``, the cell put where batch ``b``'s cells of its clusters lie, so that
        a cell decoded in its own batch gets back its own code.
    """
    module.eval()
    out = np.empty((latent.shape[0], module.mu.out_features), dtype=np.float32)
    shifts = None if offsets is None else torch.from_numpy(offsets).to(device)
    for start in range(0, latent.shape[0], CHUNK):
        rows = slice(start, start + CHUNK)
        h = torch.from_numpy(latent[rows]).to(device)
        mine = torch.from_numpy(own[rows]).to(device)
        scale = torch.full((h.shape[0],), size_factor, device=device)
        if batches is None:
            mean = module.nb_params(module.decode_hidden(h, mine), scale)[0]
        else:
            p = None if shifts is None else torch.from_numpy(memberships[rows]).to(device)
            mean = sum(
                module.nb_params(
                    module.decode_hidden(
                        h if p is None else h + p @ shifts[b], torch.full_like(mine, b)
                    ),
                    scale,
                )[0]
                for b in batches
            )
            mean = mean / len(batches)
        out[rows] = mean.cpu().numpy()
    module.train()
    return out
