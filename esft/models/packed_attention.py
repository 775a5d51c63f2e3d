"""Attention over packed rows, one sample at a time.

A packed row holds several samples back to back, their ``position_ids`` restarting at 0 (``collate_packed``).
transformers keeps such samples apart with a block-diagonal mask, but the attention behind that mask is still
dense over the whole row: on a CPU, one row of a whole micro-batch costs the square of its length and ran at
0.64x of padded batches. Here attention runs per sample instead (segments found from ``position_ids``), so a
packed micro-batch is one row with no padding at all and attention costs the sum of the samples' squares, less
than padding every sample to the longest. No mask is built: the function is registered with transformers'
``AttentionInterface`` under ``ATTENTION_NAME`` and not with the mask interface, which makes transformers skip
mask creation. Attention sinks are supported (computed per sample as transformers' eager attention does them);
logit soft-capping, a position bias, and models whose own code reads the mask (the DSA indexers) are refused,
and those families stay padded: ``esft.models.families.PACKING_EXACT`` lists where packed logits are proven
equal to per-sample ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from esft.errors import ConfigError

ATTENTION_NAME = "esft_packed"
_UNSUPPORTED = ("softcap", "position_bias")


def segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each sample in one row: a new sample starts wherever the position does not step by 1.

    >>> segments(torch.tensor([0, 1, 2, 0, 1, 0]))
    [(0, 3), (3, 5), (5, 6)]
    """
    starts = (torch.nonzero(position_ids[1:] != position_ids[:-1] + 1).flatten() + 1).tolist()
    edges = [0, *starts, position_ids.numel()]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _window_mask(n: int, window: int, device: torch.device) -> torch.Tensor:
    """Causal mask where each query sees its last ``window`` positions (transformers' sliding-window rule)."""
    q = torch.arange(n, device=device)[:, None]
    kv = torch.arange(n, device=device)[None, :]
    return (kv <= q) & (kv > q - window)  # [n, n]


def _attention_with_sinks(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    scaling: float,
    sinks: torch.Tensor,
    dropout: float,
) -> torch.Tensor:
    """One sample's attention where each head also attends to a learnt sink logit that carries no value."""
    if key.shape[1] != query.shape[1]:
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    logits = (query @ key.transpose(-1, -2)) * scaling  # [1, H, n, n]
    logits = logits.masked_fill(~mask, float("-inf"))
    sink = sinks.reshape(1, -1, 1, 1).expand(-1, -1, logits.shape[-2], 1).to(logits.dtype)
    combined = torch.cat([logits, sink], dim=-1)
    probs = F.softmax(combined - combined.max(dim=-1, keepdim=True).values, dim=-1)[..., :-1]
    return F.dropout(probs, p=dropout).to(value.dtype) @ value  # [1, H, n, D_v]


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, T, D]
    key: torch.Tensor,  # [B, H_kv, T, D]
    value: torch.Tensor,  # [B, H_kv, T, D_v]
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each sample of each row; returns ``[B, T, H, D_v]`` as transformers expects."""
    position_ids = kwargs.get("position_ids")
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if position_ids is None or attention_mask is not None or unsupported or not getattr(module, "is_causal", True):
        why = f"it uses {unsupported}" if unsupported else "its attention gets no position_ids or gets a mask"
        raise ConfigError(f"packed attention cannot run {type(module).__name__}: {why}; train with packing off "
                          "(--no-packing)", param="packing")
    gqa = query.shape[1] != key.shape[1]
    sinks = kwargs.get("s_aux", kwargs.get("sinks"))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    rows = []
    for row in range(query.shape[0]):
        outputs = []
        for start, end in segments(position_ids[row if position_ids.shape[0] > 1 else 0]):
            n = end - start
            q, k, v = (t[row : row + 1, :, start:end] for t in (query, key, value))
            window = sliding_window is not None and n > sliding_window
            if sinks is not None:
                mask = _window_mask(n, sliding_window or n, query.device)
                outputs.append(_attention_with_sinks(q, k, v, mask, scale, sinks, dropout))
                continue
            mask = _window_mask(n, sliding_window, query.device) if window else None
            outputs.append(F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scale, enable_gqa=gqa
            ))  # [1, H, n, D_v]
        rows.append(torch.cat(outputs, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)


@contextmanager
def packed_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model``'s attention per packed sample inside the block (forward and backward); restored after it."""
    base = model
    while not hasattr(base, "set_attn_implementation") and hasattr(base, "model"):
        base = base.model  # ESFT/peft wrappers hold the transformers model
    previous = base.config._attn_implementation
    base.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        base.set_attn_implementation(previous)
