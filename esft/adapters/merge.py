"""Merge an adapter into a full Hugging Face checkpoint that plain ``from_pretrained`` loads."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.swap import apply_adapter
from esft.io import atomic_directory


def merge_adapter(model: nn.Module, adapter: ESFTAdapter) -> nn.Module:
    """Apply ``adapter`` to ``model`` for good (no restore handle kept) and return the model."""
    apply_adapter(model, adapter)
    return model


def save_merged(model: nn.Module, tokenizer, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Save a merged model (and its tokenizer) atomically: the directory appears complete or not at all."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
