"""The ESFT training loop: setup, then steps that read top to bottom, with eval, checkpoints and stop.

Only the selected experts (and the variants' shared/non-expert tensors) train; see ``freeze.py``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esft.config import TrainingConfig
from esft.constants import METRICS_NAME
from esft.data.batching import batch_indices, collate
from esft.data.tokenize import TokenizedExample
from esft.errors import CheckpointError, ConfigError, TrainingCancelled
from esft.expert_config import ExpertConfig
from esft.parallel.data_parallel import all_reduce_grads, all_reduce_sum, barrier, broadcast_flag, is_main, shard, world
from esft.training.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from esft.training.freeze import ESFTModel, prepare_model
from esft.training.loss import answer_loss, n_loss_tokens
from esft.training.optim import MasterWeights, build_optimizer, count_parameters, lr_at, state_bytes
from esft.training.progress import ProgressCallback, ProgressEvent, StopCallback


@dataclass
class TrainResult:
    """Outcome of ``train``: the prepared (split) model and what happened."""

    prepared: ESFTModel
    steps: int
    trained_tokens: int
    final_loss: float | None
    val_loss: float | None
    report: dict[str, Any] = field(default_factory=dict)


def total_steps(n_examples: int, config: TrainingConfig) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``n_epochs`` (default 1) over the data."""
    if config.max_steps is not None:
        return config.max_steps
    batches = math.ceil(n_examples / config.batch_size)
    return max(1, math.ceil(batches / config.grad_accum_steps) * (config.n_epochs or 1))


