"""ESFTModel: the ESFT front door (``get_esft_model``), its trainable parameters, save, load and fold.

``get_esft_model`` freezes a model and splits the experts an ``ExpertConfig`` selects into trainable
twins (see ``layer.py``); the returned ``ESFTModel`` is what you train, save and pass around, as
peft's ``get_peft_model`` / ``PeftModel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from esft.adapters.adapter import ESFTAdapter
from esft.adapters.swap import apply_adapter
from esft.errors import ConfigError
from esft.expert_config import ExpertConfig
from esft.io import write_directory_atomic
from esft.methods.esft import one_pass
from esft.methods.esft.config import ExpertConfigLike, as_expert_config
from esft.methods.esft.layer import SplitExperts
from esft.models.discovery import MoELayer, find_moe_layers
from esft.models.families import SENTINEL_SAFE_KERNELS
from esft.models.identity import identity_of

ExpertsKernel = Literal["auto", "one_pass", "split"]


@dataclass
class ESFTModel:
    """A model prepared for ESFT: its config, the split layers and the parameters that train.

    Attributes:
        model: the wrapped transformers model (modified in place); calling the ``ESFTModel`` calls it.
        config: the expert config it was prepared with (or loaded from an adapter).
        layers: the model's MoE layers.
        split: decoder-layer index -> the ``SplitExperts`` holding that layer's trainable rows (layouts the
            one-pass kernel does not cover).
        one_pass: decoder-layer index -> the trained rows of a layer served by the one-pass kernel
            (``one_pass.py``): its fused tensors hold the rows, fp32 masters receive the gradients.
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
    one_pass: dict[int, one_pass.TrainedRows] = field(default_factory=dict)
    dense_trainable: dict[str, nn.Parameter] = field(default_factory=dict)

    method = "esft"

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by adapter key (fused-param name for expert rows)."""
        params: dict[str, nn.Parameter] = {}
        for layer in self.layers:
            for name, param in self._trained_rows(layer).items():
                params[f"{layer.experts_name}.{name}"] = param
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
            base = split.base if split is not None else layer.experts(self.model)
            for name, param in self._trained_rows(layer).items():
                key = f"{layer.experts_name}.{name}"
                tensors[key] = param.detach().to(getattr(base, name).dtype).cpu().contiguous()
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
            if self.one_pass.pop(layer.layer_index, None) is not None:
                one_pass.detach(layer.experts(self.model))
        return self.model

    def _trained_rows(self, layer: MoELayer) -> dict[str, nn.Parameter]:
        """Fused-parameter name -> the trainable rows of ``layer`` (empty when none of its experts train)."""
        if layer.layer_index in self.one_pass:
            return dict(self.one_pass[layer.layer_index].masters)
        if layer.layer_index in self.split:
            twin = self.split[layer.layer_index].trainable
            return {name: getattr(twin, name) for name in layer.expert_params}
        return {}

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


def use_sentinel_safe_kernel(model: nn.Module) -> None:
    impl = getattr(model.config, "_experts_implementation", None)
    if impl not in SENTINEL_SAFE_KERNELS and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("grouped_mm")


def get_esft_model(
    model: nn.Module,
    expert_config: ExpertConfigLike,
    *,
    master_dtype: torch.dtype = torch.float32,
    experts_kernel: ExpertsKernel = "auto",
) -> ESFTModel:
    """Freeze ``model`` and make the experts ``expert_config`` selects trainable (in place).

    Everything is frozen (router, attention, norms, embeddings, lm_head, shared and unselected experts)
    except the selected experts, plus shared experts and/or all non-expert modules when the config's
    ``shared_experts`` / ``non_expert_modules`` flags ask for the paper's variants.

    Args:
        model: a transformers MoE causal LM.
        expert_config: an ``ExpertConfig``, its dict (ours or the official deepseek-ai/ESFT format) or a JSON path.
        master_dtype: dtype of the trained rows' master weights (fp32 by default).
        experts_kernel: ``"one_pass"`` trains the rows inside the fused tensors with one dispatch per layer
            (``one_pass.py``), ``"split"`` moves them into a trainable twin module (``layer.py``); ``"auto"``
            uses one pass wherever the layer's layout allows it, and the split elsewhere.

    Returns:
        The ``ESFTModel`` wrapping ``model``.

    Raises:
        ConfigError: ``expert_config`` cannot be read, or ``experts_kernel="one_pass"`` on a layout it cannot serve.
        AdapterMismatchError: the config names layers or experts the model lacks, or another model.
    """
    config = as_expert_config(expert_config)
    layers = find_moe_layers(model)
    config.check_model(identity_of(model.config), {ly.layer_index: ly.num_experts for ly in layers})
    use_sentinel_safe_kernel(model)
    model.requires_grad_(False)
    prepared = ESFTModel(model, config, layers)
    for layer in layers:
        selected = config.experts.get(layer.layer_index, [])
        if selected:
            _make_trainable(prepared, layer, selected, master_dtype, experts_kernel)
    experts_prefixes = tuple(f"{ly.experts_name}." for ly in layers)
    shared_names = {n for ly in layers for n in ly.shared_param_names(model)}
    for name, param in model.named_parameters():
        if name.startswith(experts_prefixes):
            continue  # routed experts: trained only through their trained rows
        is_shared = name in shared_names
        if (config.shared_experts and is_shared) or (config.non_expert_modules and not is_shared):
            param.requires_grad_(True)
            prepared.dense_trainable[name] = param
    return prepared


def _make_trainable(prepared: ESFTModel, layer: MoELayer, selected: list[int], master_dtype, kernel: str) -> None:
    """Train ``selected`` experts of ``layer`` through the one-pass kernel or the two-module split."""
    experts = layer.experts(prepared.model)
    reason = one_pass.one_pass_reason(experts, layer.expert_params)
    if kernel == "one_pass" and reason:
        raise ConfigError(f"`experts_kernel`: the one-pass kernel cannot train layer {layer.layer_index}: {reason}; "
                          "use 'auto' or 'split'", param="experts_kernel")
    if kernel != "split" and reason is None:
        prepared.one_pass[layer.layer_index] = one_pass.attach(experts, selected, layer.expert_params, master_dtype)
        return
    split = SplitExperts(experts, selected, layer.expert_params, master_dtype)
    setattr(layer.block(prepared.model), layer.experts_attr, split)
    prepared.split[layer.layer_index] = split
