"""Task evaluation and retention through the serving engine on a tiny model and a hand-made adapter."""

from __future__ import annotations

import json

import pytest
import torch

from esft.adapters import ESFTAdapter
from esft.evaluation import EvalExample, evaluate_task, load_examples
from esft.evaluation.retention import GeneralFile, evaluate_retention
from esft.evaluation.task import generate_answers
from esft.expert_config import ExpertConfig
from esft.generation import generate_text
from esft.models.discovery import find_moe_layers
from esft.models.identity import identity_of
from esft.models.loading import load_model
from esft.serving import Engine, EngineConfig, dict_resolver

PROMPTS = [f"add {i} and {i + 3}" for i in range(6)]


def perturbed_adapter(model, out_dir, *, scale: float = 3.0, seed: int = 0):
    """An adapter replacing experts 0 and 1 of every MoE layer with heavily perturbed copies."""
    gen = torch.Generator().manual_seed(seed)
    tensors, rows, experts = {}, {}, {}
    for layer in find_moe_layers(model):
        experts[layer.layer_index] = [0, 1]
        for name in layer.expert_params:
            key = f"{layer.experts_name}.{name}"
            base = model.get_parameter(key)[[0, 1]].detach()
            tensors[key] = base + scale * torch.randn(base.shape, generator=gen, dtype=base.dtype)
            rows[key] = layer.layer_index
    config = ExpertConfig(experts=experts, base_model=identity_of(model.config))
    return ESFTAdapter(config, tensors, rows).save_pretrained(out_dir)


@pytest.fixture
def plain_model(model_dirs):
    """The base model outside any engine (the engine owns its model's expert forward)."""
    return load_model(model_dirs("deepseek_v2"), device="cpu")


@pytest.fixture
def engine(model_dirs, tmp_path):
    model, tokenizer = load_model(model_dirs("deepseek_v2"), device="cpu")
    adapter_dir = perturbed_adapter(model, tmp_path / "adapter")
    with Engine(model, tokenizer, resolver=dict_resolver({"tuned": adapter_dir}),
                config=EngineConfig(max_batch_size=16, max_new_tokens=8, device="cpu"), base_name="toy") as eng:
        yield eng


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_task_scores_greedy_answers_of_base_and_adapter(engine, plain_model):
    examples = [EvalExample([{"role": "user", "content": p}], "7") for p in PROMPTS]
    result = evaluate_task(engine, examples, ["exact_match", "chrf"], models={"base": "toy", "adapter": "tuned"},
                           max_new_tokens=6)
    # Greedy through the engine's batches equals greedy one prompt at a time.
    for row, prompt in zip(result.examples, PROMPTS, strict=True):
        expected = generate_text(*plain_model, [{"role": "user", "content": prompt}], max_new_tokens=6)
        assert row["base"].strip() == expected
    assert any(row["base"] != row["adapter"] for row in result.examples)
    for label in ("base", "adapter"):
        chrf = [row["scores"][label]["chrf"] for row in result.examples]
        assert result.summary[label]["chrf"] == {"mean": pytest.approx(sum(chrf) / 6), "ci95": None, "n_scored": 6}
    delta = result.delta["adapter"]["chrf"]
    assert delta["mean"] == pytest.approx(result.mean("adapter", "chrf") - result.mean("base", "chrf"))
    assert delta["ci95"] is None  # fewer than 20 examples
    assert set(result.to_dict(with_examples=False)) == {"metrics", "models", "n_examples", "summary", "delta"}


def test_retention_on_files_whose_base_answers_are_known(engine, tmp_path):
    """References are the base model's own greedy answers (base scores 100) or never produced (base 0)."""
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    known = generate_answers(engine.start(), prompts, ["toy", "tuned"], max_new_tokens=8)
    kept = sum(b == a for b, a in zip(known["toy"], known["tuned"], strict=True))
    own = _jsonl(tmp_path / "own.jsonl", [{"messages": [*m, {"role": "assistant", "content": a}]}
                                          for m, a in zip(prompts, known["toy"], strict=True)])
    never = _jsonl(tmp_path / "never.jsonl", [{"prompt": p, "completion": "zzzz"} for p in PROMPTS])
    files = [GeneralFile("own", own, "exact_match"), GeneralFile("never", never, "exact_match")]
    report, results = evaluate_retention(engine, files, models={"base": "toy", "adapter": "tuned"},
                                         max_new_tokens=8)
    own_row, never_row = report["files"]
    assert (own_row["base"], own_row["adapter"]) == (100.0, pytest.approx(100 * kept / 6))
    assert own_row["difference"] == pytest.approx(100 * kept / 6 - 100)
    assert own_row["ratio"] == pytest.approx(kept / 6)
    assert (never_row["base"], never_row["ratio"]) == (0.0, None)  # nothing to keep: no ratio
    assert report["average"]["base"] == 50.0
    assert report["average"]["ratio"] == pytest.approx((100 * kept / 6 + never_row["adapter"]) / 2 / 50)
    assert results["own"].examples[0]["base"] == known["toy"][0]
    assert len(load_examples(never, limit=2)) == 2
