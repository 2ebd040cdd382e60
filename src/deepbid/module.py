"""The network: a tanh autoencoder ``f-500-d-500-f`` with NB mean and dispersion heads."""

from __future__ import annotations

import torch
from torch import nn

#: Bounds on the log NB mean and log dispersion, so that ``exp`` never
#: overflows and a gene is never given zero variance.
LOG_MU_MAX = 15.0
LOG_THETA_RANGE = (-10.0, 10.0)


class Autoencoder(nn.Module):
    """DeepBID's autoencoder.

    Parameters
    ----------
    n_genes
        Input width ``f``.
    n_batches
        Number of training batches: the decoder's one-hot input when ``conditional`` is
        true (:meth:`add_batches` adds batches, each with an encoder shift).
    hidden_dim
        Width of the outer hidden layers (paper: 500).
    latent_dim
        Width ``d`` of the latent code ``h`` (paper: 300; deepbid's default: 64).
    conditional
        Give the decoder the one-hot batch of each cell, so the latent code
        need not carry batch to reconstruct it.
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int,
        hidden_dim: int = 500,
        latent_dim: int = 64,
        conditional: bool = True,
    ) -> None:
        super().__init__()
        self.n_batches = n_batches
        self.conditional = conditional
        self.enc1 = nn.Linear(n_genes, hidden_dim)
        self.enc2 = nn.Linear(hidden_dim, latent_dim)
        self.dec1 = nn.Linear(latent_dim + (n_batches if conditional else 0), hidden_dim)
        self.rec = nn.Linear(hidden_dim, n_genes)
        self.mu = nn.Linear(hidden_dim, n_genes)
        self.theta = nn.Linear(hidden_dim, n_genes)
        #: ``(n_batches, hidden_dim)`` shift of the first encoder layer per batch, added
        #: by :meth:`add_batches` for batches mapped onto a trained model (zero for
        #: the training batches); ``None`` for a model fitted on all its batches.
        self.batch_shift: nn.Parameter | None = None

    def add_batches(self, n_new: int) -> None:
        """Make room for ``n_new`` batches not seen in training.

        Each new batch gets a decoder input column, started at the mean of the
        training batches' columns (the average batch), and an encoder shift,
        started at zero; training them alone adapts the model to the new batches
        and leaves what it does for the training batches unchanged.
        """
        old = self.n_batches
        self.n_batches = old + n_new
        hidden_dim = self.enc1.out_features
        shift = torch.zeros(self.n_batches, hidden_dim, device=self.enc1.weight.device)
        if self.batch_shift is not None:
            shift[:old] = self.batch_shift.detach()
        self.batch_shift = nn.Parameter(shift)
        if self.conditional:
            latent_dim = self.dec1.in_features - old
            dec1 = nn.Linear(latent_dim + self.n_batches, hidden_dim).to(self.dec1.weight.device)
            with torch.no_grad():
                dec1.bias.copy_(self.dec1.bias)
                dec1.weight[:, : latent_dim + old] = self.dec1.weight
                batch_columns = self.dec1.weight[:, latent_dim:]
                dec1.weight[:, latent_dim + old :] = batch_columns.mean(dim=1, keepdim=True)
            self.dec1 = dec1

    def hidden(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """First encoder layer, ``(n, f) -> (n, hidden_dim)``; ``batch`` ``(n,)`` codes
        are needed only once :meth:`add_batches` has run."""
        a = self.enc1(x)
        if self.batch_shift is not None:
            a = a + self.batch_shift[batch]
        return torch.tanh(a)

    def encode(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Latent code ``h``, ``(n, f) -> (n, latent_dim)``."""
        return torch.tanh(self.enc2(self.hidden(x, batch)))

    def decode_hidden(self, h: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Last decoder hidden layer ``D``, ``(n, latent_dim) -> (n, hidden_dim)``."""
        if self.conditional:
            h = torch.cat([h, nn.functional.one_hot(batch, self.n_batches).to(h.dtype)], dim=1)
        return torch.tanh(self.dec1(h))

    def nb_params(
        self, d: torch.Tensor, size_factors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """NB mean (scaled by the ``(n,)`` size factors) and dispersion, each ``(n, f)``."""
        mu = torch.exp(self.mu(d).clamp(max=LOG_MU_MAX)) * size_factors[:, None]
        theta = torch.exp(self.theta(d).clamp(*LOG_THETA_RANGE))
        return mu, theta

    def forward(
        self, x: torch.Tensor, batch: torch.Tensor, size_factors: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Encode and decode ``(n, f)`` log-normalised input.

        Returns
        -------
        ``h`` ``(n, d)``, the last decoder hidden layer ``D`` ``(n, hidden_dim)``,
        ``mu`` ``(n, f)``, ``theta`` ``(n, f)``. The MSE reconstruction
        ``self.rec(D)`` is left to the caller: the clustering phase does not use
        it, and it costs as much as an NB head.
        """
        h = self.encode(x, batch)
        d = self.decode_hidden(h, batch)
        mu, theta = self.nb_params(d, size_factors)
        return {"h": h, "d": d, "mu": mu, "theta": theta}
