"""Training checkpoints: trained tensors, AdamW state, RNG and data position, in safetensors and JSON.

Nothing is pickled. A checkpoint directory is written beside its final name and renamed into place, so
``latest_checkpoint`` never returns a half-written one; resuming from it continues bit-identically.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from esft.constants import CHECKPOINT_SCHEMA, CHECKPOINT_STATE_NAME, CHECKPOINT_TENSORS_NAME, CHECKPOINTS_DIR
from esft.errors import CheckpointError
from esft.io import atomic_directory, write_json_atomic

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where training stands: optimizer steps done and the next micro-batch of the current epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    trained_tokens: int = 0


def save_checkpoint(
    out_dir: str | Path,
    state: TrainerState,
    masters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    run_config: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``out_dir/checkpoints/step-N`` and keep only the newest ``keep`` checkpoints."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    final = root / f"step-{state.step}"
    tensors, param_index = _flatten(masters, optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "schema": CHECKPOINT_SCHEMA,
        "state": asdict(state),
        "param_index": param_index,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "python_random": _jsonable(random.getstate()),
        "run_config": run_config,
    }
    with atomic_directory(final, overwrite=True) as tmp:
        save_file(tensors, str(tmp / CHECKPOINT_TENSORS_NAME))
        write_json_atomic(tmp / CHECKPOINT_STATE_NAME, meta)
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _flatten(masters: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer):
    """Tensors keyed by name; optimizer state keyed by the trained tensor's name, not by position."""
    tensors: dict[str, torch.Tensor] = {}
    name_of = {id(p): name for name, p in masters.items()}
    param_index = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = name_of[id(p)]
            param_index.append(name)
            tensors[f"param.{name}"] = p.detach().cpu().contiguous()
            for key, value in optimizer.state.get(p, {}).items():
                value = value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
                tensors[f"optim.{name}.{key}"] = value
    return tensors, param_index


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / CHECKPOINT_STATE_NAME).is_file()]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: str | Path,
    masters: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    run_config: dict[str, Any],
) -> TrainerState:
    """Restore trained tensors, optimizer state and RNG from ``path``; returns the trainer state.

    Raises:
        CheckpointError: the checkpoint belongs to a run with different data, experts or hyperparameters.
    """
    path = Path(path)
    meta = json.loads((path / CHECKPOINT_STATE_NAME).read_text())
    if meta.get("run_config") != run_config:
        changed = sorted(k for k in set(run_config) | set(meta.get("run_config", {}))
                         if run_config.get(k) != meta.get("run_config", {}).get(k))
        raise CheckpointError(
            f"checkpoint {path} was written by a run with different settings ({', '.join(changed)}); "
            "resume with the same settings or start in a new output directory",
            param="resume",
        )
    tensors = load_file(str(path / CHECKPOINT_TENSORS_NAME))
    params = {id(p): name for name, p in masters.items()}
    with torch.no_grad():
        for name, p in masters.items():
            p.copy_(tensors[f"param.{name}"])
    state_dict = {"state": {}, "param_groups": []}
    index = 0
    for group, saved in zip(optimizer.param_groups, meta["param_groups"], strict=True):
        ids = []
        for p in group["params"]:
            name = params[id(p)]
            prefix = f"optim.{name}."
            entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if entry:
                state_dict["state"][index] = entry
            ids.append(index)
            index += 1
        state_dict["param_groups"].append({**saved, "params": ids})
    optimizer.load_state_dict(state_dict)
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(_tupled(meta["python_random"]))
    return TrainerState(**meta["state"])
