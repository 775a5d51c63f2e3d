"""LoRA through peft's public configuration: explicit attention targets, ``target_parameters`` for fused experts."""

from esft.methods.lora.config import LoRAConfig
from esft.methods.lora.model import LoRAModel, attention_modules, get_lora_experts_model, get_lora_model
from esft.methods.registry import Method, register_method

register_method(Method("lora", LoRAConfig, get_lora_model, LoRAModel.from_pretrained, saved_as="LORA"))
# Same adapters (peft LoRA directories), other targets: every routed expert's fused parameters.
register_method(Method("lora_experts", LoRAConfig, get_lora_experts_model, LoRAModel.from_pretrained, saved_as="LORA"))

__all__ = ["LoRAConfig", "LoRAModel", "attention_modules", "get_lora_experts_model", "get_lora_model"]
