"""ESFT: Expert-Specialized Fine-Tuning for transformers Mixture-of-Experts models.

The public API is importable from here; names load lazily, so ``import esft`` stays cheap and the
torch-free parts (configs, data formats) can be used without importing torch.

>>> from esft import SelectionConfig
>>> SelectionConfig("gate").top_p
0.1
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ScoringConfig": "esft.config",
    "SelectionConfig": "esft.config",
    "TrainingConfig": "esft.config",
    "ExpertConfig": "esft.expert_config",
    "ESFTError": "esft.errors",
    "ConfigError": "esft.errors",
    "DataFormatError": "esft.errors",
    "UnsupportedModelError": "esft.errors",
    "AdapterMismatchError": "esft.errors",
    "CheckpointError": "esft.errors",
    "TrainingCancelled": "esft.errors",
    "ExpertScores": "esft.scoring.scores",
    "score_experts": "esft.scoring.scores",
    "select_experts": "esft.selection",
    "find_moe_layers": "esft.models.discovery",
    "prepare_model": "esft.training.freeze",
    "train": "esft.training.loop",
    "ESFTAdapter": "esft.adapters.adapter",
    "apply_adapter": "esft.adapters.swap",
    "restore": "esft.adapters.swap",
    "applied": "esft.adapters.swap",
    "ProgressEvent": "esft.training.progress",
    "workflows": "esft.workflows",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'esft' has no attribute {name!r}")
    if name == "workflows":
        return importlib.import_module(module)
    return getattr(importlib.import_module(module), name)
