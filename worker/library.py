"""The seam between the worker and the ``esft`` library (torch is imported lazily, never before fork).

``get_library()`` returns the real implementation; tests may ``set_library(...)`` to inject faults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol


class Library(Protocol):
    def score(self, model_dir: Path, data_path: Path, out_path: Path, config: Any, *, progress=None) -> Any: ...
    def select(self, scores_path: Path, config: Any, out_path: Path) -> Any: ...
    def train(
        self,
        model_dir: Path,
        data_path: Path,
        expert_config_path: Path,
        out_dir: Path,
        config: Any,
        *,
        validation_path: Path | None = None,
        resume: bool = False,
        progress=None,
        should_stop=None,
    ) -> Any: ...
    def compare(
        self,
        model_dir: Path,
        adapter_dir: Path,
        prompts: Sequence[Any],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[list[str], list[str]]: ...
    def plot_scores(self, scores_path: Path, out_png: Path, expert_config_path: Path | None = None) -> Any: ...
    def plot_loss(self, metrics_path: Path, out_png: Path) -> Any: ...


class EsftLibrary:
    """The real thing: ``esft.workflows`` and friends."""

    def score(self, model_dir, data_path, out_path, config, *, progress=None):
        from esft import workflows

        return workflows.score(model_dir, data_path, out_path, config, progress=progress)

    def select(self, scores_path, config, out_path):
        from esft import workflows

        return workflows.select(scores_path, config, out_path)

    def train(
        self,
        model_dir,
        data_path,
        expert_config_path,
        out_dir,
        config,
        *,
        validation_path=None,
        resume=False,
        progress=None,
        should_stop=None,
    ):
        from esft import workflows

        return workflows.train(
            model_dir,
            data_path,
            expert_config_path,
            out_dir,
            config,
            validation_path=validation_path,
            resume=resume,
            progress=progress,
            should_stop=should_stop,
        )

    def compare(self, model_dir, adapter_dir, prompts, *, max_new_tokens, should_stop=None):
        """Answers of the base model and of the adapter to each prompt, loading the model once."""
        from esft.adapters import ESFTAdapter, applied
        from esft.generation import generate_text
        from esft.workflows import load_model

        model, tokenizer = load_model(model_dir)

        def answers(net) -> list[str]:
            out = []
            for prompt in prompts:
                if should_stop is not None and should_stop():
                    break
                out.append(generate_text(net, tokenizer, prompt, max_new_tokens=max_new_tokens))
            return out

        base = answers(model)
        with applied(model, ESFTAdapter.from_pretrained(adapter_dir)) as tuned:
            tuned_answers = answers(tuned)
        return base, tuned_answers

    def plot_scores(self, scores_path, out_png, expert_config_path=None):
        from esft.plotting import plot_scores

        return plot_scores(scores_path, out_png, expert_config_path)

    def plot_loss(self, metrics_path, out_png):
        from esft.plotting import plot_loss

        return plot_loss(metrics_path, out_png)


_LIBRARY: Library = EsftLibrary()


def get_library() -> Library:
    return _LIBRARY


def set_library(library: Library | None) -> None:
    """Swap the implementation (tests inject faults); ``None`` restores the real library."""
    global _LIBRARY
    _LIBRARY = library if library is not None else EsftLibrary()
