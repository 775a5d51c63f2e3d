"""The identity of a base model: architecture and a hash of its structural config (torch-free)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Keys that change with how a model is loaded or run, not with what it is.
_RUNTIME_KEYS = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_experts_implementation",
        "_attn_implementation",
        "_attn_implementation_autoset",
        "attn_implementation",
        "experts_implementation",
        "use_cache",
        "output_router_logits",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "architectures",
        "_commit_hash",
        "id2label",
        "label2id",
        "problem_type",
        "is_encoder_decoder",
        "chunk_size_feed_forward",
    }
)


def config_hash(config: dict[str, Any]) -> str:
    """Hash the structural part of a ``config.json`` dict so two loads of one model agree.

    Runtime keys (dtype, attention or experts kernel, cache flags) are dropped, so a model loaded
    in bf16 with sdpa hashes the same as the fp32 checkpoint it came from.
    """

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if k not in _RUNTIME_KEYS}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    canonical = json.dumps(clean(config), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]


def identity_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"model_type", "architectures", "config_hash"}`` for a config dict."""
    return {
        "model_type": config.get("model_type"),
        "architectures": list(config.get("architectures") or []),
        "config_hash": config_hash(config),
    }


def identity_of(config: Any) -> dict[str, Any]:
    """Identity of an in-memory ``PretrainedConfig`` (same result as ``model_identity`` on its saved dir)."""
    data = config.to_diff_dict()
    data.setdefault("architectures", getattr(config, "architectures", None))
    return identity_from_config(data)


def model_identity(model_dir: str | Path) -> dict[str, Any]:
    """Identity of a saved model directory, read from its ``config.json`` only (no torch needed)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        from esft.errors import UnsupportedModelError

        raise UnsupportedModelError(
            f"{model_dir} has no config.json; pass a directory saved with save_pretrained", param="model"
        )
    return identity_from_config(json.loads(path.read_text()))
