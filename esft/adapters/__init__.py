"""ESFT adapters: save/load, hot-swap apply/restore, merge into a full checkpoint, and from a training checkpoint."""

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.checkpoint import checkpoint_adapter
from esft.adapters.merge import merge_adapter, save_merged
from esft.adapters.swap import AppliedAdapter, applied, apply_adapter, check_compatible, restore

__all__ = [
    "AppliedAdapter",
    "ESFTAdapter",
    "applied",
    "apply_adapter",
    "check_compatible",
    "checkpoint_adapter",
    "merge_adapter",
    "restore",
    "save_merged",
]
