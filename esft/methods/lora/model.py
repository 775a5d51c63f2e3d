"""LoRAModel: LoRA through peft's public API as a method; saves and loads a peft adapter directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from esft.errors import ConfigError
from esft.io import write_directory_atomic
from esft.methods.lora.config import LoRAConfig
from esft.models.discovery import find_moe_layers


def _peft():
    try:
        import peft
    except ImportError as exc:  # an optional dependency
        raise ConfigError("the LoRA method needs `peft`: pip install peft", param="method") from exc
    return peft


@dataclass
class LoRAModel:
    """A model wrapped by peft with LoRA adapters (``model`` is the ``PeftModel``).

    Saving writes peft's adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``),
    which ``peft.PeftModel.from_pretrained`` also loads.
    """

    model: nn.Module
    config: LoRAConfig = field(default_factory=LoRAConfig)

    method = "lora"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The LoRA matrices (everything else is frozen by peft)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "rank": self.config.rank, "alpha": self.config.alpha,
                "target_modules": sorted(self.model.peft_config["default"].target_modules or []),
                "target_parameters": sorted(self.config.target_parameters or [])}

    def write_files(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the peft adapter into an existing ``directory`` (metadata is not part of peft's format)."""
        self.model.save_pretrained(directory)

    def save_pretrained(self, out_dir: str | Path, *, metadata: dict | None = None, overwrite: bool = False) -> Path:
        """Write the adapter atomically to a new ``out_dir``."""
        return write_directory_atomic(out_dir, lambda tmp: self.write_files(tmp, metadata), overwrite=overwrite)

    def fold(self) -> nn.Module:
        """Merge the LoRA updates into the base weights and return the plain base model."""
        return self.model.merge_and_unload()

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, adapter_dir: str | Path) -> LoRAModel:
        """``base_model`` wrapped with the peft LoRA adapter saved in ``adapter_dir``."""
        wrapped = _peft().PeftModel.from_pretrained(base_model, str(adapter_dir))
        saved = wrapped.peft_config["default"]
        config = LoRAConfig(rank=saved.r, alpha=saved.lora_alpha, target_modules=sorted(saved.target_modules or []),
                            target_parameters=sorted(saved.target_parameters or []) or None)
        return cls(wrapped, config)


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules inside attention (a path component containing ``attn``/``attention``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any("attn" in part or "attention" in part for part in name.split("."))
    ]


def get_lora_model(model: nn.Module, config: LoRAConfig | None = None) -> LoRAModel:
    """Wrap ``model`` with peft LoRA adapters on ``config.target_modules`` (default: the attention projections).

    Raises:
        ConfigError: peft is missing, nothing is targeted, or peft moved a target onto the fused experts.
    """
    peft = _peft()
    config = config or LoRAConfig()
    modules = list(config.target_modules) if config.target_modules is not None else attention_modules(model)
    if not modules and not config.target_parameters:
        raise ConfigError("LoRA found no attention projections to target; pass `target_modules`", param="lora")
    peft_config = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                                  target_modules=modules,
                                  target_parameters=list(config.target_parameters or []) or None)
    wrapped = peft.get_peft_model(model, peft_config)
    kept = wrapped.peft_config["default"]
    if set(kept.target_parameters or []) != set(config.target_parameters or []):
        raise ConfigError(
            f"peft moved LoRA targets {sorted(set(modules) - set(kept.target_modules or []))} onto fused experts "
            f"({sorted(kept.target_parameters or [])}); target attention modules or name `target_parameters`",
            param="lora",
        )
    return LoRAModel(wrapped, config)


def get_lora_experts_model(model: nn.Module, config: LoRAConfig | None = None) -> LoRAModel:
    """LoRA on every routed expert's fused parameters (peft's ``target_parameters``), attention untouched.

    The strongest LoRA on an MoE model that peft offers: one low-rank update per expert, on all experts of
    every MoE layer (ESFT-LoRA puts them on the selected experts only).
    """
    config = config or LoRAConfig()
    targets = sorted({f"{ly.experts_name}.{name}" for ly in find_moe_layers(model) for name in ly.expert_params
                      if model.get_parameter(f"{ly.experts_name}.{name}").dim() == 3})
    return get_lora_model(model, LoRAConfig(rank=config.rank, alpha=config.alpha, target_modules=[],
                                            target_parameters=targets))
