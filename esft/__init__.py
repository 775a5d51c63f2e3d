"""ESFT: Expert-Specialized Fine-Tuning for transformers Mixture-of-Experts models.

The public API is importable from here; names load lazily, so ``import esft`` stays cheap and the
torch-free parts (configs, data formats) can be used without importing torch. The front door, as peft's:
``get_esft_model(model, expert_config)`` -> ``train(...)`` -> ``save_pretrained(dir)``, and
``load_adapter(model, dir)`` (or ``ESFTModel.from_pretrained``) to use the result.

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
    "get_esft_model": "esft.methods.esft.model",
    "ESFTModel": "esft.methods.esft.model",
    "get_fft_model": "esft.methods.fft.model",
    "FFTConfig": "esft.methods.fft.config",
    "get_lora_model": "esft.methods.lora.model",
    "LoRAConfig": "esft.methods.lora.config",
    "get_lora_experts_model": "esft.methods.lora.model",
    "get_esft_lora_model": "esft.methods.esft_lora.model",
    "ESFTLoRAConfig": "esft.methods.esft_lora.config",
    "register_method": "esft.methods",
    "load_adapter": "esft.methods",
    "train": "esft.training.loop",
    "TrainResult": "esft.training.loop",
    "ESFTAdapter": "esft.adapters.adapter",
    "checkpoint_adapter": "esft.adapters.checkpoint",
    "apply_adapter": "esft.adapters.swap",
    "restore": "esft.adapters.swap",
    "applied": "esft.adapters.swap",
    "ProgressEvent": "esft.training.progress",
}
# Reachable as attributes but not the front door: the path-level layer the CLI and the worker call.
_SUBMODULES = {"workflows": "esft.workflows", "methods": "esft.methods"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'esft' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
