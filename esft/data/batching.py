"""Batching: padded and packed collation, deterministic length-grouped batch order, the train/validation split.

Padded batches hold one example per row; packed ones (``collate_packed``) hold a whole micro-batch in one row
whose attention runs per example (``esft.models.packed_attention``), so no token attends to another example's.
Every random choice comes from a local generator seeded by ``(seed, epoch)``, never the global RNG, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from esft.config import n_train_examples
from esft.constants import IGNORE_INDEX
from esft.errors import ConfigError

if TYPE_CHECKING:
    from esft.data.tokenize import TokenizedExample

# Batches are sorted by length within windows of this many batches: enough to cut most padding while the
# order stays random at the scale of an epoch.
GROUP_WINDOW_BATCHES = 50


def collate(batch: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest example.

    Args:
        batch: tokenized examples (at least one).
        pad_token_id: the id written in padding positions (masked out, never trained on).

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``, each a ``[B, T]`` long tensor with ``T`` the longest
        example; padding has attention 0 and label ``IGNORE_INDEX``.

    Raises:
        ValueError: the batch is empty.

    >>> from esft.data.tokenize import TokenizedExample
    >>> collate([TokenizedExample([5, 6], [-100, 6], False, 1)], pad_token_id=0)["labels"].tolist()
    [[-100, 6]]
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(example.input_ids) for example in batch)
    input_ids = torch.full((len(batch), longest), pad_token_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)  # [B, T]
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)  # [B, T]
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_packed(batch: Sequence[TokenizedExample], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pack a batch into one row, samples back to back, with ``position_ids`` restarting at 0 for each.

    No padding at all: attention runs per sample (``esft.models.packed_attention``, found from the
    positions), so the row costs the sum of the samples' attention, never the square of the whole row.
    ``esft.models.families.PACKING_EXACT`` lists the families where that is proven to give the per-sample
    logits. Each sample's first label is ignored: in the row it would be predicted from the previous
    sample's last token. ``pad_token_id`` is unused (kept so both collates are called alike).

    Returns:
        ``input_ids``, ``labels`` and ``position_ids``, each ``[1, total tokens]``.

    >>> from esft.data.tokenize import TokenizedExample
    >>> packed = collate_packed([TokenizedExample([5, 6], [5, 6], False, 1), TokenizedExample([7], [7], False, 2)])
    >>> packed["position_ids"].tolist(), packed["labels"].tolist()
    ([[0, 1, 0]], [[-100, 6, -100]])
    """
    if not batch:
        raise ValueError("cannot pack an empty batch")
    ids, labels, positions = [], [], []
    for example in batch:
        ids.extend(example.input_ids)
        labels.extend([IGNORE_INDEX, *example.labels[1:]])
        positions.extend(range(len(example.input_ids)))
    return {name: torch.tensor([values], dtype=torch.long)
            for name, values in (("input_ids", ids), ("labels", labels), ("position_ids", positions))}


def padding_tokens(batch: Sequence[TokenizedExample]) -> int:
    """Pad tokens ``collate`` adds to this batch (what packing saves)."""
    lengths = [len(ex.input_ids) for ex in batch]
    return len(lengths) * max(lengths) - sum(lengths)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def batch_indices(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    group_by_length: bool = True,
) -> list[list[int]]:
    """The batches of one epoch, as lists of example indices.

    Indices are shuffled, then (with ``group_by_length``) cut into windows of ``GROUP_WINDOW_BATCHES``
    batches, each sorted by length so a batch holds similar lengths and little padding; finally the batch
    order is shuffled so long batches do not all come together. The last, partial batch is kept.

    Args:
        lengths: the token length of each example.
        batch_size: examples per batch.
        seed: the run's seed.
        epoch: the epoch number; each epoch gets its own order.
        shuffle: shuffle examples and batches (False keeps a fixed order).
        group_by_length: sort by length within windows to reduce padding.

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once. The same
        ``(lengths, batch_size, seed, epoch)`` always gives the same batches.

    Raises:
        ConfigError: ``batch_size`` is not a positive integer.

    >>> batch_indices([3, 1, 2], 2, seed=0, epoch=0, shuffle=False)
    [[0, 2], [1]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"`batch_size` must be a positive integer, got {batch_size!r}", param="batch_size")
    rng = random.Random(seed * 1000003 + epoch)  # local: the global RNG may be reseeded by anything
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    if not group_by_length:
        return _chunks(order, batch_size)
    batches: list[list[int]] = []
    for window in _chunks(order, batch_size * GROUP_WINDOW_BATCHES):
        # Longest first within a window; sorted() is stable, so ties keep the shuffled order.
        window = sorted(window, key=lambda index: -lengths[index])
        batches.extend(_chunks(window, batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into train and validation indices, deterministically for ``seed``.

    Args:
        n: number of examples.
        fraction: share held out for validation, in ``[0, 1)``; rounded, but at least one example when
            ``fraction > 0`` and ``n >= 2``, and never every example.
        seed: the run's seed.

    Returns:
        ``(train, val)``, each sorted ascending.

    Raises:
        ConfigError: ``fraction`` is outside ``[0, 1)`` or ``n`` is negative.

    >>> split_validation(4, 0.0, seed=0)
    ([0, 1, 2, 3], [])
    """
    if not 0 <= fraction < 1:
        raise ConfigError(f"`fraction` must be in [0, 1), got {fraction!r}", param="fraction")
    if n < 0:
        raise ConfigError(f"`n` must be non-negative, got {n!r}", param="n")
    n_val = n - n_train_examples(n, fraction)  # the count every step plan uses, too
    order = list(range(n))
    random.Random(f"esft-validation-split-{seed}").shuffle(order)  # str seeds hash stably across runs
    return sorted(order[n_val:]), sorted(order[:n_val])
