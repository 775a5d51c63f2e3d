"""Fine-tuning methods, one folder each (``esft``, ``esft_lora``, ``fft``, ``lora``), found through a small registry.

Every method's model trains through the same loop (``esft.train``) and saves with ``save_pretrained``;
``load_adapter`` reloads whatever a method saved onto a fresh base model.

>>> from esft.methods import get_method
>>> get_method("lora").needs_expert_config
False
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from esft.errors import ConfigError

# Importing each method's package registers it.
from esft.methods import esft, esft_lora, fft, lora  # noqa: E402,F401,I001
from esft.methods.registry import Method, detect_method, get_method, method_names, register_method

if TYPE_CHECKING:
    from torch import nn


def get_model(method: str, model: nn.Module, config: Any = None) -> Any:
    """Prepare ``model`` for ``method`` with ``config`` (the method's default config when None).

    Raises:
        ConfigError: unknown method, or a method that needs a config (esft: an expert config) got none.
    """
    spec = get_method(method)
    if config is None and spec.config_cls is None:
        raise ConfigError(f"the {method} method needs a config (an expert config)", param="expert_config")
    return spec.prepare(model, config if config is not None else spec.config_cls())


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> Any:
    """``model`` with what a method saved in ``adapter_dir`` applied (an ESFT or LoRA adapter, or a full model).

    Returns the method's model (``ESFTModel``, ``LoRAModel`` or ``FFTModel``).
    """
    return detect_method(adapter_dir).from_pretrained(model, adapter_dir)


__all__ = ["Method", "detect_method", "get_method", "get_model", "load_adapter", "method_names", "register_method"]
