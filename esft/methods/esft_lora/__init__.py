"""ESFT-LoRA: ESFT's expert selection, trained through low-rank deltas on the selected experts only."""

from esft.methods.esft_lora.config import ESFTLoRAConfig
from esft.methods.registry import Method, lazy, lazy_exports, register_method

_MODEL, _ADAPTER = "esft.methods.esft_lora.model", "esft.methods.esft_lora.adapter"
register_method(Method("esft_lora", ESFTLoRAConfig, lazy(f"{_MODEL}:get_esft_lora_model"),
                       lazy(f"{_MODEL}:ESFTLoRAModel.from_pretrained"), saved_as="ESFT_LORA",
                       needs_expert_config=True))

__getattr__ = lazy_exports({"ESFTLoRAModel": _MODEL, "get_esft_lora_model": _MODEL, "ESFTLoRAAdapter": _ADAPTER,
                            "expert_rows_adapter": _ADAPTER})
__all__ = ["ESFTLoRAAdapter", "ESFTLoRAConfig", "ESFTLoRAModel", "expert_rows_adapter", "get_esft_lora_model"]
