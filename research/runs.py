"""One fine-tuning run of the comparison: a method, a task, a learning rate and a seed, trained and evaluated.

``run_job`` is a top-level function of picklable arguments so the comparison can fan runs out to worker
processes. Every method is prepared by its folder in ``esft.methods`` and trained by the library's one
loop (``esft.train``), with the same batches, optimizer and schedule.

Test and general scores come from the service's evaluation machinery: greedy answers batched through the
serving engine (``esft.evaluation.task.generate_answers``), scored by ``exact_match_strict`` and, for the
general skills, turned into a retention report by ``esft.evaluation.retention.score_retention``, exactly as
a job's evaluate step does. Validation (which picks the learning rate) uses the teacher-forced exact match,
the same strict criterion in one forward pass, because it also gives the loss that breaks ties.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from esft.config import TrainingConfig
from esft.evaluation import exact_match, tokenize_rows
from esft.evaluation.retention import GeneralFile, score_retention
from esft.evaluation.task import EvalExample, generate_answers, score_answers
from esft.expert_config import ExpertConfig
from esft.generation import stop_token_ids
from esft.methods import get_model
from esft.methods.esft_lora import ESFTLoRAConfig
from esft.models.loading import load_model
from esft.serving import Engine, EngineConfig
from esft.synthetic.tasks import TASKS, general_eval_rows, task_splits
from esft.training.loop import train

MethodKind = Literal["base", "esft", "esft_lora", "fft", "lora", "lora_experts"]
METRIC = "exact_match_strict"  # the toy's answers are exact strings, case included (``upper``)
MAX_NEW_TOKENS = 48  # longer than every toy answer
EVALUATION = f"engine-{METRIC}-{MAX_NEW_TOKENS}"  # part of the run cache's key: a new evaluation reruns


@dataclass(frozen=True)
class Method:
    """A fine-tuning method of the comparison and its learning-rate grid."""

    name: str
    kind: MethodKind
    learning_rates: tuple[float, ...] = ()
    score_function: str = "token"
    top_p: float = 0.2
    response_only: bool = False  # score experts on answer tokens only
    random_experts: bool = False  # same per-layer counts as esft-token, random ids
    shared_experts: bool = False  # paper Table 3: also train the shared experts
    non_expert_modules: bool = False  # paper Table 3: also train attention, norms, router, embeddings

    @property
    def trains_selected_experts(self) -> bool:
        """Whether the method trains the experts chosen by scoring (ESFT and ESFT-LoRA)."""
        return self.kind in ("esft", "esft_lora")

    @property
    def selection_key(self) -> str:
        """Which expert selection the method trains (``"token/all"``, ``"gate/answer"`` ...)."""
        return f"{self.score_function}/{'answer' if self.response_only else 'all'}"


@dataclass(frozen=True)
class Sizes:
    """Examples per split, and general-evaluation rows per general task."""

    n_train: int = 2400
    n_val: int = 200
    n_test: int = 300
    n_general: int = 100


@dataclass(frozen=True)
class Job:
    """Everything one run needs; picklable."""

    model_dir: str
    method: Method
    task: str
    learning_rate: float
    seed: int
    steps: int
    batch_size: int
    sizes: Sizes
    experts: dict[int, list[int]] = field(default_factory=dict)
    threads: int = 1


def _examples(rows: list[dict[str, Any]]) -> list[EvalExample]:
    """Chat rows as evaluation examples: the prompt up to the answer, the answer as the reference."""
    return [EvalExample(row["messages"][:-1], row["messages"][-1]["content"]) for row in rows]


@functools.lru_cache(maxsize=8)
def _task_data(model_dir: str, task: str, sizes: Sizes) -> dict[str, Any]:
    """Tokenized training and validation rows, test and general examples (cached per worker process)."""
    _, tokenizer = load_model(model_dir, device="cpu")
    splits = task_splits(task, sizes.n_train, sizes.n_val, sizes.n_test)
    # General ability is what the task does not train: a task's own skill (e.g. `reverse`) is left out.
    general = {name: _examples(rows) for name, rows in general_eval_rows(sizes.n_general).items()
               if name != TASKS[task].skill}
    return {"train": tokenize_rows(splits.train, tokenizer), "validation": tokenize_rows(splits.validation, tokenizer),
            "test": _examples(splits.test), "general": general, "tokenizer": tokenizer,
            "pad": tokenizer.pad_token_id, "stop": sorted(stop_token_ids(tokenizer))}


@functools.lru_cache(maxsize=2)
def _base_answers(model_dir: str, task: str, sizes: Sizes) -> tuple[str, ...]:
    """The base model's answers to the test and general prompts (once per worker process and task)."""
    data = _task_data(model_dir, task, sizes)
    model, _ = load_model(model_dir, dtype="float32", device="cpu")
    return tuple(_answers(model, data))


