"""Data parallelism for ESFT: every rank holds the frozen model, ranks split each step's micro-batches,
and only the selected experts' gradients are all-reduced (a few percent of the model's bytes).

Works with any backend (``gloo`` on CPU, ``nccl`` on GPUs) once the caller has initialised the process
group, e.g. by launching ``esft train`` under ``torchrun``. Without a process group everything here is a
no-op, so the single-process loop is the same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, or ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of a step's micro-batches (every rank sees the same global window)."""
    rank, size = world()
    return list(items[rank::size])


def all_reduce_grads(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks. Losses are pre-divided by the global target count, so a sum is the mean."""
    if world()[1] == 1:
        return
    for p in params:
        if p.grad is None:  # every rank must join every collective, in the same order
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def all_reduce_sum(*values: float) -> list[float]:
    """Sum scalars over ranks (loss, token counts)."""
    if world()[1] == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision (e.g. "stop now"), the same on every rank."""
    if world()[1] == 1:
        return flag
    tensor = torch.tensor([int(flag)])
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


class DataParallelPolicy:
    """What the loop does with gradients and checkpoints when every rank holds every trained tensor.

    ``esft.parallel.expert_checkpoint.ExpertParallelPolicy`` is the same interface under expert parallelism; a
    prepared model names its policy in a ``parallel`` attribute, and this one is the default.
    """

    def reduce_gradients(self, params: dict[str, torch.nn.Parameter]) -> None:
        all_reduce_grads(params.values())

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def after_update(self) -> None:
        """Nothing to do: the model reads its trained tensors directly."""

    def run_config(self, run_config: dict) -> dict:
        return run_config

    def count_parameters(self, counts: dict[str, int]) -> dict[str, int]:
        """This rank's trainable/total counts are the run's (every rank trains the same tensors)."""
        return counts

    def save_checkpoint(self, out_dir, state, masters, optimizer, run_config):
        """Rank 0 writes the checkpoint (every rank holds the same trained tensors); the others wait for it."""
        from esft.training.checkpoint import save_checkpoint

        path = out_dir / "checkpoints" / f"step-{state.step}"
        if is_main():
            path = save_checkpoint(out_dir, state, masters, optimizer, run_config)
        barrier()
        return path

    def load_checkpoint(self, path, masters, optimizer, run_config):
        from esft.training.checkpoint import load_checkpoint

        return load_checkpoint(path, masters, optimizer, run_config)
