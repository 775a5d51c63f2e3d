"""The comparison harness on a tiny configuration: pretraining cache, protocol helpers, the one command."""

from __future__ import annotations

import json

import pytest

from esft.models.loading import load_model
from esft.synthetic.pretrain import REPORT_NAME, pretrain
from research.comparison import best_rate, random_experts
from tests.research.conftest import TINY


def test_pretrained_model_loads_and_is_cached(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    assert model.config.model_type == "deepseek_v2" and len(tokenizer) == model.config.vocab_size
    report = json.loads((tiny_model_dir / REPORT_NAME).read_text())
    assert pretrain(tiny_model_dir, TINY, log=lambda _: None) == report  # no second training


def test_best_rate_breaks_ties_by_validation_loss_not_by_rate():
    sweep = [
        {"learning_rate": 1e-4, "val_accuracy": 0.5, "val_loss": 0.9},
        {"learning_rate": 1e-3, "val_accuracy": 0.5, "val_loss": 0.4},
        {"learning_rate": 1e-2, "val_accuracy": 0.2, "val_loss": 0.1},
    ]
    assert best_rate(sweep) == 1e-3


def test_random_experts_keep_per_layer_counts_and_vary_with_seed():
    like = {0: [1, 2, 3], 1: [5]}
    draws = [random_experts(like, 8, seed) for seed in range(4)]
    assert all({k: len(v) for k, v in d.items()} == {0: 3, 1: 1} for d in draws)
    assert len({json.dumps(d) for d in draws}) > 1 and draws[0] == random_experts(like, 8, 0)


def test_bench_small_writes_results_and_prints_json(tmp_path, capsys):
    from research import method_comparison as bench

    out_md, plots = tmp_path / "results.md", tmp_path / "results"
    summary = bench.main(
        ["--small", "--model-dir", str(tmp_path / "model"), "--out-md", str(out_md), "--plots", str(plots)]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads(json.dumps(summary))
    methods = {f"reverse_plus/{m}" for m in ("ESFT-Token", "FFT", "LoRA", "Random experts", "ESFT-LoRA (answer)",
                                             "LoRA (experts)")}
    assert methods <= set(summary["methods"])
    text = out_md.read_text()
    for heading in ("Routing is concentrated", "claims, checked", "Which scoring to use", "learning-rate sweep"):
        assert heading in text
    for png in ("routing_concentration.png", "routing_overlap.png", "method_comparison.png", "tradeoff.png",
                "sweep_tradeoff.png"):
        assert (plots / png).stat().st_size > 0 and f"results/{png}" in text
    raw = json.loads((plots / "method_comparison.json").read_text())
    assert {r["seed"] for r in raw["runs"]} == {0, 1}
    # every run carries the service's retention report, against the base model's own answers
    for run in raw["runs"]:
        average = run["retention"]["average"]
        assert average["adapter"] == pytest.approx(run["general_mean"] * 100) and average["difference"] is not None
    assert "General ability kept, as the service reports it" in text


def test_run_cache_persists_and_keys_on_what_determines_a_result(tmp_path):
    from dataclasses import replace

    from research.cache import RunCache
    from research.comparison import METHODS
    from research.runs import Job, Sizes

    job = Job("/a/model", METHODS[0], "keyword", 1e-3, 0, 10, 4, Sizes(8, 4, 4, 2), {0: [1, 2]})
    cache = RunCache(tmp_path / "cache.jsonl", model_key="m1")
    cache.put(job, {"test_accuracy": 0.5})
    reloaded = RunCache(tmp_path / "cache.jsonl", model_key="m1")
    same = replace(job, model_dir="/elsewhere", threads=2, method=replace(job.method, learning_rates=(9.0,)))
    assert reloaded.get(same) == {"test_accuracy": 0.5}
    assert reloaded.get(replace(job, learning_rate=3e-3)) is None and reloaded.get(replace(job, seed=1)) is None
    assert RunCache(tmp_path / "cache.jsonl", model_key="m2").get(job) is None