def _micro_batches(lengths: list[int], config: TrainingConfig, state: TrainerState) -> Iterator[tuple]:
    """Yield ``(epoch, next_position, indices)`` from the saved position on, epoch after epoch."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        plan = batch_indices(lengths, config.batch_size, seed=config.seed, epoch=epoch)
        for pos in range(start, len(plan)):
            nxt = (epoch, pos + 1) if pos + 1 < len(plan) else (epoch + 1, 0)
            yield nxt, plan[pos]
        epoch, start = epoch + 1, 0


@torch.inference_mode()
def evaluate(model: nn.Module, data: Sequence[TokenizedExample], batch_size: int, pad_id: int) -> float | None:
    """Mean per-token validation loss over ``data`` (None when there is no data)."""
    if not data:
        return None
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(data[i : i + batch_size]), pad_id).items()}
        total += float(answer_loss(model, batch, reduction="sum"))
        count += n_loss_tokens(batch)
    model.train(was_training)
    return total / max(count, 1)


@dataclass
class _Run:
    """Everything ``train`` sets up before the first step."""

    prepared: ESFTModel
    masters: MasterWeights
    optimizer: torch.optim.Optimizer
    state: TrainerState
    total: int
    run_config: dict[str, Any]
    device: torch.device


def _setup(model, train_data, expert_config, config, out_dir: Path, resume: bool, pad_id: int) -> _Run:
    if not train_data:
        raise ConfigError("no training examples left after tokenization", param="training_file")
    prepared = prepare_model(model, expert_config)
    masters = MasterWeights(prepared.trainable_parameters())
    if not masters.masters:
        raise ConfigError("the expert config selects nothing to train", param="expert_config")
    optimizer = build_optimizer(masters.masters, config)
    run_config = {"training": config.to_dict(), "experts": expert_config.to_dict()["experts"],
                  "n_examples": len(train_data), "pad_id": pad_id, "world_size": world()[1]}
    state, ckpt = TrainerState(), latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise CheckpointError(f"{out_dir} already holds checkpoints of an earlier run; pass resume=True "
                              "(--resume) to continue it, or choose a new output directory", param="resume")
    if ckpt is not None:
        state = load_checkpoint(ckpt, masters.masters, optimizer, run_config)
        masters.masters_to_model()
    else:
        random.seed(config.seed)
        torch.manual_seed(config.seed)
    total = total_steps(len(train_data), config)
    return _Run(prepared, masters, optimizer, state, total, run_config, next(model.parameters()).device)


def _optimizer_step(run: _Run, config: TrainingConfig) -> float | None:
    run.masters.grads_to_masters()
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = None
    if config.max_grad_norm is not None and params:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
    lr = lr_at(run.state.step, run.total, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.masters.masters_to_model()
    return grad_norm


def _accumulate(run: _Run, window: list, train_data, pad_id: int) -> tuple[float, int]:
    """Forward/backward over one step's micro-batches (this rank's share of them).

    The loss is normalised by the label tokens of the whole window on all ranks, so summing gradients
    over micro-batches and ranks gives exactly the gradient of one big batch.
    """
    batches = [collate([train_data[i] for i in idx], pad_id) for idx in window]
    n_targets = max(1, sum(n_loss_tokens(b) for b in batches))
    loss_total, tokens = 0.0, 0
    for batch in shard(batches):
        batch = {k: v.to(run.device) for k, v in batch.items()}
        loss = answer_loss(run.prepared.model, batch, reduction="sum") / n_targets
        loss.backward()
        loss_total += float(loss.detach())
        tokens += int(batch["attention_mask"].sum())
    all_reduce_grads(run.masters.model_params.values())
    loss_total, tokens = all_reduce_sum(loss_total, tokens)
    return loss_total, int(tokens)


def train(
    model: nn.Module,
    train_data: Sequence[TokenizedExample],
    expert_config: ExpertConfig,
    config: TrainingConfig,
    out_dir: str | Path,
    *,
    pad_token_id: int,
    val_data: Sequence[TokenizedExample] = (),
    resume: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> TrainResult:
    """Train the experts ``expert_config`` selects; checkpoints and ``metrics.jsonl`` go to ``out_dir``.

    Args:
        model: the base model, modified in place (selected experts split out; see ``ESFTModel.fold``).
        train_data: tokenized examples; ``labels`` mark the tokens that carry loss.
        expert_config: experts to train, plus the shared/non-expert variant flags.
        config: hyperparameters; ``seed`` fixes data order and initial RNG.
        out_dir: run directory; ``resume=True`` continues from its newest checkpoint bit-identically.
        pad_token_id: padding id for batches.
        val_data: held-out examples for validation loss every ``eval_every`` steps and at the end.
        progress: receives a ``ProgressEvent`` after every optimizer step and evaluation.
        should_stop: polled after every step; when it returns True a checkpoint is saved and
            ``TrainingCancelled`` is raised.

    Returns:
        ``TrainResult`` holding the trained (still split) model and the run's numbers.
    """
    out_dir = Path(out_dir)
    run = _setup(model, train_data, expert_config, config, out_dir, resume, pad_token_id)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the run is known to be valid
    batches = _micro_batches([len(ex.input_ids) for ex in train_data], config, run.state)
    metrics = _MetricsLog(out_dir / METRICS_NAME, run.state.step)
    clock = _Clock(run.state)
    last: ProgressEvent | None = None
    val_loss = None
    run.prepared.model.train()
    while run.state.step < run.total:
        event = _train_step(run, batches, train_data, config, pad_token_id, clock)
        if val_data and _due(event.step, run.total, config.eval_every):
            val_loss = event.val_loss = evaluate(run.prepared.model, val_data, config.batch_size, pad_token_id)
        stop = broadcast_flag(bool(should_stop and should_stop()))
        if stop or _due(event.step, run.total, config.save_every):
            event.checkpoint = _save(out_dir, run)
        if is_main():
            metrics.write(event)
            if progress:
                progress(event)
        if stop:
            raise TrainingCancelled(f"training stopped at step {event.step}; resume from {event.checkpoint}")
        last = event
    loss = last.loss if last else None
    report = {"steps": run.state.step, "total_steps": run.total, "trained_tokens": run.state.trained_tokens,
              "final_loss": loss, "val_loss": val_loss,
              "parameters": count_parameters(run.prepared.model, run.masters.model_params),
              "optimizer_state_bytes": state_bytes(run.optimizer)}
    return TrainResult(run.prepared, run.state.step, run.state.trained_tokens, loss, val_loss, report)


def _due(step: int, total: int, every: int | None) -> bool:
    """Eval and checkpoints happen every ``every`` steps and always after the last one."""
    return step == total or bool(every and step % every == 0)


class _Clock:
    """Throughput and ETA since this process started (or resumed) training."""

    def __init__(self, state: TrainerState):
        self.start, self.step, self.tokens = time.perf_counter(), state.step, state.trained_tokens

    def rates(self, state: TrainerState, total: int) -> tuple[float, float]:
        elapsed = time.perf_counter() - self.start
        tokens_per_s = (state.trained_tokens - self.tokens) / max(elapsed, 1e-9)
        eta_s = elapsed / max(state.step - self.step, 1) * (total - state.step)
        return tokens_per_s, eta_s


def _train_step(run: _Run, batches: Iterator, train_data, config: TrainingConfig, pad_id: int,
                clock: _Clock) -> ProgressEvent:
    """One optimizer step over ``grad_accum_steps`` micro-batches per rank; returns its progress event."""
    window = [next(batches) for _ in range(config.grad_accum_steps * world()[1])]
    loss, tokens = _accumulate(run, [idx for _, idx in window], train_data, pad_id)
    grad_norm = _optimizer_step(run, config)
    epoch, pos = window[-1][0]
    run.state = TrainerState(run.state.step + 1, epoch, pos, run.state.trained_tokens + tokens)
    tokens_per_s, eta_s = clock.rates(run.state, run.total)
    return ProgressEvent("training", run.state.step, run.total, loss=loss,
                         lr=lr_at(run.state.step - 1, run.total, config), tokens_per_s=tokens_per_s, eta_s=eta_s,
                         trained_tokens=run.state.trained_tokens, grad_norm=grad_norm)


def _save(out_dir: Path, run: _Run) -> str:
    """Rank 0 writes the checkpoint (every rank holds the same trained tensors); the others wait for it."""
    path = out_dir / "checkpoints" / f"step-{run.state.step}"
    if is_main():
        path = save_checkpoint(out_dir, run.state, run.masters.masters, run.optimizer, run.run_config)
    barrier()
    return str(path)


class _MetricsLog:
    """Appends one JSON line per step; on resume, drops lines past the checkpoint being resumed."""

    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        if path.exists() and is_main():
            keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resumed_step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, event: ProgressEvent) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
