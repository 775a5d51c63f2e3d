"""Merge an adapter into a full Hugging Face checkpoint that plain ``from_pretrained`` loads."""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.swap import apply_adapter
from esft.io import atomic_directory


def merge_adapter(model: nn.Module, adapter: ESFTAdapter) -> nn.Module:
    """Deprecated: use ``esft.load_adapter(model, adapter_dir).fold()`` (or ``apply_adapter`` for a handle).

    Applies ``adapter`` to ``model`` for good (no restore handle kept) and returns the model.
    """
    warnings.warn("`merge_adapter` is deprecated; use `esft.load_adapter(model, adapter_dir).fold()`, which "
                  "applies the adapter in place and returns the plain model", DeprecationWarning, stacklevel=2)
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
