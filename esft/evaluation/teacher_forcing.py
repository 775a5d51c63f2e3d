"""Exact-match evaluation of chat rows by one teacher-forced forward pass, and the loss on answer tokens.

Greedy decoding writes the reference answer exactly when, at every answer position (the end-of-turn
token included), the argmax given the reference prefix is the reference token. So exact match needs one
batched forward pass instead of token-by-token generation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from esft.constants import IGNORE_INDEX
from esft.data.batching import collate
from esft.data.formats import parse_example
from esft.data.tokenize import TokenizedExample, tokenize_examples


def tokenize_rows(rows: Sequence[Mapping[str, Any]], tokenizer, seq_len: int = 256) -> list[TokenizedExample]:
    """Tokenize chat rows with the library's chat rendering and assistant-only loss mask."""
    examples = [parse_example(row, line) for line, row in enumerate(rows, 1)]
    tokenized, _ = tokenize_examples(examples, tokenizer, seq_len=seq_len, overflow="truncate")
    return tokenized


@dataclass
class EvalResult:
    """Exact-match accuracy and mean per-token loss over the answer tokens (through end of turn)."""

    accuracy: float
    loss: float
    n: int


def _scored_positions(targets: torch.Tensor, stop_ids: Collection[int]) -> torch.Tensor:
    """``[B, T]`` bool: labelled targets up to and including the first stop token."""
    labelled = targets != IGNORE_INDEX
    is_stop = torch.isin(targets, torch.tensor(sorted(stop_ids), device=targets.device)) & labelled
    after_stop = (is_stop.long().cumsum(dim=1) - is_stop.long()) > 0
    return labelled & ~after_stop


@torch.inference_mode()
def exact_match(
    model: nn.Module, data: Sequence[TokenizedExample], *, pad_id: int, stop_ids: Collection[int], batch_size: int = 64
) -> EvalResult:
    """Share of examples whose answer greedy decoding reproduces exactly, and the answer-token loss.

    Args:
        model: a causal LM (evaluated in eval mode; its training flag is restored).
        data: tokenized rows whose labels mark the answer.
        pad_id: padding id for batches.
        stop_ids: the ids that end a reply (``esft.generation.stop_token_ids``); an answer is scored up to
            and including the first of them.
        batch_size: rows per forward pass.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, loss_sum, n_tokens = 0, 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in collate(list(data[start : start + batch_size]), pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logits, targets = logits[:, :-1].float(), batch["labels"][:, 1:]  # [B, T-1, V], [B, T-1]
        scored = _scored_positions(targets, stop_ids)
        hits = (logits.argmax(dim=-1) == targets) | ~scored
        correct += int(hits.all(dim=1).sum())
        loss_sum += float(F.cross_entropy(logits[scored], targets[scored], reduction="sum"))
        n_tokens += int(scored.sum())
    model.train(was_training)
    return EvalResult(correct / max(len(data), 1), loss_sum / max(n_tokens, 1), len(data))
