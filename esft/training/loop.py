"""The one training loop for every method: setup, then steps that read top to bottom, with eval, checkpoints and stop.

It trains whatever a method prepared (``esft.methods``: ESFT's split experts, every weight for FFT, peft's
LoRA matrices): the loop sees only ``model`` and ``trainable_parameters()``, so batches, accumulation,
epochs, the validation split, schedule, clipping, checkpoints and resume are the same for all methods.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from esft.config import TrainingConfig, n_train_examples
from esft.constants import METRICS_NAME
from esft.data.batching import batch_indices, collate, collate_packed, padding_tokens, split_validation
from esft.data.tokenize import TokenizedExample
from esft.errors import CheckpointError, ConfigError, TrainingCancelled
from esft.models.families import PACKING_EXACT
from esft.models.packed_attention import packed_attention
from esft.parallel.data_parallel import DataParallelPolicy, all_reduce_sum, broadcast_flag, is_main, shard, world
from esft.training.checkpoint import TrainerState, latest_checkpoint
from esft.training.loss import answer_loss, n_loss_tokens
from esft.training.optim import MasterWeights, build_optimizer, count_parameters, lr_at, state_bytes
from esft.training.progress import ProgressCallback, ProgressEvent, StopCallback


class TrainableModel(Protocol):
    """What the loop trains: a method's model (``esft.methods``: ``ESFTModel``, ``FFTModel``, ``LoRAModel``)."""

    model: nn.Module

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters that train, by a stable name (checkpoints key optimizer state by it)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON naming what trains; a checkpoint written under another description is not resumed."""
        ...


@dataclass
class TrainResult:
    """Outcome of ``train``: the trained method model and what happened."""

    prepared: TrainableModel
    steps: int
    trained_tokens: int
    final_loss: float | None
    val_loss: float | None
    report: dict[str, Any] = field(default_factory=dict)


def held_out(n_examples: int, config: TrainingConfig, *, has_validation_data: bool = False) -> tuple[int, int]:
    """``(n_train, n_validation)`` after ``config.validation_split`` (no split when validation data is given).

    >>> TrainingConfig(batch_size=4, n_epochs=2).total_steps(held_out(10, TrainingConfig(validation_split=0.2))[0])
    4
    """
    if has_validation_data:
        return n_examples, 0
    n_train = n_train_examples(n_examples, config.validation_split)
    return n_train, n_examples - n_train


def _split(train_data: Sequence, val_data: Sequence, config: TrainingConfig) -> tuple[list, list]:
    """Hold out ``config.validation_split`` of ``train_data`` for validation when no ``val_data`` is given."""
    if val_data or config.validation_split <= 0 or len(train_data) < 2:
        return list(train_data), list(val_data)
    train_idx, val_idx = split_validation(len(train_data), config.validation_split, config.seed)
    return [train_data[i] for i in train_idx], [train_data[i] for i in val_idx]


def _micro_batches(lengths: list[int], config: TrainingConfig, state: TrainerState) -> Iterator[tuple]:
    """Yield ``(epoch, next_position, indices)`` from the saved position on, epoch after epoch."""
    epoch, start = state.epoch, state.batch_in_epoch
    while True:
        plan = batch_indices(lengths, config.batch_size, seed=config.seed, epoch=epoch)
        for pos in range(start, len(plan)):
            nxt = (epoch, pos + 1) if pos + 1 < len(plan) else (epoch + 1, 0)
            yield nxt, plan[pos]
        epoch, start = epoch + 1, 0


@torch.no_grad()  # not inference_mode: FSDP2 (expert parallelism) tracks versions of its gathered weights
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

    prepared: TrainableModel
    masters: MasterWeights
    optimizer: torch.optim.Optimizer
    state: TrainerState
    total: int
    run_config: dict[str, Any]
    device: torch.device
    pack: bool  # micro-batches packed into one row (config.packing, on a family where that is exact)
    parallel: Any  # gradient reduction, clipping and checkpoints across ranks (``DataParallelPolicy``)
    padding_saved: int = 0  # pad tokens packing avoided in this process


def _setup(prepared: TrainableModel, train_data, config, out_dir: Path | None, resume: bool, pad_id: int) -> _Run:
    if not train_data:
        raise ConfigError("no training examples left after tokenization", param="training_file")
    masters = MasterWeights(prepared.trainable_parameters())
    if not masters.masters:
        raise ConfigError("the method selects nothing to train (empty expert config?)", param="expert_config")
    optimizer = build_optimizer(masters.masters, config)
    parallel = getattr(prepared, "parallel", None) or DataParallelPolicy()
    run_config = parallel.run_config({"training": config.to_dict(), "method": prepared.describe(),
                                      "n_examples": len(train_data), "pad_id": pad_id, "world_size": world()[1]})
    state, ckpt = TrainerState(), latest_checkpoint(out_dir) if out_dir is not None else None
    if resume and out_dir is None:
        raise CheckpointError("resume=True needs the `out_dir` that holds the checkpoints", param="resume")
    if ckpt is not None and not resume:
        raise CheckpointError(f"{out_dir} already holds checkpoints of an earlier run; pass resume=True "
                              "(--resume) to continue it, or choose a new output directory", param="resume")
    if ckpt is not None:
        state = parallel.load_checkpoint(ckpt, masters.masters, optimizer, run_config)
        masters.masters_to_model()
        parallel.after_update()
    else:
        random.seed(config.seed)
        torch.manual_seed(config.seed)
    total = config.total_steps(len(train_data))
    pack = config.packing and getattr(prepared.model.config, "model_type", None) in PACKING_EXACT
    device = next(prepared.model.parameters()).device
    return _Run(prepared, masters, optimizer, state, total, run_config, device, pack, parallel)


@contextmanager
def _determinism(enabled: bool) -> Iterator[None]:
    """With ``enabled``, torch's deterministic algorithms and one CPU thread for the block; restored after it."""
    if not enabled:
        yield
        return
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)


