"""The training loop the baselines share: the same batches, optimizer, schedule and clipping as ESFT's.

It mirrors ``esft.training.loop`` (length-grouped batches from ``batch_indices``, AdamW with betas
(0.9, 0.95) over trainable parameters only via ``build_optimizer``, ``lr_at`` schedule, gradient
clipping), without checkpoints, so differences between methods come from what trains.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from esft.config import TrainingConfig
from esft.data.batching import batch_indices, collate
from esft.data.tokenize import TokenizedExample
from esft.training.loss import answer_loss
from esft.training.optim import build_optimizer, lr_at, state_bytes


def _batches(lengths: list[int], config: TrainingConfig) -> Iterator[list[int]]:
    epoch = 0
    while True:
        yield from batch_indices(lengths, config.batch_size, seed=config.seed, epoch=epoch)
        epoch += 1


@dataclass
class LoopResult:
    """What the loop did: steps, final loss, seconds and AdamW state bytes (as ``esft.training`` counts)."""

    steps: int
    final_loss: float
    seconds: float
    optimizer_state_bytes: int


def train_parameters(
    model: nn.Module, train_data: Sequence[TokenizedExample], config: TrainingConfig, *, pad_token_id: int
) -> LoopResult:
    """Train every parameter of ``model`` with ``requires_grad`` for ``config.max_steps`` steps.

    Args:
        model: the model, with exactly the parameters to train marked ``requires_grad``.
        train_data: tokenized examples (labels mark the answer tokens).
        config: ``max_steps``, ``batch_size``, ``grad_accum_steps`` (1 only), learning rate and schedule.
        pad_token_id: padding id for batches.
    """
    torch.manual_seed(config.seed)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(trainable, config)
    total = config.max_steps or len(train_data) // config.batch_size
    batches = _batches([len(ex.input_ids) for ex in train_data], config)
    model.train()
    start, loss = time.perf_counter(), torch.tensor(0.0)
    for step in range(total):
        batch = collate([train_data[i] for i in next(batches)], pad_token_id)
        loss = answer_loss(model, batch)
        loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    seconds = time.perf_counter() - start
    return LoopResult(total, float(loss.detach()), seconds, state_bytes(optimizer))
