"""Data-parallel training over ``torch.distributed`` (launch with ``torchrun``).

Process ``r`` of ``w`` reads only its own cells of the AnnData (:func:`shard`:
runs of consecutive cells dealt round-robin), so no process holds the whole
matrix; every process selects the same genes. Gradients are averaged
after every backward pass, and every statistic over all cells (cluster
centres, membership sums, the temperature's agreement, k-means sums and
counts) is all-reduced, so all processes hold the same model and centres at
every step. Without an initialised process group every function here is the
single-process identity, so the rest of the package calls them unconditionally.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from .errors import InputError


def active() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def init_from_environment(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), if any.

    Gloo on CPU, NCCL on CUDA (each process on the GPU of its local rank).
    Returns whether a group is now active. Raises :class:`~deepbid.errors.InputError`
    when a process's local rank has no GPU of its own.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return active()
    if device.type == "cuda":
        local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= visible:
            raise InputError(
                f"torchrun started local process {local_rank} on a machine with {visible} "
                f"visible GPU(s); with CUDA each process needs its own GPU: start at most "
                f"{visible} per machine (--nproc-per-node {visible}), or run every process "
                "on the CPU with --device cpu"
            )
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def close(wait: bool = False) -> None:
    """Leave the process group, if one was joined; with ``wait``, once every process
    has come here.

    Waiting keeps a process that is done from tearing down its connections while
    another still works (rank 0 writing results): on gloo that teardown race can
    abort a process, and ``torchrun`` then stops the others. Only wait where every
    process is sure to arrive, not on an error path.
    """
    if dist.is_available() and dist.is_initialized():
        if wait and active():
            dist.barrier()
        dist.destroy_process_group()


#: Longest run of consecutive cells a process owns. A run is one slice read from
#: disk, and dealing many runs round-robin gives every process cells from the whole
#: file, which is often sorted by batch.
RUN_CELLS = 1_000


def shard(n: int, process: int | None = None, world: int | None = None) -> np.ndarray:
    """Sorted indices (about ``n / world``) of the cells of ``n`` that process
    ``process`` of ``world`` owns (default: this process of this group; all ``n``
    without a group).

    The cells are cut into runs of at most :data:`RUN_CELLS` consecutive cells,
    at least 16 runs per process, and process ``r`` owns runs ``r, r + w, ...``.
    """
    process = rank() if process is None else process
    world = world_size() if world is None else world
    length = max(1, min(RUN_CELLS, n // (16 * world)))
    starts = np.arange(0, n, length)[process::world]
    return np.concatenate(
        [np.zeros(0, dtype=np.int64)]
        + [np.arange(s, min(s + length, n), dtype=np.int64) for s in starts]
    )


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over processes (a new tensor; the input is left as is)."""
    if not active():
        return tensor
    total = tensor.to(_collective_device(), copy=True)
    dist.all_reduce(total)
    return total.to(tensor.device)


def _collective_device() -> torch.device:
    """Where collectives run: NCCL reduces only CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Replace the gradients of ``params`` by their mean over processes and
    return the mean of the scalar ``loss``, in one flat all-reduce.

    Carrying the loss along means a NaN on any process is seen by all of them,
    so they stop together instead of waiting on each other.
    """
    if not active():
        return loss
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([loss.detach().reshape(1), *(g.reshape(-1) for g in grads)])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 1
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every process rank 0's parameters."""
    if active():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def gather_rows(local: np.ndarray, rows: np.ndarray, n_total: int) -> np.ndarray:
    """Reassemble ``local`` (``(len(rows), ...)``: the rows ``rows`` of an array of
    ``n_total`` rows, one part per process) into the whole array, on every process."""
    if not active():
        return local
    out = np.empty((n_total, *local.shape[1:]), dtype=local.dtype)
    for part_rows, part in gather_objects((rows, local)):
        out[part_rows] = part
    return out


def raise_together(error: Exception | None) -> None:
    """Raise, on every process, the first ``error`` any process passes.

    Call it where a process may fail on its own cells (a bad value in its shard):
    the others would otherwise wait for it in their next collective forever.
    """
    errors = [e for e in gather_objects(error) if e is not None]
    if errors:
        raise errors[0]


def gather_to(destination: int, obj: object) -> list | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank ``destination``, ``None`` on the
    others (``[obj]`` alone)."""
    if not active():
        return [obj]
    parts = [None] * world_size() if rank() == destination else None
    dist.gather_object(obj, parts, dst=destination)
    return parts


def all_min(value: int) -> int:
    """Smallest ``value`` over processes."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def all_max(value: int) -> int:
    """Largest ``value`` over processes."""
    return -all_min(-value)


def gather_objects(obj: object) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every process (``[obj]`` alone)."""
    if not active():
        return [obj]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process."""
    if not active():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
