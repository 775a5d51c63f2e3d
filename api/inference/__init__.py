"""OpenAI-compatible inference over ESFT adapters: the only part of ``api`` that imports torch.

``create_inference_router`` mounts into the main service; ``create_inference_app`` runs standalone. Both are
imported lazily, so the torch-free ``api.inference.operations`` (the operations the service's OpenAPI
document declares) can be imported without loading the engine.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_inference_app", "create_inference_router"]


def __getattr__(name: str) -> Any:
    if name == "create_inference_app":
        from api.inference.app import create_inference_app

        return create_inference_app
    if name == "create_inference_router":
        from api.inference.routes import create_inference_router

        return create_inference_router
    raise AttributeError(f"module 'api.inference' has no attribute {name!r}")
