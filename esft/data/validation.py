"""Whole-file validation of JSONL training data: every problem counted, a report the service stores and shows.

Streams the file line by line (``esft.data.formats`` parses each line), keeps going after a bad line, and
holds one integer per valid example (its token count), never the examples. Torch-free: the service validates
uploads with it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from esft.data.formats import Example, LineLimits, example_text, iter_lines
from esft.errors import ConfigError, DataFormatError

MAX_MESSAGE_CHARS = 200  # a kept problem's message is cut to this, so a report stays small whatever the file


def excerpt(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return message if len(message) <= limit else message[: limit - 1] + "\u2026"


@dataclass
class ValidationReport:
    """What ``validate_jsonl`` found in a file.

    Attributes:
        n_lines: physical lines read, blank lines included.
        n_examples: valid examples.
        n_invalid: non-blank lines that are not valid examples.
        formats: valid examples per kind, e.g. ``{"chat": 10}``.
        errors: the first ``max_errors`` problems, each ``{"line", "code", "message"}`` (``line`` is None for
            file-level problems; ``message`` at most ``MAX_MESSAGE_CHARS`` long).
        error_counts: every problem counted by code, including those past ``max_errors``.
        errors_omitted: problems counted in ``error_counts`` but not kept in ``errors``.
        token_stats: ``total``, ``min``, ``max``, ``mean``, ``p50``, ``p95`` of the estimated token counts of
            valid examples, or None when no tokenizer was given (or nothing was valid).
        n_over_context: valid examples whose estimated token count exceeds ``max_context``.
        min_examples: the minimum number of valid examples asked for.
        max_errors: how many problems ``errors`` keeps.
    """

    n_lines: int = 0
    n_examples: int = 0
    n_invalid: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_counts: dict[str, int] = field(default_factory=dict)
    errors_omitted: int = 0
    token_stats: dict[str, float] | None = None
    n_over_context: int = 0
    min_examples: int = 1
    max_errors: int = 20

    @property
    def ok(self) -> bool:
        """True when there is no problem and at least ``min_examples`` valid examples."""
        return not self.error_counts and self.n_examples >= self.min_examples

    def add_error(self, line: int | None, code: str, message: str) -> None:
        """Count a problem, and keep its details (message cut short) if fewer than ``max_errors`` are kept."""
        self.error_counts[code] = self.error_counts.get(code, 0) + 1
        if len(self.errors) < self.max_errors:
            self.errors.append({"line": line, "code": code, "message": excerpt(message)})
        else:
            self.errors_omitted += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``ok``."""
        return {**asdict(self), "ok": self.ok}


def _token_stats(counts: list[int]) -> dict[str, float]:
    ordered = sorted(counts)

    def nearest_rank(q: float) -> int:  # the nearest-rank percentile: always one of the observed counts
        return ordered[max(1, math.ceil(q * len(ordered))) - 1]

    return {
        "total": sum(ordered),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
        "p50": nearest_rank(0.50),
        "p95": nearest_rank(0.95),
    }


def _count_and_check(
    report: ValidationReport, example: Example, count_tokens: Callable[[str], int], max_context: int | None
) -> int:
    """Estimate an example's tokens, recording ``too_many_tokens`` if it is over ``max_context``."""
    n_tokens = int(count_tokens(example_text(example)))
    if max_context is not None and n_tokens > max_context:
        report.n_over_context += 1
        message = f"line {example.line}: about {n_tokens} tokens, more than the context of {max_context}"
        report.add_error(example.line, "too_many_tokens", message)
    return n_tokens


def validate_jsonl(
    path: str | os.PathLike,
    *,
    count_tokens: Callable[[str], int] | None = None,
    max_context: int | None = None,
    max_errors: int = 20,
    min_examples: int = 1,
    limits: LineLimits = LineLimits(),
) -> ValidationReport:
    """Check a whole JSONL file and report every problem, streaming it line by line.

    Unlike ``iter_examples`` this keeps going after a bad line. Only one integer per valid example (its token
    count) is held in memory, never the examples.

    Args:
        path: the JSONL file.
        count_tokens: counts the tokens of a string (e.g. ``lambda s: len(tok(s).input_ids)``); applied to
            ``example_text``, so the counts are estimates. Without it there are no token statistics.
        max_context: examples estimated longer than this are counted in ``n_over_context`` and reported as
            ``too_many_tokens``; needs ``count_tokens``.
        max_errors: how many problems to keep in detail (all are counted).
        min_examples: fewer valid examples than this is a ``too_few_examples`` problem.
        limits: the longest and deepest line accepted (``line_too_long``, ``too_deeply_nested``).

    Returns:
        The report; ``report.ok`` says whether the file can be trained on as is.

    Raises:
        ConfigError: ``max_context`` was given without ``count_tokens``.
        OSError: the file cannot be opened.
    """
    if max_context is not None and count_tokens is None:
        raise ConfigError("`max_context` needs `count_tokens` to count tokens", param="max_context")
    report = ValidationReport(min_examples=min_examples, max_errors=max_errors)
    counts: list[int] = []
    n_nonblank = 0
    for line, item in iter_lines(path, limits):
        report.n_lines = line
        if item is None:
            continue
        n_nonblank += 1
        if isinstance(item, DataFormatError):
            report.n_invalid += 1
            report.add_error(line, item.code, item.message)
            continue
        report.n_examples += 1
        report.formats[item.kind] = report.formats.get(item.kind, 0) + 1
        if count_tokens is not None:
            counts.append(_count_and_check(report, item, count_tokens, max_context))
    if counts:
        report.token_stats = _token_stats(counts)
    if n_nonblank == 0:
        report.add_error(None, "empty_file", "the file has no examples (it is empty or blank)")
    elif report.n_examples < min_examples:
        message = f"{report.n_examples} valid example(s); at least {min_examples} are needed"
        report.add_error(None, "too_few_examples", message)
    return report
