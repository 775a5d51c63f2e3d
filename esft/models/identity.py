"""The identity of a base model: architecture and a hash of its structural config (torch-free)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from esft.errors import UnsupportedModelError

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # real config.json files are a few KB
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # model types and architecture class names

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


def _invalid(path: Path, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{path} {why}; pass a directory saved with save_pretrained", param="model",
                                 code="invalid_model_config")


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved model: a JSON object whose ``model_type`` and ``architectures`` are names.

    Raises:
        UnsupportedModelError: no ``config.json``, or one that is too large, not UTF-8 JSON, not an object, too
            deeply nested, or whose ``model_type``/``architectures`` are not plain names (the message says which).
    """
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(
            f"{model_dir} has no config.json; pass a directory saved with save_pretrained", param="model"
        )
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise _invalid(path, f"cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise _invalid(path, f"is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _invalid(path, "is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _invalid(path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise _invalid(path, "is not valid JSON (a number too long or nesting too deep)") from None
    if not isinstance(config, dict):
        raise _invalid(path, f"holds a JSON {type(config).__name__}, not an object")
    model_type, architectures = config.get("model_type"), config.get("architectures")
    if model_type is not None and not (isinstance(model_type, str) and _NAME.match(model_type)):
        raise _invalid(path, "has a `model_type` that is not a name (letters, digits, `_.-`, at most 128)")
    if architectures is not None and not (
        isinstance(architectures, list)
        and len(architectures) <= 16
        and all(isinstance(name, str) and _NAME.match(name) for name in architectures)
    ):
        raise _invalid(path, "has `architectures` that are not a list of class names")
    return config


def model_identity(model_dir: str | Path) -> dict[str, Any]:
    """Identity of a saved model directory, read from its ``config.json`` only (no torch needed).

    Raises:
        UnsupportedModelError: as ``read_config``.
    """
    config = read_config(model_dir)
    try:
        return identity_from_config(config)
    except RecursionError:
        raise _invalid(Path(model_dir) / "config.json", "is nested too deeply") from None