@contextmanager
def _activation_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """With ``enabled``, each decoder layer's activations are recomputed in the backward pass for the block."""
    if not enabled:
        yield
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"`activation_checkpointing`: {type(model).__name__} does not support it; leave it off",
                          param="activation_checkpointing")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def _optimizer_step(run: _Run, config: TrainingConfig) -> float | None:
    run.masters.grads_to_masters()
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = None
    if config.max_grad_norm is not None and params:
        grad_norm = run.parallel.clip_grad_norm(params, config.max_grad_norm)
    lr = lr_at(run.state.step, run.total, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.masters.masters_to_model()
    run.parallel.after_update()
    return grad_norm


def _accumulate(run: _Run, window: list, train_data, pad_id: int) -> tuple[float, int]:
    """Forward/backward over one step's micro-batches (this rank's share of them).

    The loss is normalised by the label tokens of the whole window on all ranks, so summing gradients
    over micro-batches and ranks gives exactly the gradient of one big batch.
    """
    samples = [[train_data[i] for i in idx] for idx in window]
    batches = [collate_packed(b, pad_id) if run.pack else collate(b, pad_id) for b in samples]
    if run.pack:
        run.padding_saved += sum(padding_tokens(b) for b in samples)
    n_targets = max(1, sum(n_loss_tokens(b) for b in batches))
    loss_total, tokens = 0.0, 0
    sizes = [sum(len(ex.input_ids) for ex in batch_samples) for batch_samples in samples]  # real tokens
    with packed_attention(run.prepared.model) if run.pack else nullcontext():  # backward may recompute attention
        for batch, n_tokens in shard(list(zip(batches, sizes, strict=True))):
            batch = {k: v.to(run.device) for k, v in batch.items()}
            loss = answer_loss(run.prepared.model, batch, reduction="sum") / n_targets
            loss.backward()
            loss_total += float(loss.detach())
            tokens += n_tokens
    run.parallel.reduce_gradients(run.masters.model_params)
    loss_total, tokens = all_reduce_sum(loss_total, tokens)
    return loss_total, int(tokens)


def train(
    prepared: TrainableModel,
    train_data: Sequence[TokenizedExample],
    config: TrainingConfig | None = None,
    *,
    pad_token_id: int,
    out_dir: str | Path | None = None,
    val_data: Sequence[TokenizedExample] = (),
    resume: bool = False,
    progress: ProgressCallback | None = None,
    should_stop: StopCallback | None = None,
) -> TrainResult:
    """Train a method's model (``esft.get_esft_model``, ``get_fft_model``, ``get_lora_model``) in place.

    Without ``out_dir`` it trains in memory; with it, checkpoints (every ``save_every`` steps and at the
    end) and ``metrics.jsonl`` go there, and ``resume=True`` continues from the newest checkpoint. A resumed
    run equals an uninterrupted one bit for bit on one CPU thread or with ``config.deterministic``; on more
    threads parallel reductions make two runs differ by about 1e-7. ``deterministic=True`` runs on one
    thread with torch's deterministic algorithms (slower on multi-core CPUs and on GPUs; kernels without
    a deterministic version raise).

    Args:
        prepared: the method's model; its ``trainable_parameters()`` are what AdamW steps.
        train_data: tokenized examples; ``labels`` mark the tokens that carry loss. Without ``val_data``,
            ``config.validation_split`` of them is held out for validation first.
        config: hyperparameters; ``seed`` fixes data order and initial RNG (default ``TrainingConfig()``).
        pad_token_id: padding id for batches.
        out_dir: run directory for checkpoints and metrics (None: nothing is written).
        val_data: held-out examples for validation loss every ``eval_every`` steps and at the end.
        resume: continue from the newest checkpoint in ``out_dir``.
        progress: receives a ``ProgressEvent`` after every optimizer step and evaluation.
        should_stop: polled after every step; when it returns True a checkpoint is saved (with ``out_dir``)
            and ``TrainingCancelled`` is raised.

    Returns:
        ``TrainResult`` holding the trained method model (ESFT's still split) and the run's numbers.

    >>> from esft import get_esft_model, train
    >>> esft_model = get_esft_model(model, "experts.json")  # doctest: +SKIP
    >>> result = train(esft_model, data, TrainingConfig(max_steps=2), pad_token_id=2)  # doctest: +SKIP
    """
    config = config or TrainingConfig()
    train_data, val_data = _split(train_data, val_data, config)
    out_dir = Path(out_dir) if out_dir is not None else None
    with _determinism(config.deterministic), _activation_checkpointing(
        prepared.model, config.activation_checkpointing
    ):
        run = _setup(prepared, train_data, config, out_dir, resume, pad_token_id)
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)  # only once the run is known to be valid
        return _run_steps(run, train_data, val_data, config, pad_token_id, out_dir, progress, should_stop)


