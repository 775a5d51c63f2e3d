"""Adapters in the layout of deepseek-ai/ESFT: import them into ``ESFTAdapter``, and write them back.

The official layout is a directory with ``expert_cfg.json`` (``{"experts": {"<decoder layer>": [ids]},
"shared_experts": bool, "non_expert_modules": bool}``) and any ``*.safetensors`` files holding the full
weights of the trained parameters, one tensor per expert and projection::

    model.layers.{L}.mlp.experts.{E}.gate_proj.weight   [I, H]
    model.layers.{L}.mlp.experts.{E}.up_proj.weight     [I, H]
    model.layers.{L}.mlp.experts.{E}.down_proj.weight   [H, I]

(older releases name them relative to the decoder stack: ``layers.{L}...``), plus the shared experts'
and the non-expert modules' tensors under their model names when the config trains them.

This project keeps an expert's projections fused as transformers 5 does (``experts.gate_up_proj`` rows
``[2I, H]``, gate first; ``experts.down_proj`` rows ``[H, I]``). Import checks every tensor against the
base model (layer, expert id, shape) before anything is written; export splits the rows back under the
same names, dtypes and values and writes the same ``expert_cfg.json`` content.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from esft.adapters.adapter import ESFTAdapter
from esft.errors import AdapterMismatchError, ConfigError, UnsupportedModelError
from esft.expert_config import ExpertConfig
from esft.io import atomic_directory, write_json_atomic
from esft.models.identity import model_identity

OFFICIAL_CONFIG = "expert_cfg.json"
OFFICIAL_WEIGHTS = "model.safetensors"
SOURCE = "deepseek-ai/ESFT"
_EXPERT_KEY = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_FUSED = ("gate_up_proj", "down_proj")


def _read_official(official_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """The raw ``expert_cfg.json``, every tensor under its full model name, and the key prefix used."""
    config_path = official_dir / OFFICIAL_CONFIG
    if not config_path.is_file():
        raise ConfigError(f"{official_dir} has no {OFFICIAL_CONFIG}: not an adapter in the {SOURCE} layout",
                          param="adapter")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} is not valid JSON: {exc}", param="adapter") from None
    files = sorted(official_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{official_dir} has no *.safetensors files", param="adapter")
    tensors: dict[str, torch.Tensor] = {}
    prefixes = set()
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                legacy = not key.startswith(("model.", "lm_head."))
                prefixes.add("" if legacy else "model.")
                name = f"model.{key}" if legacy else key
                if name in tensors:
                    raise ConfigError(f"tensor {key!r} appears twice in {official_dir}", param="adapter")
                tensors[name] = f.get_tensor(key)
    if len(prefixes) > 1:
        raise ConfigError(f"{official_dir} mixes keys with and without the 'model.' prefix", param="adapter")
    return raw, tensors, prefixes.pop()


def _meta_model(model_dir: Path):
    """The base model's modules and parameter shapes without its weights (meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _official_name(key: str, prefix: str) -> str:
    return key if prefix or not key.startswith("model.") else key[len("model."):]


