"""Shared test assets for the serving and inference tests: a tiny base model and real trained adapters.

Built once per test session (both test folders' fixtures call ``serving_assets``): a deepseek_v2 toy
model (hidden 64, 2 layers, 8 experts, top-2), adapters ``math`` and ``words`` trained for a few
steps on different tasks with a large learning rate (so their answers differ visibly from the base
model's), ``dense`` (also trains the shared experts: it can only be hot-swapped), and ``alien``, an
adapter of a different base model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from esft import workflows
from esft.adapters import ESFTAdapter
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.expert_config import ExpertConfig
from esft.models.discovery import find_moe_layers
from esft.models.identity import identity_of
from esft.models.toy import build_toy_model, toy_model

PROMPTS = ["add 3 and 6", "add 10 and 13", "name a colour", "hello, who are you?"]


@dataclass(frozen=True)
class ServingAssets:
    model_dir: Path
    adapters: dict[str, Path]  # math, words, dense, alien

    def resolver_table(self, *names: str) -> dict[str, Path]:
        return {name: self.adapters[name] for name in (names or self.adapters)}


def _write_task(path: Path, kind: str, n: int = 16) -> Path:
    colours, words = ["red", "blue", "green", "gold"], ["apple", "ocean", "leaf", "sun"]
    with path.open("w") as f:
        for i in range(n):
            math = (f"add {i} and {i + 3}", str(2 * i + 3))
            user, answer = math if kind == "math" else (colours[i % 4], words[i % 4])
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def _train(model_dir: Path, root: Path, name: str, task: str, **training) -> Path:
    data = _write_task(root / f"{name}.jsonl", task)
    workflows.score(model_dir, data, root / f"{name}-scores.json", ScoringConfig(batch_size=8))
    workflows.select(root / f"{name}-scores.json", SelectionConfig("token", 0.3), root / f"{name}-experts.json")
    config = TrainingConfig(max_steps=4, learning_rate=1e-2, batch_size=8, **training)
    return workflows.train(model_dir, data, root / f"{name}-experts.json", root / name, config).adapter_dir


def _alien_adapter(out: Path) -> Path:
    """An adapter made for a different base model (hidden 32): every compatibility check must refuse it."""
    model = toy_model("deepseek_v2", hidden=32, layers=2, experts=8)
    layer = find_moe_layers(model)[0]
    experts = layer.experts(model)
    tensors = {f"{layer.experts_name}.{n}": getattr(experts, n).detach()[[1]].clone() for n in layer.expert_params}
    config = ExpertConfig(experts={layer.layer_index: [1]}, base_model=identity_of(model.config))
    ESFTAdapter(config, tensors, dict.fromkeys(tensors, layer.layer_index)).save_pretrained(out)
    return out


@functools.cache
def _build(root: Path) -> ServingAssets:
    torch.manual_seed(0)
    model_dir = build_toy_model(root / "base", family="deepseek_v2", layers=2, experts=8, top_k=2, hidden=64)
    adapters = {
        "math": _train(model_dir, root, "math", "math"),
        "words": _train(model_dir, root, "words", "words"),
        "dense": _train(model_dir, root, "dense", "words", train_shared_experts=True),
        "alien": _alien_adapter(root / "alien"),
    }
    return ServingAssets(model_dir, adapters)


_ROOT: list[Path] = []


def serving_assets(tmp_path_factory) -> ServingAssets:
    """The session's assets, built on first use."""
    if not _ROOT:
        _ROOT.append(tmp_path_factory.mktemp("serving"))
    return _build(_ROOT[0])
