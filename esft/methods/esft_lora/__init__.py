"""ESFT-LoRA: ESFT's expert selection, trained through low-rank deltas on the selected experts only."""

from esft.methods.esft_lora.adapter import ESFTLoRAAdapter, expert_rows_adapter
from esft.methods.esft_lora.config import ESFTLoRAConfig
from esft.methods.esft_lora.model import ESFTLoRAModel, get_esft_lora_model
from esft.methods.registry import Method, register_method

register_method(Method("esft_lora", ESFTLoRAConfig, get_esft_lora_model, ESFTLoRAModel.from_pretrained,
                       saved_as="ESFT_LORA", needs_expert_config=True))

__all__ = ["ESFTLoRAAdapter", "ESFTLoRAConfig", "ESFTLoRAModel", "expert_rows_adapter", "get_esft_lora_model"]
