"""The method registry: each fine-tuning method registers its config class, how it prepares a model and how it loads.

A method's model (``ESFTModel``, ``FFTModel``, ``LoRAModel``) is what the one training loop
(``esft.training.loop.train``) trains: it has ``model``, ``config``, ``trainable_parameters()``,
``describe()``, ``write_files(dir, metadata)``, ``save_pretrained(dir)``, ``fold()`` and the classmethod
``from_pretrained(base_model, dir)``. Adding a method is one folder under ``esft/methods/`` and one
``register_method`` call in its ``__init__``. Registering imports no torch (a method's ``__init__`` imports
its config and names its model functions with ``lazy``), so the service's control plane can read every
method's options without loading torch.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esft.constants import ADAPTER_CONFIG_NAME
from esft.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Method:
    """A registered fine-tuning method.

    Attributes:
        name: what ``esft train --method`` and ``workflows.train(method=...)`` call it.
        config_cls: its config class; ``config_cls()`` is the default config (None: a config must be given).
        prepare: ``(model, config) -> method model`` (``get_<method>_model``).
        from_pretrained: ``(base_model, directory) -> method model`` with the saved weights applied.
        saved_as: how ``load_adapter`` recognises its directories: the ``peft_type`` in ``adapter_config.json``,
            or ``"model"`` for a full checkpoint (``config.json``).
        needs_expert_config: whether it trains a selection of experts (``--expert-config`` is required).
    """

    name: str
    config_cls: type | None
    prepare: Callable[[nn.Module, Any], Any]
    from_pretrained: Callable[[nn.Module, str | Path], Any]
    saved_as: str
    needs_expert_config: bool = False

    @property
    def full_checkpoint(self) -> bool:
        """Whether it saves a whole model (the tokenizer belongs beside it)."""
        return self.saved_as == "model"


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name may be registered once)."""
    if method.name in _METHODS and _METHODS[method.name] != method:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Registered method names, sorted.

    >>> import esft.methods
    >>> method_names()
    ['esft', 'esft_lora', 'fft', 'lora', 'lora_experts']
    """
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        ConfigError: no method has that name (param ``method``).
    """
    if name not in _METHODS:
        raise ConfigError(f"`method` must be one of {', '.join(method_names())}, got {name!r}", param="method")
    return _METHODS[name]


def detect_method(directory: str | Path) -> Method:
    """The method that wrote ``directory`` (an adapter's ``peft_type``, or a full model's ``config.json``).

    Raises:
        ConfigError: nothing registered recognises the directory.
    """
    directory = Path(directory)
    kind = None
    if (directory / ADAPTER_CONFIG_NAME).is_file():
        kind = json.loads((directory / ADAPTER_CONFIG_NAME).read_text()).get("peft_type")
    elif (directory / "config.json").is_file():
        kind = "model"
    for method in _METHODS.values():
        if kind is not None and method.saved_as == kind:
            return method
    raise ConfigError(f"{directory} holds no adapter or model that a registered method wrote "
                      f"(found {kind or 'neither adapter_config.json nor config.json'})", param="adapter")


def lazy(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` (or ``:Class.method``) as a callable importing the module on first call.

    Keeps torch unloaded until a method is used.
    """
    module_name, _, path = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        found: Any = importlib.import_module(module_name)
        for attr in path.split("."):
            found = getattr(found, attr)
        return found(*args, **kwargs)

    call.__qualname__ = call.__name__ = path
    return call


def lazy_exports(exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``exports[name]`` (a module path) on first access."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(name)
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
