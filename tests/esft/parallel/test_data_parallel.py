"""Two processes (gloo, CPU) train the same experts as one process accumulating the same micro-batches."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from esft import workflows
from esft.config import ScoringConfig, SelectionConfig, TrainingConfig
from esft.constants import ADAPTER_WEIGHTS_NAME


def _rank_main(rank: int, world_size: int, rendezvous: str, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        model_dir, data, experts, out = args
        workflows.train(
            model_dir,
            data,
            experts,
            out,
            TrainingConfig(max_steps=4, batch_size=2, learning_rate=1e-2, weight_decay=0.01, seed=1),
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_rank_with_accumulation(model_dirs, chat_data, tmp_path):
    model_dir = model_dirs("qwen3_moe")
    workflows.score(model_dir, chat_data, tmp_path / "scores.json", ScoringConfig(batch_size=8))
    workflows.select(tmp_path / "scores.json", SelectionConfig("token", 0.3), tmp_path / "experts.json")
    experts = tmp_path / "experts.json"
    mp.spawn(
        _rank_main,
        args=(2, str(tmp_path / "rdzv"), (model_dir, chat_data, experts, tmp_path / "ddp")),
        nprocs=2,
        join=True,
    )
    workflows.train(
        model_dir,
        chat_data,
        experts,
        tmp_path / "single",
        TrainingConfig(max_steps=4, batch_size=2, grad_accum_steps=2, learning_rate=1e-2, weight_decay=0.01, seed=1),
    )
    ddp = load_file(str(tmp_path / "ddp" / ADAPTER_WEIGHTS_NAME))
    single = load_file(str(tmp_path / "single" / ADAPTER_WEIGHTS_NAME))
    assert ddp.keys() == single.keys()
    for key in ddp:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-3, atol=1e-5)  # summation order differs
    metrics = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4  # written once, by rank 0
