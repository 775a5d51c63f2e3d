"""ESFT adapters: save/load, hot-swap apply/restore, and merge into a full checkpoint."""

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.merge import merge_adapter, save_merged
from esft.adapters.swap import AppliedAdapter, applied, apply_adapter, check_compatible, restore

__all__ = [
    "AppliedAdapter",
    "ESFTAdapter",
    "applied",
    "apply_adapter",
    "check_compatible",
    "merge_adapter",
    "restore",
    "save_merged",
]
