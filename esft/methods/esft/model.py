"""ESFTModel: the ESFT front door (``get_esft_model``), its trainable parameters, save, load and fold.

``get_esft_model`` freezes a model and splits the experts an ``ExpertConfig`` selects into trainable
twins (see ``layer.py``); the returned ``ESFTModel`` is what you train, save and pass around, as
peft's ``get_peft_model`` / ``PeftModel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.swap import apply_adapter
from esft.expert_config import ExpertConfig
from esft.io import write_directory_atomic
from esft.methods.esft.config import ExpertConfigLike, as_expert_config
from esft.methods.esft.layer import SplitExperts
from esft.models.discovery import MoELayer, find_moe_layers
from esft.models.families import SENTINEL_SAFE_KERNELS
from esft.models.identity import identity_of


@dataclass
class ESFTModel:
    """A model prepared for ESFT: its config, the split layers and the parameters that train.

    Attributes:
        model: the wrapped transformers model (modified in place); calling the ``ESFTModel`` calls it.
        config: the expert config it was prepared with (or loaded from an adapter).
        layers: the model's MoE layers.
        split: decoder-layer index -> the ``SplitExperts`` holding that layer's trainable rows.
        dense_trainable: whole tensors that train in the paper's shared / non-expert variants.

    >>> from esft.models.toy import toy_model
    >>> esft_model = get_esft_model(toy_model("qwen3_moe", layers=1, experts=4), {"experts": {"0": [1]}})
    >>> sorted(esft_model.trainable_parameters())
    ['model.layers.0.mlp.experts.down_proj', 'model.layers.0.mlp.experts.gate_up_proj']
    """

    model: nn.Module
    config: ExpertConfig
    layers: list[MoELayer]
    split: dict[int, SplitExperts] = field(default_factory=dict)
    dense_trainable: dict[str, nn.Parameter] = field(default_factory=dict)

    method = "esft"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by adapter key (fused-param name for expert rows)."""
        params: dict[str, nn.Parameter] = {}
        for layer in self.layers:
            if layer.layer_index in self.split:
                twin = self.split[layer.layer_index].trainable
                for name in layer.expert_params:
                    params[f"{layer.experts_name}.{name}"] = getattr(twin, name)
        params.update(self.dense_trainable)
        return params

    def describe(self) -> dict[str, Any]:
        """What trains, as JSON: checkpoints record it so a resume with other experts is refused."""
        return {"method": self.method, "experts": self.config.to_dict()["experts"],
                "shared_experts": self.config.shared_experts, "non_expert_modules": self.config.non_expert_modules}

    def adapter(self, metadata: dict[str, Any] | None = None) -> ESFTAdapter:
        """The trained tensors as an ``ESFTAdapter``, in the base model's dtype (the model stays split)."""
        tensors: dict[str, torch.Tensor] = {}
        rows: dict[str, int] = {}
        for layer in self.layers:
            split = self.split.get(layer.layer_index)
            for name in layer.expert_params if split is not None else ():
                key = f"{layer.experts_name}.{name}"
                tensors[key] = split.merged_rows(name).cpu().contiguous()
                rows[key] = layer.layer_index
        for name, param in self.dense_trainable.items():
            tensors[name] = param.detach().cpu().contiguous()
        if not self.config.base_model:
            self.config.base_model = identity_of(self.model.config)
        return ESFTAdapter(self.config, tensors, rows, dict(metadata or {}))

    def write_files(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> None:
        """Write the adapter into an existing ``directory`` (``adapter_config.json`` last, as the marker)."""
        self.adapter(metadata).write_files(Path(directory))

    def save_pretrained(self, out_dir: str | Path, *, metadata: dict | None = None, overwrite: bool = False) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` atomically to a new ``out_dir``."""
        return write_directory_atomic(out_dir, lambda tmp: self.write_files(tmp, metadata), overwrite=overwrite)

    def fold(self) -> nn.Module:
        """Undo the split in place (trained rows written into the fused tensors); returns the model."""
        for layer in self.layers:
            if layer.layer_index in self.split:
                block = layer.block(self.model)
                setattr(block, layer.experts_attr, self.split.pop(layer.layer_index).fold())
        return self.model

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, adapter_dir: str | Path) -> ESFTModel:
        """``base_model`` with the adapter in ``adapter_dir`` applied in place (folded, nothing split).

        To train further, pass the result's ``model`` and ``config`` to ``get_esft_model``.

        Raises:
            ConfigError: ``adapter_dir`` is not a complete ESFT adapter.
            AdapterMismatchError: the adapter was trained on another model, or its weights are corrupt.
        """
        adapter = ESFTAdapter.from_pretrained(adapter_dir)
        apply_adapter(base_model, adapter)
        return cls(base_model, adapter.expert_config, find_moe_layers(base_model))


def _use_sentinel_safe_kernel(model: nn.Module) -> None:
    impl = getattr(model.config, "_experts_implementation", None)
    if impl not in SENTINEL_SAFE_KERNELS and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("grouped_mm")


def get_esft_model(
    model: nn.Module, expert_config: ExpertConfigLike, *, master_dtype: torch.dtype = torch.float32
) -> ESFTModel:
    """Freeze ``model`` and split out the experts ``expert_config`` selects (in place).

    Everything is frozen (router, attention, norms, embeddings, lm_head, shared and unselected experts)
    except the selected experts, plus shared experts and/or all non-expert modules when the config's
    ``shared_experts`` / ``non_expert_modules`` flags ask for the paper's variants.

    Args:
        model: a transformers MoE causal LM.
        expert_config: an ``ExpertConfig``, its dict (ours or the official deepseek-ai/ESFT format) or a JSON path.
        master_dtype: dtype of the trainable twins (fp32 master weights by default).

    Returns:
        The ``ESFTModel`` wrapping ``model``.

    Raises:
        ConfigError: ``expert_config`` cannot be read.
        AdapterMismatchError: the config names layers or experts the model lacks, or another model.
    """
    config = as_expert_config(expert_config)
    layers = find_moe_layers(model)
    config.check_model(identity_of(model.config), {ly.layer_index: ly.num_experts for ly in layers})
    _use_sentinel_safe_kernel(model)
    model.requires_grad_(False)
    prepared = ESFTModel(model, config, layers)
    for layer in layers:
        selected = config.experts.get(layer.layer_index, [])
        if selected:
            split = SplitExperts(layer.experts(model), selected, layer.expert_params, master_dtype)
            setattr(layer.block(model), layer.experts_attr, split)
            prepared.split[layer.layer_index] = split
    experts_prefixes = tuple(f"{ly.experts_name}." for ly in layers)
    shared_names = {n for ly in layers for n in ly.shared_param_names(model)}
    for name, param in model.named_parameters():
        if name.startswith(experts_prefixes):
            continue  # routed experts: trained only through the twins above
        is_shared = name in shared_names
        if (config.shared_experts and is_shared) or (config.non_expert_modules and not is_shared):
            param.requires_grad_(True)
            prepared.dense_trainable[name] = param
    return prepared

