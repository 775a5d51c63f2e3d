"""Expert scores equal a naive reference computed from the captured routing, for every core family."""

from __future__ import annotations

import pytest
import torch

from esft.config import ScoringConfig
from esft.data.formats import read_examples
from esft.data.tokenize import tokenize_examples
from esft.models.discovery import find_moe_layers
from esft.models.loading import load_model
from esft.scoring.scores import score_experts
from tests.conftest import CORE_FAMILIES


def _naive_scores(model, examples, response_only: bool):
    """Paper Eq. 5/6 with explicit loops, one unpadded sequence at a time."""
    layers = find_moe_layers(model)
    seen: dict[int, tuple] = {}
    hooks = [
        layer.experts(model).register_forward_pre_hook(
            lambda m, args, i=layer.layer_index: seen.__setitem__(i, (args[1].clone(), args[2].clone()))
        )
        for layer in layers
    ]
    token = {ly.layer_index: torch.zeros(ly.num_experts, dtype=torch.float64) for ly in layers}
    gate = {ly.layer_index: torch.zeros(ly.num_experts, dtype=torch.float64) for ly in layers}
    n_seq = 0
    with torch.no_grad():
        for ex in examples:
            keep = [y != -100 for y in ex.labels] if response_only else [True] * len(ex.input_ids)
            if not any(keep):
                continue
            n_seq += 1
            model(input_ids=torch.tensor([ex.input_ids]), use_cache=False)
            for i, (ids, weights) in seen.items():
                k, length = ids.shape[-1], sum(keep)
                for t in range(ids.shape[0]):
                    if keep[t]:
                        for j in range(k):
                            token[i][int(ids[t, j])] += 1.0 / k / length
                            gate[i][int(ids[t, j])] += float(weights[t, j]) / length
    for h in hooks:
        h.remove()
    return {i: (token[i] / n_seq, gate[i] / n_seq) for i in token}


@pytest.mark.parametrize("response_only", [False, True])
@pytest.mark.parametrize("family", CORE_FAMILIES)
def test_scores_match_naive_reference(family, response_only, model_dirs, chat_data):
    model, tokenizer = load_model(model_dirs(family))
    examples, _ = tokenize_examples(read_examples(chat_data), tokenizer, seq_len=256, overflow="truncate")
    scores = score_experts(
        model,
        examples,
        ScoringConfig(batch_size=5, response_only=response_only),
        pad_token_id=tokenizer.pad_token_id,
    )
    reference = _naive_scores(model, examples, response_only)
    assert scores.n_sequences == len(examples)
    for i, (token, gate) in reference.items():
        layer = scores.layers[i]
        torch.testing.assert_close(torch.tensor(layer.token, dtype=torch.float64), token, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(torch.tensor(layer.gate_raw, dtype=torch.float64), gate, rtol=1e-4, atol=1e-7)
        assert sum(layer.token) == pytest.approx(1.0)
        assert sum(layer.gate) == pytest.approx(1.0)


def test_group_limited_routing_is_captured_not_recomputed(model_dirs, chat_data):
    """DeepSeek-V2 group-limited routing: scores come from the real choices, never top-k of logits."""
    model, tokenizer = load_model(
        model_dirs("deepseek_v2", experts=8, topk_method="group_limited_greedy", n_group=4, topk_group=1)
    )
    examples, _ = tokenize_examples(read_examples(chat_data), tokenizer, seq_len=256, overflow="truncate")
    scores = score_experts(model, examples, ScoringConfig(batch_size=4, response_only=False),
                           pad_token_id=tokenizer.pad_token_id)
    reference = _naive_scores(model, examples, False)
    for i, (token, _) in reference.items():
        torch.testing.assert_close(torch.tensor(scores.layers[i].token, dtype=torch.float64), token)


def test_token_budget_stops_early_and_padding_never_counts(model_dirs, chat_data):
    model, tokenizer = load_model(model_dirs("qwen3_moe"))
    examples, _ = tokenize_examples(read_examples(chat_data), tokenizer, seq_len=256, overflow="truncate")
    budget = sum(len(e.input_ids) for e in examples[:3])
    scores = score_experts(
        model,
        examples,
        ScoringConfig(batch_size=2, n_sample_tokens=budget, response_only=False),
        pad_token_id=tokenizer.pad_token_id,
    )
    assert scores.n_sequences == 3
    assert scores.n_tokens == budget  # padding of the shorter sequences is not counted


def test_scoring_builds_no_autograd_graph(model_dirs, chat_data):
    model, tokenizer = load_model(model_dirs("mixtral"))
    examples, _ = tokenize_examples(read_examples(chat_data), tokenizer, seq_len=256, overflow="truncate")
    grads_before = [p.grad for p in model.parameters()]
    score_experts(model, examples, ScoringConfig(batch_size=8), pad_token_id=tokenizer.pad_token_id)
    assert all(g is None for g in grads_before) and all(p.grad is None for p in model.parameters())


def test_answer_token_scoring_is_the_default():
    """docs/results.md: answer-token scoring chose fewer experts that trained to a lower loss."""
    assert ScoringConfig().response_only is True
    assert ScoringConfig(response_only=False).response_only is False
