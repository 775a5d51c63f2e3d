"""The method comparison: pretrain (or reuse) the base, analyse routing, select experts, sweep, seed, aggregate.

Protocol, the same for every method: one fixed data set and step budget per task; each method sweeps its
own learning-rate grid with seed 0 and keeps the rate with the best validation exact match (ties broken
by the lower validation loss, never by the rate); the kept rate then runs with the other seeds; test and
general scores are reported as mean ± std over seeds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esft.config import SelectionConfig
from esft.models.loading import load_model
from esft.selection import select_experts
from esft.synthetic.pretrain import PretrainConfig, build_model, cached_report, pretrain
from esft.synthetic.pretrained import install
from esft.synthetic.tasks import TASKS, sample_rows, task_splits
from research.cache import RunCache
from research.routing import RoutingReport, analyse, plot_concentration, plot_overlap, task_scores
from research.runs import EVALUATION, Job, Method, Sizes, run_job

ESFT_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
FFT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LORA_LRS = (1e-3, 3e-3, 1e-2, 3e-2)

# fmt: off
METHODS: tuple[Method, ...] = (
    Method("ESFT-Token", "esft", ESFT_LRS, "token", 0.2),
    Method("ESFT-Gate", "esft", ESFT_LRS, "gate", 0.1),
    Method("ESFT-Token (answer)", "esft", ESFT_LRS, "token", 0.2, response_only=True),
    Method("ESFT-Gate (answer)", "esft", ESFT_LRS, "gate", 0.1, response_only=True),
    Method("Random experts", "esft", ESFT_LRS, "token", 0.2, random_experts=True),
    Method("ESFT-Token +shared", "esft", ESFT_LRS, "token", 0.2, shared_experts=True),
    Method("ESFT-Token +non-expert", "esft", ESFT_LRS, "token", 0.2, non_expert_modules=True),
    Method("ESFT-LoRA (answer)", "esft_lora", LORA_LRS, "token", 0.2, response_only=True),
    Method("FFT", "fft", FFT_LRS),
    Method("LoRA", "lora", LORA_LRS),
    Method("LoRA (experts)", "lora_experts", LORA_LRS),
)
# fmt: on
BASE = Method("Base", "base", (0.0,))


@dataclass
class ComparisonConfig:
    """What the comparison runs; ``small()`` is the seconds-long configuration of the tests."""

    model_dir: str = ".esft/experiments/toy-moe"
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    tasks: tuple[str, ...] = ("reverse_plus", "facts_new", "keyword")
    methods: tuple[Method, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 150
    batch_size: int = 16
    sizes: Sizes = field(default_factory=Sizes)
    routing_rows: int = 400  # rows per task for the routing analysis (two halves of 200)
    scoring_rows: int = 1024  # training rows scored to select experts (~30k tokens)
    cache_file: str | None = "runs_cache.jsonl"  # in model_dir; finished runs are reused (None: never)
    workers: int = 2
    threads: int = 1

    @classmethod
    def small(cls, model_dir: str) -> ComparisonConfig:
        tiny = PretrainConfig(layers=2, hidden=32, experts=8, top_k=2, shared_experts=1, n_group=1, topk_group=1,
                              steps=20, batch_size=8, warmup_steps=2)
        methods = tuple(replace(m, learning_rates=m.learning_rates[1:3]) for m in METHODS)
        return cls(model_dir=model_dir, pretrain=tiny, tasks=("reverse_plus",), methods=methods, seeds=(0, 1), steps=2,
                   batch_size=4, sizes=Sizes(16, 8, 8, 4), routing_rows=16, workers=1)


def _selections(model, tokenizer, task: str, config: ComparisonConfig) -> dict[str, dict[int, list[int]]]:
    """Experts chosen on the task's training rows for every (score function, token set) pair in use."""
    rows = task_splits(task, config.sizes.n_train, 1, 1).train[: config.scoring_rows]
    selections: dict[str, dict[int, list[int]]] = {}
    for method in config.methods:
        if not method.trains_selected_experts or method.selection_key in selections:
            continue
        scores = task_scores(model, tokenizer, rows, response_only=method.response_only)
        chosen = select_experts(scores, SelectionConfig(method.score_function, method.top_p))
        selections[method.selection_key] = chosen.experts
    return selections


def random_experts(like: dict[int, list[int]], num_experts: int, seed: int) -> dict[int, list[int]]:
    """Random expert ids with the same count per layer as ``like`` (reproducible for ``seed``)."""
    rng = random.Random(f"random-experts-{seed}")
    return {layer: sorted(rng.sample(range(num_experts), len(ids))) for layer, ids in like.items()}


def _job(config: ComparisonConfig, method: Method, task: str, lr: float, seed: int, sel: dict) -> Job:
    experts: dict[int, list[int]] = {}
    if method.trains_selected_experts:
        experts = sel[method.selection_key]
        if method.random_experts:
            experts = random_experts(experts, config.pretrain.experts, seed)
    return Job(config.model_dir, method, task, lr, seed, config.steps, config.batch_size, config.sizes, experts,
               config.threads)


def _note(log: Callable[[str], None], result: dict[str, Any], cached: bool) -> None:
    log(f"  {result['task']:<10} {result['method']:<24} lr={result['learning_rate']:.0e} seed={result['seed']} "
        f"val={result['val_accuracy']:.3f} test={result['test_accuracy']:.3f} general={result['general_mean']:.3f}"
        f"{' (cached)' if cached else ''}")


