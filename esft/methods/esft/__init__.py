"""ESFT: train only the experts an ``ExpertConfig`` selects (split out of the fused expert tensors)."""

from esft.methods.esft.config import ExpertConfig, as_expert_config
from esft.methods.registry import Method, lazy, lazy_exports, register_method

register_method(Method("esft", None, lazy("esft.methods.esft.model:get_esft_model"),
                       lazy("esft.methods.esft.model:ESFTModel.from_pretrained"), saved_as="ESFT",
                       needs_expert_config=True))

__getattr__ = lazy_exports({"ESFTModel": "esft.methods.esft.model", "get_esft_model": "esft.methods.esft.model",
                            "SplitExperts": "esft.methods.esft.layer"})
__all__ = ["ESFTModel", "ExpertConfig", "SplitExperts", "as_expert_config", "get_esft_model"]
