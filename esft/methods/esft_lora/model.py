"""ESFTLoRAModel: ESFT's expert selection trained through low-rank deltas (``get_esft_lora_model``).

ESFT trains the selected experts' full rows; ESFT-LoRA trains only a rank-r delta per selected expert, so its
adapter and optimizer state are a fraction of ESFT's, and every other tensor of the model stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esft.adapters.swap import apply_adapter
from esft.errors import ConfigError
from esft.io import write_directory_atomic
from esft.methods.esft.config import as_expert_config
from esft.methods.esft.model import use_sentinel_safe_kernel
from esft.methods.esft_lora.adapter import FACTORS, ESFTLoRAAdapter
from esft.methods.esft_lora.config import ESFTLoRAConfig
from esft.methods.esft_lora.layer import LowRankExperts
from esft.models.discovery import MoELayer, find_moe_layers
from esft.models.identity import identity_of


@dataclass
class ESFTLoRAModel:
    """A model whose selected experts train through low-rank deltas.

    >>> from esft.models.toy import toy_model
    >>> config = ESFTLoRAConfig(rank=2, expert_config={"experts": {"0": [1]}})
    >>> sorted(get_esft_lora_model(toy_model("qwen3_moe", layers=1, experts=4), config).trainable_parameters())[:2]
    ['model.layers.0.mlp.experts.down_proj.lora_A', 'model.layers.0.mlp.experts.down_proj.lora_B']
    """

    model: nn.Module
    config: ESFTLoRAConfig
    layers: list[MoELayer]
    split: dict[int, LowRankExperts] = field(default_factory=dict)

    method = "esft_lora"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The factors, keyed ``{fused parameter}.lora_A`` / ``.lora_B``."""
        params: dict[str, nn.Parameter] = {}
        for layer in self.layers:
            split = self.split.get(layer.layer_index)
            if split is None:
                continue
            for factor in FACTORS:
                for name, param in getattr(split, factor).items():
                    params[f"{layer.experts_name}.{name}.{factor}"] = param
        return params

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "experts": self.config.expert_config.to_dict()["experts"],
                "rank": self.config.rank, "alpha": self.config.alpha}

    def adapter(self, metadata: dict[str, Any] | None = None) -> ESFTLoRAAdapter:
        """The factors as an ``ESFTLoRAAdapter`` (fp32, as trained: at small rank they are few bytes)."""
        tensors = {key: p.detach().cpu().contiguous() for key, p in self.trainable_parameters().items()}
        rows = {f"{ly.experts_name}.{name}": ly.layer_index for ly in self.layers if ly.layer_index in self.split
                for name in ly.expert_params}
        expert_config = self.config.expert_config
        if not expert_config.base_model:
            expert_config.base_model = identity_of(self.model.config)
        return ESFTLoRAAdapter(expert_config, self.config.rank, self.config.alpha, tensors, rows, dict(metadata or {}))

    def write_files(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
        self.adapter(metadata).write_files(Path(directory))

    def save_pretrained(self, out_dir: str | Path, *, metadata: dict | None = None, overwrite: bool = False) -> Path:
        return write_directory_atomic(out_dir, lambda tmp: self.write_files(tmp, metadata), overwrite=overwrite)

    def fold(self) -> nn.Module:
        """Write the trained rows into the fused tensors (in the base dtype) and undo the split."""
        for layer in self.layers:
            if layer.layer_index in self.split:
                setattr(layer.block(self.model), layer.experts_attr, self.split.pop(layer.layer_index).fold())
        return self.model

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, adapter_dir: str | Path) -> ESFTLoRAModel:
        """``base_model`` with the adapter's rows materialised and applied in place (folded, nothing split)."""
        adapter = ESFTLoRAAdapter.from_pretrained(adapter_dir)
        apply_adapter(base_model, adapter.materialise(base_model))
        config = ESFTLoRAConfig(rank=adapter.rank, alpha=adapter.alpha, expert_config=adapter.expert_config)
        return cls(base_model, config, find_moe_layers(base_model))


def get_esft_lora_model(model: nn.Module, config: ESFTLoRAConfig, *,
                        master_dtype: torch.dtype = torch.float32) -> ESFTLoRAModel:
    """Freeze ``model`` and give each expert ``config.expert_config`` selects a trainable low-rank delta.

    Raises:
        ConfigError: no expert config, or one asking for the shared/non-expert variants (train those with ESFT).
        AdapterMismatchError: the expert config names layers or experts the model lacks.
    """
    if config.expert_config is None:
        raise ConfigError("the esft_lora method needs an expert config (make one with `esft select`)",
                          param="expert_config")
    expert_config = as_expert_config(config.expert_config)
    if expert_config.shared_experts or expert_config.non_expert_modules:
        raise ConfigError("esft_lora trains routed experts only; drop shared_experts/non_expert_modules or use esft",
                          param="expert_config")
    layers = find_moe_layers(model)
    expert_config.check_model(identity_of(model.config), {ly.layer_index: ly.num_experts for ly in layers})
    use_sentinel_safe_kernel(model)
    model.requires_grad_(False)
    config.expert_config = expert_config
    prepared = ESFTLoRAModel(model, config, layers)
    for layer in layers:
        selected = expert_config.experts.get(layer.layer_index, [])
        if selected:
            split = LowRankExperts(layer.experts(model), selected, layer.expert_params, config.rank, config.scale,
                                   master_dtype)
            setattr(layer.block(model), layer.experts_attr, split)
            prepared.split[layer.layer_index] = split
    return prepared
