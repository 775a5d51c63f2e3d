"""The training loop's policy under expert parallelism: gradient reduction, clipping and per-rank checkpoints.

A checkpoint ``checkpoints/step-N`` holds one ``rank-RRRRR.safetensors`` per rank that owns trained rows (one
replica of each expert block writes) plus ``trainer_state.json``. Every row and its AdamW moments are keyed by
the trained tensor's name and the GLOBAL expert id (``param.<name>@<id>``, ``optim.<name>@<id>.exp_avg``), so a
run resumes on any layout whose ``ep_size`` divides the expert count, as long as the global batch
(``batch_size * grad_accum_steps * world_size``) is unchanged. Nothing is pickled. The checkpoint directory is
filled beside its final name and renamed by rank 0 once every rank has written (a shared filesystem across
nodes is assumed, as for the adapter).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from esft.constants import CHECKPOINT_SCHEMA, CHECKPOINT_STATE_NAME, CHECKPOINTS_DIR
from esft.errors import CheckpointError, ESFTError
from esft.io import write_json_atomic
from esft.parallel.data_parallel import all_reduce_sum
from esft.parallel.expert_parallel import ExpertParallelESFT
from esft.training.checkpoint import TrainerState, _jsonable, _tupled, list_checkpoints

LAYOUT = "expert_parallel"


class ExpertParallelPolicy:
    """What the loop does differently under expert parallelism (``esft.training.loop`` calls these)."""

    def __init__(self, prepared: ExpertParallelESFT):
        self.prepared = prepared

    def reduce_gradients(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.prepared.reduce_gradients()

    def clip_grad_norm(self, params: list[torch.nn.Parameter], max_norm: float) -> float:
        return self.prepared.clip_grad_norm(max_norm)

    def after_update(self) -> None:
        """The trained rows changed (optimizer step, resume): refresh the frozen shards the forward reads."""
        self.prepared.refresh_shards()

    def run_config(self, run_config: dict[str, Any]) -> dict[str, Any]:
        return {**run_config, "ep_size": self.prepared.layout.ep_size}

    def count_parameters(self, counts: dict[str, int]) -> dict[str, int]:
        """The run's trainable count: the rows of every owner, each expert block counted once."""
        mine = counts["trainable"] if self.prepared.layout.replica == 0 else 0
        return {**counts, "trainable": int(all_reduce_sum(mine)[0])}

    def save_checkpoint(self, out_dir: Path, state: TrainerState, masters: dict, optimizer, run_config: dict,
                        keep: int = 2) -> Path:
        layout = self.prepared.layout
        root = Path(out_dir) / CHECKPOINTS_DIR
        final, partial = root / f"step-{state.step}", root / f".step-{state.step}.partial"
        if layout.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        dist.barrier()
        tensors = _rows(self.prepared, optimizer)
        if tensors or layout.rank == 0:
            tensors["rng.torch"] = torch.get_rng_state()
            save_file(tensors, str(partial / f"rank-{layout.rank:05d}.safetensors"))
        dist.barrier()
        if layout.rank == 0:
            write_json_atomic(partial / CHECKPOINT_STATE_NAME, {
                "schema": CHECKPOINT_SCHEMA, "layout": LAYOUT, "state": asdict(state),
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
                "python_random": _jsonable(random.getstate()), "run_config": run_config})
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            for old in list_checkpoints(out_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    def load_checkpoint(self, path: Path, masters: dict, optimizer, run_config: dict) -> TrainerState:
        meta = json.loads((Path(path) / CHECKPOINT_STATE_NAME).read_text())
        if meta.get("layout") != LAYOUT:
            raise CheckpointError(f"checkpoint {path} was written without expert parallelism; resume it without "
                                  "`--ep-size`", param="resume")
        check_resumable(meta["run_config"], run_config, path)
        files = sorted(Path(path).glob("rank-*.safetensors"))
        where = {}
        for file in files:
            with safe_open(str(file), "pt") as f:
                where.update({key: file for key in f.keys()})  # noqa: SIM118 (safe_open)
        ids = self.prepared.global_ids()
        state_dict: dict[str, Any] = {"state": {}, "param_groups": []}
        index = 0
        name_of = {id(p): n for n, p in masters.items()}
        with torch.no_grad():
            for group, saved in zip(optimizer.param_groups, meta["param_groups"], strict=True):
                positions = []
                for p in group["params"]:
                    name = name_of[id(p)]
                    p.copy_(_stack(where, [f"param.{name}@{g}" for g in ids[name]], p))
                    entry = {k: _stack(where, [f"optim.{name}@{g}.{k}" for g in ids[name]], p)
                             for k in ("exp_avg", "exp_avg_sq")}
                    if "optim.step" in where:
                        entry["step"] = _read(where, "optim.step")
                        state_dict["state"][index] = entry
                    positions.append(index)
                    index += 1
                state_dict["param_groups"].append({**saved, "params": positions})
        optimizer.load_state_dict(state_dict)
        own = Path(path) / f"rank-{self.prepared.layout.rank:05d}.safetensors"
        rng_file = own if own.exists() else Path(path) / "rank-00000.safetensors"
        with safe_open(str(rng_file), "pt") as f:
            torch.set_rng_state(f.get_tensor("rng.torch"))
        random.setstate(_tupled(meta["python_random"]))
        return TrainerState(**meta["state"])


def check_resumable(saved: dict[str, Any], current: dict[str, Any], path) -> None:
    """The run may continue on another layout only with the same global batch and everything else equal.

    Raises:
        ESFTError: code ``world_size_mismatch`` when the global batch changed with the world size.
        CheckpointError: another setting changed.
    """
    def global_batch(rc):
        t = rc["training"]
        return t["batch_size"] * t["grad_accum_steps"] * rc["world_size"]

    if global_batch(saved) != global_batch(current):
        raise ESFTError(
            f"checkpoint {path} was written with world size {saved['world_size']} and a global batch of "
            f"{global_batch(saved)} sequences; now {current['world_size']} ranks make {global_batch(current)}. "
            "Set `grad_accum_steps` so that batch_size * grad_accum_steps * world_size is unchanged",
            param="grad_accum_steps", code="world_size_mismatch")
    layout_keys = ("world_size", "ep_size")

    def rest(rc):
        return {**{k: v for k, v in rc.items() if k not in layout_keys},
                "training": {k: v for k, v in rc["training"].items() if k != "grad_accum_steps"}}

    if rest(saved) != rest(current):
        changed = sorted(k for k in set(rest(saved)) | set(rest(current)) if rest(saved).get(k) != rest(current).get(k))
        raise CheckpointError(f"checkpoint {path} was written by a run with different settings "
                              f"({', '.join(changed)}); resume with the same settings or start in a new output "
                              "directory", param="resume")


def _rows(prepared: ExpertParallelESFT, optimizer) -> dict[str, torch.Tensor]:
    """This rank's rows and AdamW moments by global expert id (only the first replica writes)."""
    if prepared.layout.replica != 0:
        return {}
    tensors: dict[str, torch.Tensor] = {}
    params = prepared.trainable_parameters()
    for name, ids in prepared.global_ids().items():
        p = params[name]
        state = optimizer.state.get(p, {})
        for row, g in enumerate(ids):
            tensors[f"param.{name}@{g}"] = p.detach()[row].cpu().contiguous()
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"optim.{name}@{g}.{key}"] = state[key][row].cpu().contiguous()
        if "step" in state and prepared.layout.rank == 0:  # AdamW steps every tensor together
            tensors["optim.step"] = state["step"].detach().cpu().reshape(())
    return tensors


def _read(where: dict[str, Path], key: str) -> torch.Tensor:
    with safe_open(str(where[key]), "pt") as f:
        return f.get_tensor(key)


def _stack(where: dict[str, Path], keys: list[str], like: torch.Tensor) -> torch.Tensor:
    missing = [k for k in keys if k not in where]
    if missing:
        raise CheckpointError(f"checkpoint lacks {missing[0]} (written for other experts?)", param="resume")
    if not keys:
        return torch.zeros_like(like)
    return torch.stack([_read(where, k) for k in keys]).to(like.dtype)