def _rss_kib(field_name: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> int:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS in KiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss_kib("VmRSS")


def _method_config(job: Job) -> ExpertConfig | ESFTLoRAConfig | None:
    """The expert config of a method that trains selected experts (None: the method's default config)."""
    m = job.method
    if not m.trains_selected_experts:
        return None
    experts = ExpertConfig(experts={k: list(v) for k, v in job.experts.items()},
                           shared_experts=m.shared_experts, non_expert_modules=m.non_expert_modules)
    return experts if m.kind == "esft" else ESFTLoRAConfig(expert_config=experts)


def _train(model: nn.Module, job: Job, data: dict) -> tuple[nn.Module, dict]:
    config = TrainingConfig(max_steps=job.steps, batch_size=job.batch_size, learning_rate=job.learning_rate,
                            warmup_ratio=0.1, lr_scheduler="cosine", seed=job.seed, seq_len=256)
    total = sum(p.numel() for p in model.parameters())
    torch.manual_seed(job.seed)  # LoRA initialises its matrices when it wraps the model
    prepared = get_model(job.method.kind, model, _method_config(job))
    start = time.perf_counter()
    result = train(prepared, data["train"], config, pad_token_id=data["pad"])
    seconds = time.perf_counter() - start
    trainable = prepared.trainable_parameters()
    report = {"final_loss": result.final_loss, "train_seconds": seconds,
              "trainable_parameters": sum(p.numel() for p in trainable.values()), "total_parameters": total,
              # what must be stored per task: the whole model (FFT), the LoRA matrices or the expert rows
              "adapter_bytes": sum(p.numel() * p.element_size() for p in trainable.values()),
              "optimizer_state_bytes": int(result.report["optimizer_state_bytes"])}
    if job.method.trains_selected_experts:
        report["n_experts"] = sum(len(ids) for ids in job.experts.values())
    return prepared.fold(), report


def _answers(model: nn.Module, data: dict) -> list[str]:
    """Greedy answers to the test prompts, then every general prompt, batched through a serving engine."""
    prompts = [e.prompt for e in data["test"]] + [e.prompt for rows in data["general"].values() for e in rows]
    config = EngineConfig(batching="swap", max_batch_size=64, max_new_tokens=MAX_NEW_TOKENS, device="cpu",
                          idle_wait_s=0.01)
    with Engine(model, data["tokenizer"], config=config, base_name="model") as engine:
        engine.start()
        return generate_answers(engine, prompts, ["model"], max_new_tokens=MAX_NEW_TOKENS)["model"]


def _evaluate(model: nn.Module, data: dict, base_answers: tuple[str, ...] | None) -> dict[str, Any]:
    """Validation (teacher-forced), test exact match and the retention report against the base model."""
    val = exact_match(model, data["validation"], pad_id=data["pad"], stop_ids=data["stop"])
    answers = _answers(model, data)
    base = list(base_answers) if base_answers is not None else answers
    n = len(data["test"])
    test = score_answers(data["test"], {"model": answers[:n]}, [METRIC]).mean("model")
    files = [GeneralFile(name, Path(f"{name}.jsonl"), METRIC) for name in data["general"]]
    report, _ = score_retention(files, data["general"], {"base": base[n:], "adapter": answers[n:]})
    return {"val_accuracy": val.accuracy, "val_loss": val.loss, "test_accuracy": test / 100,
            "general": {row["name"]: row["adapter"] / 100 for row in report["files"]},
            "general_mean": report["average"]["adapter"] / 100, "retention": report}


def run_job(job: Job) -> dict[str, Any]:
    """Train (unless the method is ``base``) and evaluate one run; returns a JSON-ready dict."""
    torch.set_num_threads(job.threads)
    data = _task_data(job.model_dir, job.task, job.sizes)
    model, _ = load_model(job.model_dir, dtype="float32", device="cpu")
    model.set_experts_implementation("grouped_mm")  # the fused kernel; the library's ESFT split uses it too
    rss_before = _reset_peak_rss()
    trained, report = (model, {}) if job.method.kind == "base" else _train(model, job, data)
    report["peak_rss_delta_bytes"] = max(0, _rss_kib("VmHWM") - rss_before) * 1024
    base = None if job.method.kind == "base" else _base_answers(job.model_dir, job.task, job.sizes)
    return {"method": job.method.name, "task": job.task, "learning_rate": job.learning_rate, "seed": job.seed,
            **report, **_evaluate(trained, data, base)}
