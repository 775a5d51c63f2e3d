"""LoRA through peft's public configuration: explicit attention targets, ``target_parameters`` for fused experts."""

from esft.methods.lora.config import LoRAConfig
from esft.methods.registry import Method, lazy, lazy_exports, register_method

_MODEL = "esft.methods.lora.model"
register_method(Method("lora", LoRAConfig, lazy(f"{_MODEL}:get_lora_model"),
                       lazy(f"{_MODEL}:LoRAModel.from_pretrained"), saved_as="LORA"))
# Same adapters (peft LoRA directories), other targets: every routed expert's fused parameters.
register_method(Method("lora_experts", LoRAConfig, lazy(f"{_MODEL}:get_lora_experts_model"),
                       lazy(f"{_MODEL}:LoRAModel.from_pretrained"), saved_as="LORA"))

__getattr__ = lazy_exports({name: _MODEL for name in
                            ("LoRAModel", "attention_modules", "get_lora_experts_model", "get_lora_model")})
__all__ = ["LoRAConfig", "LoRAModel", "attention_modules", "get_lora_experts_model", "get_lora_model"]
