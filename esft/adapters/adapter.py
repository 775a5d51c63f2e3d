"""ESFTAdapter: the trained experts' weights (safetensors) plus the expert config, saved and loaded PEFT-style.

Layout of an adapter directory::

    adapter_config.json        expert config + base-model identity + training metadata + sha256 of weights
    adapter_model.safetensors  fused rows of the trained experts, keyed by the fused parameter's name
                               (``model.layers.1.mlp.experts.gate_up_proj`` -> ``[n_selected, 2I, H]``),
                               plus whole tensors for the shared/non-expert variants

Row tensors hold the experts of ``experts[layer]`` in ascending id order. Only JSON and safetensors
are read: nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from esft.constants import ADAPTER_CONFIG_NAME, ADAPTER_SCHEMA, ADAPTER_WEIGHTS_NAME
from esft.errors import AdapterMismatchError, ConfigError
from esft.expert_config import ExpertConfig
from esft.io import atomic_directory, sha256_file, write_json_atomic


@dataclass
class ESFTAdapter:
    """An ESFT adapter in memory.

    Attributes:
        expert_config: which experts of which layers the adapter replaces.
        tensors: adapter key -> tensor (row tensors for experts, whole tensors for dense variants).
        row_tensors: adapter key -> decoder-layer index, for the tensors that hold expert rows.
        metadata: training metadata (hyperparameters, metrics, data report) kept in the config file.
    """

    expert_config: ExpertConfig
    tensors: dict[str, torch.Tensor]
    row_tensors: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def base_model(self) -> dict[str, Any]:
        return self.expert_config.base_model

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_config(self) -> dict[str, Any]:
        return {
            **self.expert_config.to_dict(),
            "schema": ADAPTER_SCHEMA,
            "peft_type": "ESFT",
            "row_tensors": dict(sorted(self.row_tensors.items())),
            "training": self.metadata,
        }

    def save_pretrained(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write the adapter directory atomically (it appears whole or not at all)."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            self.write_files(tmp)
        return out_dir

    def write_files(self, directory: Path) -> None:
        """Write weights, then the config naming their sha256 (the config is the completion marker)."""
        weights = directory / ADAPTER_WEIGHTS_NAME
        save_file(self.tensors, str(weights), metadata={"format": "pt", "esft": ADAPTER_SCHEMA})
        config = self.to_config()
        config["weights"] = {ADAPTER_WEIGHTS_NAME: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
        write_json_atomic(directory / ADAPTER_CONFIG_NAME, config)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, verify: bool = True) -> ESFTAdapter:
        """Load an adapter directory; ``verify`` checks the weights' sha256 against the config.

        Raises:
            ConfigError: the directory is not a complete ESFT adapter.
            AdapterMismatchError: the weights do not match the config (corrupt or tampered).
        """
        path = Path(path)
        config_path, weights_path = path / ADAPTER_CONFIG_NAME, path / ADAPTER_WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise ConfigError(f"{path} is not an ESFT adapter (needs {ADAPTER_CONFIG_NAME} and "
                              f"{ADAPTER_WEIGHTS_NAME})", param="adapter")
        config = json.loads(config_path.read_text())
        if verify:
            check_weights(path, config)
        tensors = load_file(str(weights_path))
        rows = {k: int(v) for k, v in config.get("row_tensors", {}).items()}
        return cls(ExpertConfig.from_dict(config), tensors, rows, config.get("training", {}))


def check_weights(directory: str | Path, config: dict[str, Any] | None = None) -> None:
    """Raise ``AdapterMismatchError`` unless the weights match the sha256 their ``adapter_config.json`` names."""
    directory = Path(directory)
    config = config if config is not None else json.loads((directory / ADAPTER_CONFIG_NAME).read_text())
    expected = config.get("weights", {}).get(ADAPTER_WEIGHTS_NAME, {}).get("sha256")
    weights_path = directory / ADAPTER_WEIGHTS_NAME
    if expected and sha256_file(weights_path) != expected:
        raise AdapterMismatchError(f"{weights_path} does not match the sha256 in {ADAPTER_CONFIG_NAME}; "
                                   "the adapter is corrupt or was modified", param="adapter")
