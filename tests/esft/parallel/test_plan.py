"""``esft plan``: memory per rank from a config alone, and the smallest layout that fits."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from esft.cli import app
from esft.errors import ConfigError
from esft.expert_config import ExpertConfig
from esft.models.toy import toy_config
from esft.parallel import plan


def test_memory_per_rank_falls_as_ranks_grow_and_counts_the_busiest_owner():
    sizes = plan.model_sizes(toy_config("qwen3_moe", layers=2, experts=8))
    assert sizes.num_experts == 8 and sizes.expert == 8 * sum(sizes.per_expert.values())
    experts = ExpertConfig(experts={0: [0, 1, 2], 1: [7]})  # 3 of layer 0's rows live in block 0 when ep=2
    one = plan.rank_memory(sizes, experts, nodes=1, gpus_per_node=1, ep_size=1)
    two = plan.rank_memory(sizes, experts, nodes=1, gpus_per_node=2, ep_size=2)
    assert one.frozen_weights == 2 * sizes.total  # bf16, whole
    assert two.trained_rows == 4 * 3 * sizes.per_expert[0] and two.adamw_state == 3 * two.trained_rows
    four = plan.rank_memory(sizes, experts, nodes=1, gpus_per_node=4, ep_size=4)
    assert four.frozen_weights < two.frozen_weights < one.frozen_weights


def test_the_smallest_layout_is_the_first_that_fits():
    sizes = plan.model_sizes(toy_config("deepseek_v2", layers=2, experts=8))
    experts = plan.uniform_selection(8, sorted(sizes.per_expert), 0.5)
    big = plan.rank_memory(sizes, experts, nodes=1, gpus_per_node=1, ep_size=1, batch_tokens=64)
    fits, tried = plan.smallest_layout(sizes, experts, gpus_per_node=4, gpu_memory=int(big.total / 0.9) + 1,
                                       batch_tokens=64)
    assert (fits.nodes, fits.gpus_per_node) == (1, 1) and len(tried) == 1
    fits, tried = plan.smallest_layout(sizes, experts, gpus_per_node=4, gpu_memory=1, batch_tokens=64, max_nodes=2)
    assert fits is None and len(tried) == 4  # 1, 2 devices, then 1 and 2 nodes of 4


def test_gpu_memory_sizes_parse_or_name_the_flag():
    assert plan.parse_bytes("80GiB") == 80 * 2**30 and plan.parse_bytes("1.5 GB") == 1_500_000_000
    with pytest.raises(ConfigError, match="gpu_memory"):
        plan.parse_bytes("lots")


def test_plan_command_prints_the_layout(tmp_path):
    toy_config("qwen3_moe", layers=2, experts=8).save_pretrained(tmp_path)
    result = CliRunner().invoke(app, ["plan", "--model", str(tmp_path), "--gpus-per-node", "8", "--gpu-memory",
                                      "1GiB", "--seq-len", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["fits"]["nodes"] == 1 and report["fits"]["total"] <= 0.9 * 2**30
