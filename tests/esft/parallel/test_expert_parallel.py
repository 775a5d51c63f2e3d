"""ESFT under expert parallelism (gloo, CPU, processes spawned here): equal to one process on the same global batch.

Experts are sharded over the ranks by transformers' own EP (``DistributedConfig(ep_size=...)``); every trained
tensor, the loss curve and the scores must equal a single-process run within ||a-b||/||b|| <= 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from esft import workflows
from esft.adapters import ESFTAdapter, apply_adapter
from esft.adapters.swap import restore
from esft.config import ScoringConfig, TrainingConfig
from esft.constants import ADAPTER_WEIGHTS_NAME, METRICS_NAME
from esft.errors import ESFTError
from esft.models.loading import load_model
from esft.scoring.scores import ExpertScores
from tests.conftest import write_chat_jsonl

TOLERANCE = 1e-5
DEEPSEEK = {"topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2}  # group-limited routing
EXPERTS = {"experts": {"0": [1, 6], "1": [2, 3, 5]}}  # rank 0 of 2 owns 0-3, rank 1 owns 4-7


def _config(world_size: int, **overrides) -> TrainingConfig:
    """5 AdamW steps; the global batch is 2 sequences x 2 micro-batches whatever the world size."""
    values = {"max_steps": 5, "batch_size": 2, "grad_accum_steps": max(1, 2 // world_size), "learning_rate": 1e-3,
              "weight_decay": 0.01, "max_grad_norm": 0.05, "seed": 1, **overrides}
    return TrainingConfig(**values)


def _rank_main(rank: int, world_size: int, rendezvous: str, job: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        if job.get("score"):
            workflows.score(job["model"], job["data"], job["score"], ScoringConfig(batch_size=4),
                            ep_size=job["ep_size"])
        calls = []

        def stop() -> bool:
            calls.append(1)
            return len(calls) == job.get("stop_at")

        try:
            workflows.train(job["model"], job["data"], job["experts"], job["out"],
                            _config(world_size, **job.get("config", {})), resume=job.get("resume", False),
                            should_stop=stop, ep_size=job["ep_size"])
        except ESFTError as exc:
            if rank == 0:
                Path(job["out"], "error.json").write_text(json.dumps({"code": exc.code, "message": exc.message}))
    finally:
        dist.destroy_process_group()


def _spawn(world_size: int, tmp_path: Path, job: dict, main=None, timeout_s: float = 240) -> None:
    """Run ``main`` (default ``_rank_main``) on ``world_size`` processes; fail if they are not done in time."""
    rendezvous = tmp_path / f"rdzv-{os.urandom(4).hex()}"
    context = mp.spawn(main or _rank_main, args=(world_size, str(rendezvous), job), nprocs=world_size, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{world_size} ranks did not finish within {timeout_s} s (a rank left a collective?)")


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / METRICS_NAME).read_text().splitlines()]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in b:
        error = float((a[key].double() - b[key].double()).norm() / b[key].double().norm())
        assert error <= TOLERANCE, (key, error)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / ADAPTER_WEIGHTS_NAME))


@pytest.fixture
def experts_file(tmp_path) -> Path:
    path = tmp_path / "experts.json"
    path.write_text(json.dumps(EXPERTS))
    return path


@pytest.fixture
def data_file(tmp_path) -> Path:
    return write_chat_jsonl(tmp_path / "train.jsonl")


def _single(model_dir, data, experts, out: Path, **overrides) -> Path:
    workflows.train(model_dir, data, experts, out, _config(1, **overrides))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("family, options", [("qwen3_moe", {}), ("deepseek_v2", DEEPSEEK)], ids=["qwen3_moe",
                                                                                                 "deepseek_v2"])
def test_two_ranks_train_and_score_like_one_process(family, options, model_dirs, data_file, experts_file, tmp_path):
    model_dir = model_dirs(family, **options)
    single = _single(model_dir, data_file, experts_file, tmp_path / "single")
    reference_scores = workflows.score(model_dir, data_file, tmp_path / "scores-1.json", ScoringConfig(batch_size=4))
    _spawn(2, tmp_path, {"model": model_dir, "data": data_file, "experts": experts_file, "out": tmp_path / "ep",
                         "ep_size": 2, "score": tmp_path / "scores-2.json"})
    _assert_close(_weights(tmp_path / "ep"), _weights(single))
    torch.testing.assert_close(_losses(tmp_path / "ep"), _losses(single), rtol=TOLERANCE, atol=0)
    scores = ExpertScores.load(tmp_path / "scores-2.json")
    assert (scores.n_tokens, scores.n_sequences) == (reference_scores.n_tokens, reference_scores.n_sequences)
    for layer, expected in reference_scores.layers.items():
        torch.testing.assert_close(scores.layers[layer].token, expected.token, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(scores.layers[layer].gate, expected.gate, rtol=1e-12, atol=1e-15)
    # the one adapter applies and restores like any other
    model, _ = load_model(model_dir, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    applied = apply_adapter(model, ESFTAdapter.from_pretrained(tmp_path / "ep"))
    experts = model.get_submodule("model.layers.1.mlp.experts")
    trained = _weights(single)["model.layers.1.mlp.experts.gate_up_proj"]
    torch.testing.assert_close(experts.gate_up_proj[[2, 3, 5]], trained, rtol=TOLERANCE, atol=1e-7)
    restore(model, applied)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_resume_under_expert_parallelism_and_after_a_world_size_change(model_dirs, data_file, experts_file, tmp_path):
    model_dir = model_dirs("qwen3_moe")
    job = {"model": model_dir, "data": data_file, "experts": experts_file, "ep_size": 2}
    _spawn(2, tmp_path, {**job, "out": tmp_path / "whole"})
    _spawn(2, tmp_path, {**job, "out": tmp_path / "resumed", "stop_at": 2})  # checkpoint at step 2, then stop
    assert not (tmp_path / "resumed" / ADAPTER_WEIGHTS_NAME).exists()
    for copy in ("moved", "refused"):
        shutil.copytree(tmp_path / "resumed", tmp_path / copy)
    _spawn(2, tmp_path, {**job, "out": tmp_path / "resumed", "resume": True})
    _assert_close(_weights(tmp_path / "resumed"), _weights(tmp_path / "whole"))
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "whole"), rel=TOLERANCE)

    # the step-2 checkpoint continues on one rank (ep_size 1) with the global batch kept by accumulation...
    _spawn(1, tmp_path, {**job, "out": tmp_path / "moved", "resume": True, "ep_size": 1})
    _assert_close(_weights(tmp_path / "moved"), _weights(tmp_path / "whole"))
    # ...but not with a different global batch
    _spawn(1, tmp_path, {**job, "out": tmp_path / "refused", "resume": True, "ep_size": 1,
                         "config": {"grad_accum_steps": 1}})
    assert json.loads((tmp_path / "refused" / "error.json").read_text())["code"] == "world_size_mismatch"


def _starved_rank_main(rank: int, world_size: int, rendezvous: str, job: dict) -> None:
    """Rank 1's selected expert 5 never receives a token (the router's choices of it go to expert 0)."""
    from esft.config import TrainingConfig
    from esft.data.formats import read_examples
    from esft.data.tokenize import tokenize_examples
    from esft.parallel.expert_parallel import get_esft_model_expert_parallel, load_expert_parallel
    from esft.training.loop import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    try:
        model, tokenizer = load_expert_parallel(job["model"], ep_size=2)

        def never_five(module, args, output):
            logits, weights, index = output
            return logits, weights, torch.where(index == 5, torch.zeros_like(index), index)

        for layer in model.model.layers:
            layer.mlp.gate.register_forward_hook(never_five)
        prepared = get_esft_model_expert_parallel(model, {"experts": {"0": [1], "1": [5]}})
        data, _ = tokenize_examples(read_examples(job["data"]), tokenizer, seq_len=64, overflow="truncate")
        starved = prepared.owned[1].masters["gate_up_proj"]
        initial = starved.detach().clone()
        train(prepared, data, TrainingConfig(max_steps=2, batch_size=2), pad_token_id=tokenizer.pad_token_id)
        if rank == 1:  # expert 5 stepped with zero gradients: unchanged
            assert prepared.owned[1].global_ids == [5] and torch.equal(starved, initial)
        Path(job["out"], f"done-{rank}").write_text("ok")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_rank_whose_selected_experts_get_no_tokens_finishes(model_dirs, data_file, tmp_path):
    _spawn(2, tmp_path, {"model": model_dirs("qwen3_moe"), "data": data_file, "out": tmp_path}, _starved_rank_main,
           timeout_s=180)
    assert (tmp_path / "done-0").exists() and (tmp_path / "done-1").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("family", "options", "ep_size"), [("deepseek_v2", DEEPSEEK, 2), ("qwen3_moe", {}, 4)],
                         ids=["deepseek_v2-ep2", "qwen3_moe-ep4"])
def test_four_ranks(family, options, ep_size, model_dirs, data_file, experts_file, tmp_path):
    """4 ranks: ep_size 2 (two replicas of each expert block, gradients summed across replicas only) and
    ep_size 4 (two experts per rank; in layer 0 ranks 1 and 2 own no selected expert)."""
    model_dir = model_dirs(family, **options)
    single = _single(model_dir, data_file, experts_file, tmp_path / "single", grad_accum_steps=4)
    _spawn(4, tmp_path, {"model": model_dir, "data": data_file, "experts": experts_file, "out": tmp_path / "ep",
                         "ep_size": ep_size})
    _assert_close(_weights(tmp_path / "ep"), _weights(single))
    torch.testing.assert_close(_losses(tmp_path / "ep"), _losses(single), rtol=TOLERANCE, atol=0)


def test_layouts_and_resumes_that_cannot_work_are_refused_with_their_codes():
    from esft.errors import CheckpointError
    from esft.parallel.expert_checkpoint import check_resumable
    from esft.parallel.expert_parallel import check_layout

    with pytest.raises(ESFTError, match="ep_size") as refused:
        check_layout(world_size=4, ep_size=3, num_experts=8)
    assert refused.value.code == "world_size_mismatch"
    saved = {"training": {"batch_size": 2, "grad_accum_steps": 1, "learning_rate": 1e-3}, "world_size": 4, "ep_size": 4}
    check_resumable(saved, {**saved, "training": {**saved["training"], "grad_accum_steps": 2}, "world_size": 2,
                            "ep_size": 2}, "ckpt")  # same global batch on half the ranks: fine
    with pytest.raises(ESFTError) as refused:
        check_resumable(saved, {**saved, "world_size": 2}, "ckpt")
    assert refused.value.code == "world_size_mismatch" and refused.value.param == "grad_accum_steps"
    with pytest.raises(CheckpointError, match="training"):
        check_resumable(saved, {**saved, "training": {**saved["training"], "learning_rate": 1e-4}}, "ckpt")