def _run_steps(run: _Run, train_data, val_data, config: TrainingConfig, pad_token_id: int, out_dir: Path | None,
               progress: ProgressCallback | None, should_stop: StopCallback | None) -> TrainResult:
    """The loop itself: step, evaluate when due, checkpoint when due, report; stop when asked."""
    batches = _micro_batches([len(ex.input_ids) for ex in train_data], config, run.state)
    metrics = _MetricsLog(out_dir / METRICS_NAME, run.state.step) if out_dir is not None else None
    clock = _Clock(run.state)
    last: ProgressEvent | None = None
    val_loss = None
    run.prepared.model.train()
    while run.state.step < run.total:
        event = _train_step(run, batches, train_data, config, pad_token_id, clock)
        if val_data and _due(event.step, run.total, config.eval_every):
            val_loss = event.val_loss = evaluate(run.prepared.model, val_data, config.batch_size, pad_token_id)
        stop = broadcast_flag(bool(should_stop and should_stop()))
        if out_dir is not None and (stop or _due(event.step, run.total, config.save_every)):
            event.checkpoint = _save(out_dir, run)
        if is_main():
            if metrics is not None:
                metrics.write(event)
            if progress:
                progress(event)
        if stop:
            raise TrainingCancelled(f"training stopped at step {event.step}; resume from {event.checkpoint}")
        last = event
    run.prepared.model.eval()
    loss = last.loss if last else None
    counts = run.parallel.count_parameters(count_parameters(run.prepared.model, run.masters.model_params))
    report = {"steps": run.state.step, "total_steps": run.total, "trained_tokens": run.state.trained_tokens,
              "final_loss": loss, "val_loss": val_loss, "n_train": len(train_data), "n_validation": len(val_data),
              "parameters": counts,
              "optimizer_state_bytes": state_bytes(run.optimizer),
              "packed": run.pack, "padding_tokens_saved": run.padding_saved}
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
    path = run.parallel.save_checkpoint(out_dir, run.state, run.masters.masters, run.optimizer, run.run_config)
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
