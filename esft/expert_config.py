"""ExpertConfig: which experts of which layers train; a superset of the official ESFT JSON format.

The official format is ``{"experts": {"<layer>": [ids]}, "shared_experts": false,
"non_expert_modules": false}`` and loads as it is. We add a schema version, how the experts were
chosen, the base model's identity and the scores, so a config explains itself and refuses the wrong model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esft.constants import EXPERT_CONFIG_SCHEMA
from esft.errors import AdapterMismatchError, ConfigError
from esft.io import write_json_atomic


@dataclass
class ExpertConfig:
    """Selected experts per decoder layer, plus the paper's variant switches."""

    experts: dict[int, list[int]] = field(metadata={"help": "decoder-layer index -> routed expert ids that train"})
    shared_experts: bool = field(default=False, metadata={"help": "also train the shared experts (paper variant)"})
    non_expert_modules: bool = field(
        default=False, metadata={"help": "also train attention, norms, embeddings and head (paper variant)"})
    score_function: str | None = field(default=None, metadata={"help": "how the experts were scored: token or gate"})
    top_p: float | None = field(default=None, metadata={"help": "the selection's cumulative-score threshold"})
    base_model: dict[str, Any] = field(default_factory=dict, metadata={"help": "identity of the model it was made for"})
    scores: dict[int, list[float]] | None = field(default=None, metadata={"help": "per-layer expert scores"})

    def __post_init__(self) -> None:
        problems = [f"experts[{layer!r}] must be a list of expert ids >= 0 for a layer index >= 0, got {ids!r}"
                    for layer, ids in self.experts.items()
                    if not _is_index(layer) or not isinstance(ids, list) or not all(_is_index(i) for i in ids)]
        if problems:
            raise ConfigError(problems, param="expert_config")

    @property
    def n_selected(self) -> int:
        return sum(len(ids) for ids in self.experts.values())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": EXPERT_CONFIG_SCHEMA,
            "experts": {str(k): sorted(v) for k, v in sorted(self.experts.items())},
            "shared_experts": self.shared_experts,
            "non_expert_modules": self.non_expert_modules,
            "score_function": self.score_function,
            "top_p": self.top_p,
            "base_model": self.base_model,
        }
        if self.scores is not None:
            data["scores"] = {str(k): v for k, v in sorted(self.scores.items())}
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ExpertConfig:
        """Parse our format or the official one; every problem is reported at once."""
        if not isinstance(data, dict) or not isinstance(data.get("experts"), dict):
            raise ConfigError("expert config must be an object with an 'experts' object mapping layer -> ids",
                              param="expert_config")
        problems: list[str] = []
        experts: dict[int, list[int]] = {}
        for key, ids in data["experts"].items():
            if not str(key).isdigit():
                problems.append(f"experts key {key!r} is not a decoder-layer index")
                continue
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                problems.append(f"experts[{key!r}] must be a list of integer expert ids, got {ids!r}")
                continue
            if len(set(ids)) != len(ids):
                problems.append(f"experts[{key!r}] lists an expert twice: {ids}")
            experts[int(key)] = sorted(set(ids))
        for flag in ("shared_experts", "non_expert_modules"):
            if not isinstance(data.get(flag, False), bool):
                problems.append(f"{flag} must be true or false, got {data.get(flag)!r}")
        if problems:
            raise ConfigError(problems, param="expert_config")
        scores = data.get("scores")
        return cls(
            experts=experts,
            shared_experts=data.get("shared_experts", False),
            non_expert_modules=data.get("non_expert_modules", False),
            score_function=data.get("score_function"),
            top_p=data.get("top_p"),
            base_model=data.get("base_model") or {},
            scores={int(k): v for k, v in scores.items()} if isinstance(scores, dict) else None,
        )

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ExpertConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"expert config {path} does not exist", param="expert_config") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"expert config {path} is not valid JSON: {exc}", param="expert_config") from None
        return cls.from_dict(data)

    def check_model(self, identity: dict[str, Any], num_experts: dict[int, int]) -> None:
        """Raise if this config names layers or experts the model lacks, or was made for another model.

        Args:
            identity: the model's identity (``esft.models.identity``); checked only if we recorded one.
            num_experts: routed experts per MoE layer index of the model.
        """
        mine = self.base_model.get("config_hash")
        if mine and identity.get("config_hash") and mine != identity["config_hash"]:
            raise AdapterMismatchError(
                f"expert config was made for a {self.base_model.get('model_type')} model with config hash {mine}, "
                f"but this model ({identity.get('model_type')}) has {identity['config_hash']}; re-run `esft score` "
                "and `esft select` on this model",
                param="expert_config",
            )
        problems = []
        for layer, ids in sorted(self.experts.items()):
            if layer not in num_experts:
                problems.append(f"layer {layer} is not an MoE layer of this model (MoE layers: {sorted(num_experts)})")
            elif ids and (min(ids) < 0 or max(ids) >= num_experts[layer]):
                problems.append(f"layer {layer} has experts 0..{num_experts[layer] - 1}, config lists {ids}")
        if problems:
            raise AdapterMismatchError("; ".join(problems), param="expert_config")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
