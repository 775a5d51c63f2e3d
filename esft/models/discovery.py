"""Finds the MoE layers of any transformers model: experts, router and shared experts, by interface.

Families are not recognised by class name. transformers 5 decorates every fused experts class with
``use_experts_implementation``, which gives the module ``num_experts``, ``has_gate``, ``has_bias``,
``is_transposed`` and ``_is_expert_parallel``; those attributes are what we look for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from torch.distributed.tensor import DTensor

from esft.errors import UnsupportedModelError
from esft.models.families import ROUTER_NAMES, SHARED_EXPERT_MARKERS, unsupported_reason

_EXPERTS_ATTRS = ("num_experts", "has_gate", "is_transposed", "_is_expert_parallel")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass
class MoELayer:
    """One MoE block of a decoder layer.

    Attributes:
        layer_index: index of the decoder layer (the key used in expert configs).
        experts_name: dotted path of the fused experts module, e.g. ``model.layers.1.mlp.experts``.
        block_name: dotted path of the MoE block that owns experts, router and shared experts.
        experts_attr: attribute name of the experts module inside the block (usually ``experts``).
        num_experts: routed experts in this layer.
        expert_params: names of the experts module's parameters with one row per expert (dim 0).
        shared_names: child names of the block holding shared experts (and their gates).
        router_name: child name of the router in the block, if found.
    """

    layer_index: int
    experts_name: str
    block_name: str
    experts_attr: str
    num_experts: int
    expert_params: tuple[str, ...]
    shared_names: tuple[str, ...]
    router_name: str | None

    def experts(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.experts_name)

    def block(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.block_name)

    def shared_param_names(self, model: nn.Module) -> list[str]:
        """Fully qualified names of the shared-expert parameters of this layer."""
        block = self.block(model)
        return [
            f"{self.block_name}.{child}.{name}"
            for child in self.shared_names
            for name, _ in block.get_submodule(child).named_parameters()
        ]


def is_experts_module(module: nn.Module) -> bool:
    """True for a fused experts module decorated by transformers' ``use_experts_implementation``."""
    return all(hasattr(module, attr) for attr in _EXPERTS_ATTRS)


def _layer_index(name: str, fallback: int) -> int:
    match = _LAYER_INDEX.search("." + name + ".")
    return int(match.group(1)) if match else fallback


def _global_num_experts(experts: nn.Module) -> int:
    """Routed experts of the whole layer: under expert parallelism ``num_experts`` counts one rank's block,
    while the sharded parameters (DTensors) keep the global shape."""
    sharded = [p for p in experts.parameters(recurse=False) if isinstance(p, DTensor)]
    return int(sharded[0].shape[0]) if sharded else int(experts.num_experts)


def _describe(experts_name: str, experts: nn.Module, block: nn.Module, fallback_index: int) -> MoELayer:
    num = _global_num_experts(experts)
    expert_params = tuple(
        name for name, p in experts.named_parameters(recurse=False) if p.dim() >= 1 and p.shape[0] == num
    )
    children = dict(block.named_children())
    shared = tuple(n for n in children if any(m in n.lower() for m in SHARED_EXPERT_MARKERS))
    router = next((n for n in ROUTER_NAMES if n in children), None)
    block_name, _, attr = experts_name.rpartition(".")
    return MoELayer(
        layer_index=_layer_index(experts_name, fallback_index),
        experts_name=experts_name,
        block_name=block_name,
        experts_attr=attr,
        num_experts=num,
        expert_params=expert_params,
        shared_names=shared,
        router_name=router,
    )


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Return the model's MoE layers in order, or raise ``UnsupportedModelError`` naming the family.

    >>> from esft.models.toy import toy_config
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_config(toy_config("qwen3_moe", layers=2, experts=8))
    >>> [(layer.layer_index, layer.num_experts) for layer in find_moe_layers(model)]
    [(0, 8), (1, 8)]
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    reason = unsupported_reason(model_type)
    if reason:
        raise UnsupportedModelError(f"model family {model_type!r} is not supported by ESFT: {reason}", param="model")
    layers: list[MoELayer] = []
    for name, module in model.named_modules():
        if is_experts_module(module) and "." in name:
            block = model.get_submodule(name.rpartition(".")[0])
            layers.append(_describe(name, module, block, len(layers)))
    if not layers:
        raise UnsupportedModelError(
            f"model family {model_type!r} has no Mixture-of-Experts layers that ESFT can train (no fused "
            "experts module decorated with transformers' use_experts_implementation); pass an MoE model "
            "such as deepseek_v2, qwen3_moe or mixtral",
            param="model",
        )
    seen: set[int] = set()
    for layer in layers:
        if layer.layer_index in seen:
            raise UnsupportedModelError(
                f"model family {model_type!r} has more than one experts module in decoder layer "
                f"{layer.layer_index} ({layer.experts_name}); expert configs key experts by layer",
                param="model",
            )
        seen.add(layer.layer_index)
    return layers
