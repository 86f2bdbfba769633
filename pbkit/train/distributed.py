"""DistributedDataParallel for the training loop, inside a process that torchrun started.

A :class:`Dist` is what one rank knows: its rank, the world size, its device, and which rank
writes (the one that holds the job: it reports progress and saves the trained model). The loop
(:func:`pbkit.train.loop.fit`) wraps the model with :meth:`Dist.wrap`, shards the training set
with a ``DistributedSampler`` (:func:`shard_loader`), and sums its per-epoch figures over the
ranks (:meth:`Dist.sum`); a recipe's ``batch_size`` is the global batch, split evenly
(:meth:`Dist.local_batch`). Launching the processes is :mod:`pbkit.stages.distributed`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from pbkit.core.errors import PbkitError


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    writer: int  # the rank that reports progress and writes the trained model

    @property
    def is_writer(self) -> bool:
        return self.rank == self.writer

    def local_batch(self, global_batch: int) -> int:
        """This rank's share of the global batch (which must split evenly)."""
        if global_batch % self.world:
            raise PbkitError(
                f"batch_size {global_batch} is the global batch and must split evenly among "
                f"{self.world} processes"
            )
        return global_batch // self.world

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over every rank (float64, on the backend's device)."""
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.cpu()]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model in DistributedDataParallel (parameters and buffers broadcast from rank 0 now,
        gradients averaged over the ranks at every backward pass)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_loader(loader: DataLoader[Any], d: Dist, seed: int, train: bool) -> DataLoader[Any]:
    """``loader``'s dataset and settings, this rank's share: for training a shuffling
    ``DistributedSampler`` (same seed, same global order; ``set_epoch`` reshuffles), for evaluation
    every ``world``-th sample from ``rank`` (no sample counted twice)."""
    ds = loader.dataset
    common: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
        "generator": loader.generator,
    }
    if train:
        sampler = DistributedSampler(
            ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed, drop_last=False
        )
        return DataLoader(ds, sampler=sampler, **common)
    return DataLoader(Subset(ds, range(d.rank, len(ds), d.world)), shuffle=False, **common)


def set_epoch(loader: DataLoader[Any], epoch: int) -> None:
    """A distributed sampler's order for this epoch (a no-op for other loaders)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
