"""The worker's one seam to the ``esft`` library: the functions the steps call, swappable by tests.

``get_library()`` returns the library's own functions (``esft.workflows``, ``esft.plotting``), imported on
first use inside the forked child so the worker's parent never imports torch; ``set_library(...)`` puts
something else in their place (tests inject faults through it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Library:
    """The library calls of the pipeline, under the names and signatures the library gives them."""

    score: Callable  # esft.workflows.score
    select: Callable  # esft.workflows.select
    train: Callable  # esft.workflows.train
    merge: Callable  # esft.workflows.merge: base model + any method's result -> a full model
    compare: Callable  # worker.evaluation.compare_models: base vs adapter on task and general files, one engine
    plot_scores: Callable  # esft.plotting.plot_scores
    plot_loss: Callable  # esft.plotting.plot_loss
    plot_retention: Callable  # esft.plotting.plot_retention


def esft_library() -> Library:
    """The real thing (imports torch: call it in the process that runs steps)."""
    from esft import plotting, workflows
    from worker.evaluation import compare_models

    return Library(
        score=workflows.score,
        select=workflows.select,
        train=workflows.train,
        merge=workflows.merge,
        compare=compare_models,
        plot_scores=plotting.plot_scores,
        plot_loss=plotting.plot_loss,
        plot_retention=plotting.plot_retention,
    )


_LIBRARY: Library | None = None


def get_library() -> Library:
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = esft_library()
    return _LIBRARY


def set_library(library: Library | None) -> None:
    """Swap the implementation (tests inject faults); ``None`` restores the real library."""
    global _LIBRARY
    _LIBRARY = library
