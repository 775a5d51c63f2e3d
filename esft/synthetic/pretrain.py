"""Pretrains the toy base model: a DeepSeek-V2-family MoE trained from scratch on the synthetic task mixture.

A fixed step count (not a wall-clock budget) makes the model reproducible; the output directory is a
cache: a directory whose ``pretrain_report.json`` records the same config is reused as it is.
``esft toy-model OUT_DIR --pretrain`` runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esft.data.batching import collate
from esft.evaluation import exact_match, tokenize_rows
from esft.generation import stop_token_ids
from esft.io import write_json_atomic
from esft.models.discovery import find_moe_layers
from esft.models.toy import toy_model
from esft.synthetic.chartok import build_char_tokenizer
from esft.synthetic.tasks import general_eval_rows, pretraining_mixture
from esft.training.loss import answer_loss

REPORT_NAME = "pretrain_report.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Size of the toy MoE and its pretraining run (defaults: ~3.7M parameters, ~10-15 min on 2 cores)."""

    layers: int = 4
    hidden: int = 128
    experts: int = 32
    top_k: int = 4
    shared_experts: int = 2
    n_group: int = 4  # group-limited routing as in DeepSeek-V2: experts in n_group groups ...
    topk_group: int = 2  # ... and each token may pick only from its best topk_group groups
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    balance_coef: float = 0.01  # expert-level load-balance loss, as DeepSeek-V2 (and Switch) use
    seed: int = 0

    def key(self) -> str:
        """A short hash identifying this config (the cache key)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_model(config: PretrainConfig) -> nn.Module:
    """The randomly initialised toy MoE of ``config`` (fp32, train mode)."""
    model = toy_model(
        "deepseek_v2", seed=config.seed, layers=config.layers, experts=config.experts, top_k=config.top_k,
        hidden=config.hidden, vocab_size=len(build_char_tokenizer()), shared_experts=config.shared_experts,
        topk_method="group_limited_greedy" if config.n_group > 1 else "greedy",
        n_group=config.n_group, topk_group=config.topk_group,
    )  # fmt: skip
    model.set_experts_implementation("grouped_mm")
    return model.train()


class BalanceLoss:
    """Collects the router logits of every MoE layer during a forward pass and turns them into the
    Switch/DeepSeek expert-level balance loss ``E * sum_i f_i * P_i`` (1.0 when perfectly balanced)."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None  # [B*T] bool: real (not padding) tokens
        self.terms: list[torch.Tensor] = []

    def record(self, logits: torch.Tensor, expert_ids: torch.Tensor) -> None:
        """Add one layer's term from router ``logits [N, E]`` and chosen ``expert_ids [N, K]``."""
        assert self.mask is not None
        logits, expert_ids = logits[self.mask], expert_ids[self.mask]
        num_experts = logits.shape[-1]
        probs = logits.float().softmax(dim=-1).mean(dim=0)  # [E] mean router probability
        counts = torch.bincount(expert_ids.reshape(-1), minlength=num_experts).float()
        share = counts / counts.sum()  # [E] f_i: share of the top-k choices
        self.terms.append(num_experts * (share * probs).sum())

    def pop(self) -> torch.Tensor:
        """The mean balance loss over the layers of the last forward pass (then cleared)."""
        loss = torch.stack(self.terms).mean()
        self.terms = []
        return loss


@contextmanager
def balance_hooks(model: nn.Module) -> Iterator[BalanceLoss]:
    """Forward hooks on every router; the yielded ``BalanceLoss`` collects their outputs."""
    balance, handles = BalanceLoss(), []
    for layer in find_moe_layers(model):
        router = getattr(layer.block(model), layer.router_name or "gate")
        # DeepSeek-V2 routers return (router_logits [N, E], top_k_weights [N, K], top_k_index [N, K])
        handles.append(router.register_forward_hook(lambda _m, _a, out: balance.record(out[0], out[2])))
    try:
        yield balance
    finally:
        for handle in handles:
            handle.remove()


def _lr(step: int, config: PretrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def _train(model: nn.Module, data: list, config: PretrainConfig, pad_id: int, log) -> list[float]:
    """The pretraining loop; returns the loss every 100 steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.01)
    losses: list[float] = []
    with balance_hooks(model) as balance:
        for step in range(config.steps):
            rows = data[step * config.batch_size : (step + 1) * config.batch_size]
            batch = collate(rows, pad_id)
            balance.mask = batch["attention_mask"].reshape(-1).bool()
            lm_loss = answer_loss(model, batch)
            loss = lm_loss + config.balance_coef * balance.pop()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, config)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if (step + 1) % 100 == 0 or step == 0:
                losses.append(round(float(lm_loss.detach()), 4))
                log(f"pretrain step {step + 1}/{config.steps} loss {float(lm_loss.detach()):.4f}")
    return losses


def general_scores(model: nn.Module, tokenizer, n_per_task: int = 100) -> dict[str, float]:
    """Exact-match accuracy of ``model`` on each general task's held-out rows."""
    pad, stop = tokenizer.pad_token_id, stop_token_ids(tokenizer)
    return {name: exact_match(model, tokenize_rows(rows, tokenizer), pad_id=pad, stop_ids=stop).accuracy
            for name, rows in general_eval_rows(n_per_task).items()}


def cached_report(out_dir: str | Path, config: PretrainConfig) -> dict[str, Any] | None:
    """The report of a completed pretraining with this config in ``out_dir``, else None."""
    path = Path(out_dir) / REPORT_NAME
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("config_key") == config.key() else None


def pretrain(out_dir: str | Path, config: PretrainConfig | None = None, *, log=print) -> dict[str, Any]:
    """Pretrain the toy MoE into ``out_dir`` (model + tokenizer), or reuse a completed run there.

    Args:
        out_dir: where ``save_pretrained`` writes; ``esft.models.loading.load_model(out_dir)`` loads it.
        config: model size and run; the report is written last, so its presence means complete.
        log: receives progress lines.

    Returns:
        The pretraining report: config, parameters, losses, seconds and general scores per task.
    """
    config = config or PretrainConfig()
    cached = cached_report(out_dir, config)
    if cached is not None:
        log(f"pretrained model found in {out_dir} (config {config.key()}); skipping pretraining")
        return cached
    torch.manual_seed(config.seed)
    tokenizer = build_char_tokenizer()
    model = build_model(config)
    data = tokenize_rows(pretraining_mixture(config.steps * config.batch_size, config.seed), tokenizer)
    start = time.perf_counter()
    losses = _train(model, data, config, tokenizer.pad_token_id, log)
    seconds = time.perf_counter() - start
    model.eval()
    scores = general_scores(model, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = {"config": dataclasses.asdict(config), "config_key": config.key(), "train_seconds": round(seconds, 1),
              "parameters": sum(p.numel() for p in model.parameters()), "losses": losses,
              "general_scores": scores, "general_mean": sum(scores.values()) / len(scores),
              "threads": torch.get_num_threads()}
    write_json_atomic(out / REPORT_NAME, report)
    log(f"pretrained in {seconds:.0f}s; general exact match {report['general_mean']:.3f} {scores}")
    return report
