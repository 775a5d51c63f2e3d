"""The training objective of every method: next-token cross-entropy on label tokens only (shifted here).

Labels arrive aligned with ``input_ids`` (``esft.data.tokenize``); this module shifts them, so the model is
called without ``labels`` and its own loss is never used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esft.constants import IGNORE_INDEX


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor], *, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy over the label tokens of ``batch`` (prompts and padding are IGNORE_INDEX).

    ``reduction="sum"`` lets a caller normalise by the label tokens of a whole accumulation window. A packed
    batch (``esft.data.batching.collate_packed``) carries ``position_ids`` and no ``attention_mask``.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits
    logits = logits[:, :-1].float()  # [B, T-1, V]: position t predicts token t+1
    targets = batch["labels"][:, 1:]  # [B, T-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)


def n_loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many tokens of ``batch`` carry loss (the targets ``answer_loss`` averages over)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
