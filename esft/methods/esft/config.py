"""The ESFT method's config: an ``ExpertConfig`` (which experts train), given as itself, a dict or a JSON path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esft.errors import ConfigError
from esft.expert_config import ExpertConfig

ExpertConfigLike = ExpertConfig | dict[str, Any] | str | Path


def as_expert_config(value: ExpertConfigLike) -> ExpertConfig:
    """Read an ``ExpertConfig`` from itself, a dict (ours or the official deepseek-ai/ESFT format) or a path.

    >>> as_expert_config({"experts": {"1": [0, 3]}, "shared_experts": False, "non_expert_modules": False}).experts
    {1: [0, 3]}

    Raises:
        ConfigError: the value is none of those, or the config is invalid.
    """
    if isinstance(value, ExpertConfig):
        return value
    if isinstance(value, dict):
        return ExpertConfig.from_dict(value)
    if isinstance(value, str | Path):
        return ExpertConfig.load(value)
    raise ConfigError(f"`expert_config` must be an ExpertConfig, a dict or a path, got {type(value).__name__}",
                      param="expert_config")


__all__ = ["ExpertConfig", "ExpertConfigLike", "as_expert_config"]