def _run_all(jobs: list[Job], workers: int, log: Callable[[str], None], cache: RunCache) -> list[dict[str, Any]]:
    """Run the jobs the cache lacks (in this process with one worker, else in a spawned process pool)."""
    todo = [job for job in jobs if cache.get(job) is None]
    for job in jobs:
        if job not in todo:
            _note(log, cache.get(job), cached=True)
    if workers <= 1:
        fresh = map(run_job, todo)
        for job, result in zip(todo, fresh, strict=True):
            _note(log, cache.put(job, result), cached=False)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for job, result in zip(todo, pool.map(run_job, todo), strict=True):
                _note(log, cache.put(job, result), cached=False)
    return [cache.get(job) for job in jobs]


def best_rate(sweep: Iterable[dict[str, Any]]) -> float:
    """The learning rate with the best validation accuracy; ties go to the lower validation loss."""
    return min(sweep, key=lambda r: (-r["val_accuracy"], r["val_loss"]))["learning_rate"]


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def aggregate(runs: list[dict[str, Any]], chosen: dict[tuple[str, str], float]) -> list[dict[str, Any]]:
    """One row per (task, method): the chosen rate and mean ± std over seeds of every number."""
    rows = []
    for (task, method), lr in chosen.items():
        picked = [r for r in runs if r["task"] == task and r["method"] == method and r["learning_rate"] == lr]
        row: dict[str, Any] = {"task": task, "method": method, "learning_rate": lr, "n_seeds": len(picked)}
        for key in ("test_accuracy", "general_mean", "val_accuracy", "val_loss", "train_seconds", "final_loss",
                    "peak_rss_delta_bytes", "optimizer_state_bytes", "trainable_parameters", "total_parameters",
                    "adapter_bytes", "n_experts"):
            values = [r[key] for r in picked if r.get(key) is not None]
            if values:
                row[key] = _mean_std(values)
        rows.append(row)
    return rows


def _routing(model, tokenizer, config: ComparisonConfig, out_dir: Path) -> tuple[RoutingReport, RoutingReport]:
    """Routing of the pretrained model (plotted) and, as a control, of the same model before pretraining."""
    names = [t for t in TASKS if TASKS[t].kind == "general"] + list(config.tasks)
    rows = {name: sample_rows(TASKS[name], config.routing_rows, seed=5) for name in dict.fromkeys(names)}
    report = analyse(model, tokenizer, rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_concentration(report, out_dir / "routing_concentration.png")
    plot_overlap(report, out_dir / "routing_overlap.png")
    return report, analyse(build_model(config.pretrain).eval(), tokenizer, rows)


def run_comparison(config: ComparisonConfig, plots_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole comparison; returns everything the report needs (JSON-ready)."""
    start = time.perf_counter()
    torch.set_num_threads(config.threads)
    if config.pretrain == PretrainConfig() and cached_report(config.model_dir, config.pretrain) is None:
        log(f"installing the shipped pretrained toy (default PretrainConfig) in {config.model_dir}")
        install(config.model_dir)  # the quickstart's base: bf16 weights of this very pretraining, as fp32
    pretrain_report = pretrain(config.model_dir, config.pretrain, log=log)
    model, tokenizer = load_model(config.model_dir, dtype="float32", device="cpu")
    routing, routing_init = _routing(model, tokenizer, config, plots_dir)
    log(f"routing: {routing.summary()}; before pretraining: {routing_init.summary()}")
    selections = {task: _selections(model, tokenizer, task, config) for task in config.tasks}
    cache = RunCache(Path(config.model_dir) / config.cache_file if config.cache_file else None,
                     pretrain_report["config_key"])
    base = _run_all([_job(config, BASE, t, 0.0, 0, {}) for t in config.tasks], 1, log, cache)
    sweep_jobs = [_job(config, m, t, lr, config.seeds[0], selections[t])
                  for t in config.tasks for m in config.methods for lr in m.learning_rates]
    sweep = _run_all(sweep_jobs, config.workers, log, cache)
    chosen = {(t, m.name): best_rate(r for r in sweep if r["task"] == t and r["method"] == m.name)
              for t in config.tasks for m in config.methods}
    methods = {m.name: m for m in config.methods}
    seed_jobs = [_job(config, methods[m], t, lr, s, selections[t])
                 for (t, m), lr in chosen.items() for s in config.seeds[1:]]
    runs = sweep + _run_all(seed_jobs, config.workers, log, cache)
    return {"config": _config_dict(config), "pretrain": pretrain_report, "evaluation": EVALUATION,
            "routing": asdict(routing),
            "routing_init": asdict(routing_init), "routing_summary": routing.summary(),
            "selections": _selection_counts(selections), "base": base,
            "sweep": sweep, "runs": runs, "table": aggregate(runs, chosen),
            "seconds": round(time.perf_counter() - start, 1)}


def _selection_counts(selections: dict[str, dict[str, dict[int, list[int]]]]) -> dict[str, Any]:
    return {task: {key: {str(layer): ids for layer, ids in experts.items()} for key, experts in by_key.items()}
            for task, by_key in selections.items()}


def _config_dict(config: ComparisonConfig) -> dict[str, Any]:
    data = asdict(config)
    data["methods"] = [asdict(m) for m in config.methods]
    return json.loads(json.dumps(data))
