"""The family matrix: every supported family, plus the causal-LM MoE families transformers added since.

A supported family must pass every check (a failure is a regression). A family the installed transformers
added after ``esft.models.families`` was last updated is built and trained the same way; if it cannot be,
its test is skipped with the reason (``scripts/family_table.py`` writes the same reason into docs/families.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import transformers

from esft.models.families import SUPPORTED_FAMILIES, new_upstream_families

MATRIX = [*SUPPORTED_FAMILIES, *(pytest.param(f, id=f"{f}-new-upstream") for f in new_upstream_families())]


@contextmanager
def family_guard(family: str) -> Iterator[None]:
    """Let failures of a supported family through; turn those of a not-yet-listed upstream family into skips."""
    if family in SUPPORTED_FAMILIES:
        yield
        return
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - any failure of an unlisted family is reported, not raised
        pytest.skip(
            f"{family} (new in transformers {transformers.__version__}, not listed yet): {type(exc).__name__}: {exc}"
        )
