"""AdamW over exactly the parameters that train, fp32 master weights, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from esft.config import TrainingConfig


class MasterWeights:
    """fp32 master copies of low-precision trainable parameters (bf16 updates at lr 1e-5 round away).

    The optimizer steps the masters; ``grads_to_masters`` before the step and ``masters_to_model``
    after it move values between the two. fp32 parameters are used directly, without a copy.
    """

    def __init__(self, params: dict[str, nn.Parameter]):
        self.model_params = params
        self.masters: dict[str, nn.Parameter] = {}
        for name, p in params.items():
            self.masters[name] = p if p.dtype == torch.float32 else nn.Parameter(p.detach().float().clone())

    def grads_to_masters(self) -> None:
        for name, p in self.model_params.items():
            master = self.masters[name]
            if master is not p:
                master.grad = None if p.grad is None else p.grad.float()
                p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        for name, p in self.model_params.items():
            master = self.masters[name]
            if master is not p:
                p.copy_(master.to(p.dtype))


def build_optimizer(masters: dict[str, nn.Parameter], config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over the trainable masters only; no weight decay on 1-D tensors (biases, norms).

    Frozen parameters never reach the optimizer, so they get no state and weight decay cannot move them.
    """
    named = sorted(masters.items())
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95), eps=1e-8, foreach=False)


def lr_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine/linear/constant."""
    warmup = int(round(config.warmup_ratio * total_steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    if config.lr_scheduler == "constant":
        return config.learning_rate
    progress = (step - warmup) / max(1, total_steps - warmup)
    if config.lr_scheduler == "linear":
        return config.learning_rate * max(0.0, 1.0 - progress)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by gradients and optimizer state of every parameter the optimizer steps."""
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                total += p.grad.numel() * p.grad.element_size()
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value):
                    total += value.numel() * value.element_size()
    return total


def count_parameters(model: nn.Module, trainable: dict[str, nn.Parameter]) -> dict[str, int]:
    """Trainable vs total parameter counts, counting each expert row once (split twins excluded)."""
    total = sum(p.numel() for name, p in model.named_parameters() if ".trainable." not in name)
    n_trainable = sum(p.numel() for p in trainable.values())
    return {"trainable": n_trainable, "total": total}
