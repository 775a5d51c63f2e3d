"""ESFTLoRAAdapter: the low-rank factors of the selected experts, and their rows materialised for serving.

Layout of an adapter directory (the ESFT adapter's, with factors instead of rows)::

    adapter_config.json        expert config + base-model identity + rank/alpha + training metadata + sha256
    adapter_model.safetensors  ``{fused parameter}.lora_A`` ``[n_selected, r, d_in]`` and
                               ``{fused parameter}.lora_B`` ``[n_selected, d_out, r]``, experts in ascending id order

``materialise(model)`` turns it into an ``ESFTAdapter`` whose rows are ``base rows + alpha / r * B @ A`` in
the base dtype, computed as training computed them, so everything that serves ESFT adapters (hot swap,
expert slots, bit-exact restore) serves ESFT-LoRA unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from esft.adapters.adapter import ESFTAdapter, check_weights
from esft.constants import ADAPTER_CONFIG_NAME, ADAPTER_SCHEMA, ADAPTER_WEIGHTS_NAME
from esft.errors import AdapterMismatchError, ConfigError
from esft.expert_config import ExpertConfig
from esft.io import atomic_directory, sha256_file, write_json_atomic

PEFT_TYPE = "ESFT_LORA"
FACTORS = ("lora_A", "lora_B")
BaseRows = Callable[[str, torch.Tensor], torch.Tensor]  # (fused parameter name, expert ids) -> the base rows


@dataclass
class ESFTLoRAAdapter:
    """Low-rank factors per selected expert; ``row_tensors`` maps each fused parameter's name to its layer."""

    expert_config: ExpertConfig
    rank: int
    alpha: int
    tensors: dict[str, torch.Tensor]
    row_tensors: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_config(self) -> dict[str, Any]:
        return {**self.expert_config.to_dict(), "schema": ADAPTER_SCHEMA, "peft_type": PEFT_TYPE, "rank": self.rank,
                "alpha": self.alpha, "row_tensors": dict(sorted(self.row_tensors.items())), "training": self.metadata}

    def write_files(self, directory: Path) -> None:
        """Write the factors, then the config naming their sha256 (the config is the completion marker)."""
        weights = Path(directory) / ADAPTER_WEIGHTS_NAME
        save_file(self.tensors, str(weights), metadata={"format": "pt", "esft": ADAPTER_SCHEMA})
        config = self.to_config()
        config["weights"] = {ADAPTER_WEIGHTS_NAME: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
        write_json_atomic(Path(directory) / ADAPTER_CONFIG_NAME, config)

    def save_pretrained(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        with atomic_directory(Path(out_dir), overwrite=overwrite) as tmp:
            self.write_files(tmp)
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, verify: bool = True) -> ESFTLoRAAdapter:
        """Load an ESFT-LoRA directory; ``verify`` checks the weights' sha256 against the config.

        Raises:
            ConfigError: the directory is not a complete ESFT-LoRA adapter.
            AdapterMismatchError: the weights do not match the config.
        """
        path = Path(path)
        config = _read_config(path)
        if config.get("peft_type") != PEFT_TYPE or not (path / ADAPTER_WEIGHTS_NAME).is_file():
            raise ConfigError(f"{path} is not an ESFT-LoRA adapter (peft_type {PEFT_TYPE} and {ADAPTER_WEIGHTS_NAME})",
                              param="adapter")
        if verify:
            check_weights(path, config)
        rows = {k: int(v) for k, v in config.get("row_tensors", {}).items()}
        expert_config = ExpertConfig.from_dict(config)
        tensors = load_file(str(path / ADAPTER_WEIGHTS_NAME))
        return cls(expert_config, int(config["rank"]), int(config["alpha"]), tensors, rows, config.get("training", {}))

    @torch.no_grad()
    def materialise(self, model: nn.Module, base_rows: BaseRows | None = None) -> ESFTAdapter:
        """The ``ESFTAdapter`` of the trained rows: the base rows of the selected experts plus the deltas.

        The base rows are read from ``model``, or through ``base_rows`` where another adapter may be applied
        in place (a serving engine's hot swap).
        """
        scale = self.alpha / self.rank
        tensors: dict[str, torch.Tensor] = {}
        for key, layer in self.row_tensors.items():
            try:
                param = model.get_parameter(key)
            except AttributeError:
                raise AdapterMismatchError(f"adapter tensor {key!r} has no parameter in this model",
                                           param="adapter") from None
            ids = torch.tensor(self.expert_config.experts[layer], device=param.device)
            rows = (base_rows(key, ids) if base_rows is not None else param.detach()[ids]).float()
            factors = [f"{key}.{f}" for f in FACTORS]
            if all(name in self.tensors for name in factors):
                a, b = (self.tensors[name].to(device=param.device, dtype=torch.float32) for name in factors)
                if b.shape[:2] != rows.shape[:2] or a.shape[2:] != rows.shape[2:]:
                    raise AdapterMismatchError(f"adapter factors of {key!r} do not fit the model's "
                                               f"{tuple(param.shape)}", param="adapter")
                rows = rows + scale * torch.bmm(b, a)
            tensors[key] = rows.to(param.dtype).cpu().contiguous()
        return ESFTAdapter(self.expert_config, tensors, dict(self.row_tensors), dict(self.metadata))


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise ConfigError(f"{path} is not an adapter (no {ADAPTER_CONFIG_NAME})", param="adapter")
    return json.loads(config_path.read_text())


def expert_rows_adapter(path: str | Path, model: nn.Module, base_rows: BaseRows | None = None) -> ESFTAdapter:
    """The expert rows an adapter directory stands for: an ESFT adapter as saved, an ESFT-LoRA one materialised.

    This is what serving loads, so both methods go through the same expert slots and swaps.
    """
    if _read_config(Path(path)).get("peft_type") == PEFT_TYPE:
        return ESFTLoRAAdapter.from_pretrained(path).materialise(model, base_rows)
    return ESFTAdapter.from_pretrained(path)
