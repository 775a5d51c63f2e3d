"""ESFT: train only the experts an ``ExpertConfig`` selects (split out of the fused expert tensors)."""

from esft.methods.esft.config import ExpertConfig, as_expert_config
from esft.methods.esft.layer import SplitExperts
from esft.methods.esft.model import ESFTModel, get_esft_model
from esft.methods.registry import Method, register_method

register_method(Method("esft", None, get_esft_model, ESFTModel.from_pretrained, saved_as="ESFT",
                       needs_expert_config=True))

__all__ = ["ESFTModel", "ExpertConfig", "SplitExperts", "as_expert_config", "get_esft_model"]
