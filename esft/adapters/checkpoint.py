"""A training checkpoint as an adapter: the rows ``checkpoints/step-N`` holds, in the ordinary ESFT adapter format.

A checkpoint keeps the trained tensors as fp32 masters (``param.{adapter key}``) beside the optimizer state;
``checkpoint_adapter`` turns them into the ``ESFTAdapter`` the run would have written had it ended at that
step: the same keys, row layout and expert config, rows in the dtype training held them in (the base
model's unless the run asked for another), so ``save_pretrained`` gives a directory ``load_adapter`` and
``ESFTAdapter.from_pretrained`` read like any other (sha256 and base-model identity included).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from esft.adapters.adapter import ESFTAdapter
from esft.constants import CHECKPOINT_STATE_NAME, CHECKPOINT_TENSORS_NAME
from esft.errors import CheckpointError
from esft.expert_config import ExpertConfig
from esft.models.discovery import MoELayer, find_moe_layers
from esft.models.identity import model_identity

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checkpoint_adapter(
    checkpoint_dir: str | Path,
    expert_config: ExpertConfig | str | Path,
    model_dir: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
) -> ESFTAdapter:
    """The adapter of an ESFT training checkpoint (``out_dir/checkpoints/step-N``).

    Args:
        checkpoint_dir: a complete checkpoint directory written by ``esft.train``.
        expert_config: the run's expert config (or its JSON path); its experts must be the ones the run trained.
        model_dir: the base model's directory (its ``config.json`` gives the layout, identity and dtype).
        dtype: the rows' dtype; default: the run's ``dtype`` when it set one, else the base model's.

    Raises:
        CheckpointError: not a complete checkpoint, not of an ESFT run, or of a run with other experts.
    """
    path = Path(checkpoint_dir)
    meta = _read_meta(path)
    config = _run_expert_config(path, meta, expert_config)
    layers = _layers(model_dir)
    identity = model_identity(model_dir)
    config.check_model(identity, {ly.layer_index: ly.num_experts for ly in layers})
    config.base_model = config.base_model or identity
    target = _dtype(dtype, meta, model_dir)
    row_keys = {f"{ly.experts_name}.{name}": ly.layer_index
                for ly in layers if config.experts.get(ly.layer_index) for name in ly.expert_params}
    tensors = _masters(path)
    missing = sorted(set(row_keys) - set(tensors))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the trained rows {missing}", param="checkpoint")
    adapter_tensors = {key: t.to(target).contiguous() for key, t in sorted(tensors.items())}
    state = meta.get("state", {})
    metadata = {"checkpoint": {"step": state.get("step"), "epoch": state.get("epoch"),
                               "trained_tokens": state.get("trained_tokens")},
                "method": "esft", "config": meta["run_config"].get("training", {})}
    return ESFTAdapter(config, adapter_tensors, row_keys, metadata)


def _read_meta(path: Path) -> dict[str, Any]:
    state, tensors = path / CHECKPOINT_STATE_NAME, path / CHECKPOINT_TENSORS_NAME
    if not state.is_file() or not tensors.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (needs {CHECKPOINT_STATE_NAME} and "
                              f"{CHECKPOINT_TENSORS_NAME})", param="checkpoint")
    return json.loads(state.read_text())


def _run_expert_config(path: Path, meta: dict[str, Any], expert_config: ExpertConfig | str | Path) -> ExpertConfig:
    """A copy of ``expert_config`` with the variant flags the run trained with; refused for another run's experts."""
    method = meta.get("run_config", {}).get("method", {})
    if method.get("method") != "esft":
        raise CheckpointError(f"checkpoint {path} is of a {method.get('method')!r} run, not an ESFT one; only "
                              "ESFT checkpoints are adapters", param="checkpoint")
    source = expert_config if isinstance(expert_config, ExpertConfig) else ExpertConfig.load(expert_config)
    config = ExpertConfig.from_dict(source.to_dict())
    if config.to_dict()["experts"] != method.get("experts"):
        raise CheckpointError(f"checkpoint {path} trained other experts than the expert config names",
                              param="expert_config")
    config.shared_experts = bool(method.get("shared_experts"))
    config.non_expert_modules = bool(method.get("non_expert_modules"))
    return config


def _layers(model_dir: str | Path) -> list[MoELayer]:
    """The base model's MoE layers, from a weightless (meta-device) instance of its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return find_moe_layers(skeleton)


def _dtype(dtype: torch.dtype | str | None, meta: dict[str, Any], model_dir: str | Path) -> torch.dtype:
    """The explicit dtype, else the run's ``dtype`` option when set, else the base model's ``config.json``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    run = meta.get("run_config", {}).get("training", {}).get("dtype")
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for name in (dtype, run if run != "auto" else None, config.get("dtype"), config.get("torch_dtype")):
        if name is not None:
            if name not in _DTYPES:
                raise CheckpointError(f"dtype {name!r} is not one of {sorted(_DTYPES)}", param="dtype")
            return _DTYPES[name]
    return torch.float32


def _masters(path: Path) -> dict[str, torch.Tensor]:
    """The trained tensors (``param.*``) of a checkpoint, without reading its optimizer state."""
    prefix = "param."
    with safe_open(str(path / CHECKPOINT_TENSORS_NAME), framework="pt") as handle:
        names = [key for key in handle.keys() if key.startswith(prefix)]  # noqa: SIM118 - not iterable
        return {key[len(prefix):]: handle.get_tensor(key) for key in names}
