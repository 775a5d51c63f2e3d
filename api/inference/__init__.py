"""OpenAI-compatible inference over ESFT adapters: the only part of ``api`` that imports torch.

``create_inference_router`` mounts into the main service; ``create_inference_app`` runs standalone.
"""

from api.inference.app import create_inference_app
from api.inference.routes import create_inference_router

__all__ = ["create_inference_app", "create_inference_router"]