def import_official(model_dir: str | Path, official_dir: str | Path, out_dir: str | Path, *,
                    overwrite: bool = False) -> Path:
    """Convert an adapter in the official layout into an ``ESFTAdapter`` directory for ``model_dir``.

    Raises:
        AdapterMismatchError: a tensor does not fit the base model (names the tensor, the model's shape and its).
        ConfigError: the directory is not in the official layout, or tensors and ``expert_cfg.json`` disagree.
    """
    from esft.models.discovery import find_moe_layers

    model_dir, official_dir = Path(model_dir), Path(official_dir)
    raw, tensors, prefix = _read_official(official_dir)
    config = ExpertConfig.from_dict(raw)
    model = _meta_model(model_dir)
    layers = {layer.layer_index: layer for layer in find_moe_layers(model)}
    for layer in layers.values():
        experts = layer.experts(model)
        if tuple(layer.expert_params) != _FUSED or experts.is_transposed or not experts.has_gate:
            raise UnsupportedModelError(
                f"{model.config.model_type} stores experts as {layer.expert_params}; the {SOURCE} layout maps to "
                "fused gate_up_proj/down_proj experts (DeepSeek-V2 style) only", param="model")

    def mismatch(key: str, why: str) -> AdapterMismatchError:
        return AdapterMismatchError(f"official tensor {_official_name(key, prefix)!r} {why}; the adapter was made "
                                    f"for another base model than {model_dir}", param="adapter")

    projections: dict[int, dict[int, dict[str, torch.Tensor]]] = defaultdict(lambda: defaultdict(dict))
    dense: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = _EXPERT_KEY.match(key)
        if match:
            layer_index, expert, proj = int(match[1]), int(match[2]), match[3]
            layer = layers.get(layer_index)
            if layer is None:
                raise mismatch(key, f"is for decoder layer {layer_index}, which is not an MoE layer of the base "
                                    f"(MoE layers: {sorted(layers)})")
            if expert >= layer.num_experts:
                raise mismatch(key, f"is for expert {expert}; the base has {layer.num_experts} experts per layer")
            fused = model.get_parameter(f"{layer.experts_name}.{'down_proj' if proj == 'down' else 'gate_up_proj'}")
            want = tuple(fused.shape[1:]) if proj == "down" else (fused.shape[1] // 2, fused.shape[2])
            if tuple(tensor.shape) != want:
                raise mismatch(key, f"has shape {tuple(tensor.shape)}, the base model's expert needs {want}")
            if expert not in config.experts.get(layer_index, []):
                raise ConfigError(f"official tensor {_official_name(key, prefix)!r} is for expert {expert} of layer "
                                  f"{layer_index}, which {OFFICIAL_CONFIG} does not list", param="adapter")
            projections[layer_index][expert][proj] = tensor
            continue
        shared = ".shared_expert" in key
        if not (config.shared_experts if shared else config.non_expert_modules):
            flag = "shared_experts" if shared else "non_expert_modules"
            raise ConfigError(f"official tensor {_official_name(key, prefix)!r} is not a routed expert and "
                              f"{OFFICIAL_CONFIG} has {flag}: false", param="adapter")
        try:
            param = model.get_parameter(key)
        except AttributeError:
            raise mismatch(key, "has no parameter of that name in the base model") from None
        if tuple(param.shape) != tuple(tensor.shape):
            raise mismatch(key, f"has shape {tuple(tensor.shape)}, the base model's is {tuple(param.shape)}")
        dense[key] = tensor

    row_tensors: dict[str, int] = {}
    for layer_index, ids in sorted(config.experts.items()):
        if not ids:
            continue
        if layer_index not in layers:
            raise AdapterMismatchError(f"{OFFICIAL_CONFIG} selects experts of decoder layer {layer_index}, which "
                                       f"is not an MoE layer of {model_dir} (MoE layers: {sorted(layers)})",
                                       param="adapter")
        found = projections.get(layer_index, {})
        for expert in ids:
            missing = [p for p in ("gate", "up", "down") if p not in found.get(expert, {})]
            if missing:
                names = [_official_name(f"model.layers.{layer_index}.mlp.experts.{expert}.{p}_proj.weight", prefix)
                         for p in missing]
                raise ConfigError(f"{OFFICIAL_CONFIG} lists expert {expert} of layer {layer_index}, but the "
                                  f"safetensors lack {names}", param="adapter")
        name = layers[layer_index].experts_name
        row_tensors[f"{name}.gate_up_proj"] = row_tensors[f"{name}.down_proj"] = layer_index
        dense[f"{name}.gate_up_proj"] = torch.stack(
            [torch.cat([found[e]["gate"], found[e]["up"]], dim=0) for e in ids])
        dense[f"{name}.down_proj"] = torch.stack([found[e]["down"] for e in ids])

    config.base_model = model_identity(model_dir)
    metadata = {"source": SOURCE, "official": {"expert_cfg": raw, "key_prefix": prefix}}
    return ESFTAdapter(config, dense, row_tensors, metadata).save_pretrained(out_dir, overwrite=overwrite)


def official_expert_cfg(adapter: ESFTAdapter) -> dict[str, Any]:
    """The ``expert_cfg.json`` content: the imported one unchanged, else built from the expert config."""
    imported = adapter.metadata.get("official", {}).get("expert_cfg")
    if imported is not None:
        return imported
    config = adapter.expert_config
    return {"experts": {str(layer): sorted(ids) for layer, ids in sorted(config.experts.items())},
            "shared_experts": config.shared_experts, "non_expert_modules": config.non_expert_modules}


def export_official(adapter_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write an ``ESFTAdapter`` directory in the official layout (``expert_cfg.json`` + ``model.safetensors``)."""
    adapter = ESFTAdapter.from_pretrained(adapter_dir)
    prefix = adapter.metadata.get("official", {}).get("key_prefix", "model.")
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in adapter.tensors.items():
        if key not in adapter.row_tensors:
            tensors[_official_name(key, prefix)] = tensor.contiguous()
            continue
        experts_name, _, param = key.rpartition(".")
        if param not in _FUSED:
            raise UnsupportedModelError(f"adapter tensor {key!r} is not a fused gate_up_proj/down_proj expert "
                                        f"tensor; the {SOURCE} layout has no name for it", param="adapter")
        ids = adapter.expert_config.experts[adapter.row_tensors[key]]
        for row, expert in zip(tensor, ids, strict=True):
            base = f"{experts_name}.{expert}"
            if param == "down_proj":
                tensors[_official_name(f"{base}.down_proj.weight", prefix)] = row.contiguous()
            else:
                gate, up = row.chunk(2, dim=0)
                tensors[_official_name(f"{base}.gate_proj.weight", prefix)] = gate.contiguous()
                tensors[_official_name(f"{base}.up_proj.weight", prefix)] = up.contiguous()
    with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
        save_file(dict(sorted(tensors.items())), str(tmp / OFFICIAL_WEIGHTS), metadata={"format": "pt"})
        write_json_atomic(tmp / OFFICIAL_CONFIG, official_expert_cfg(adapter))
    return Path(out_dir)
