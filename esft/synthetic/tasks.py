"""Synthetic chat tasks with exact-match answers: the pretraining mixture, enhancement and adaptation tasks.

Every task writes a user prompt in one of several phrasings and a short, unique assistant answer, so a
reply is scored by exact match. Three kinds, after the paper's two fine-tuning settings:

* ``general``: the pretraining mixture; held-out samples of it measure general ability.
* ``enhancement``: a skill the base model half-knows: more practice of a pretraining task it gets partly
  right (reversal, sorting), or 3-digit addition (a little of it in pretraining, which is mostly 2-digit).
* ``adaptation``: new to the base model, but expressible through machinery it has: a new fact table
  behind known phrasings, a new output format for a known procedure, a new keyword for a known procedure.

>>> task = TASKS["add"]
>>> rows = sample_rows(task, 2, seed=0)
>>> rows[0]["messages"][0]["role"], len(rows)
('user', 2)
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TaskKind = Literal["general", "enhancement", "adaptation"]
Row = dict[str, Any]

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class Task:
    """One synthetic task: phrasings with ``{fields}`` and a generator of ``(fields, answer)``."""

    name: str
    kind: TaskKind
    description: str
    phrasings: tuple[str, ...]
    make: Callable[[random.Random], tuple[dict[str, str], str]]
    pretrain_weight: float = 0.0  # share in the pretraining mixture, relative to a general task's 1.0
    skill: str | None = None  # the general task that measures this same skill: left out of its general score

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One ``(prompt, answer)`` pair in a random phrasing."""
        fields, answer = self.make(rng)
        return rng.choice(self.phrasings).format(**fields), answer


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high)))


def _name(rng: random.Random) -> str:
    """A pronounceable invented name (consonant-vowel syllables), 4 to 6 letters."""
    syllables = [rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3)]
    return "".join(syllables)[: rng.randint(4, 6)]


def fact_tables(n_per_table: int = 32, seed: int = 1234) -> tuple[dict[str, str], dict[str, str]]:
    """Two disjoint invented country -> capital tables: one for pretraining, one new (adaptation)."""
    rng = random.Random(seed)
    names: list[str] = []
    while len(names) < 4 * n_per_table:
        name = _name(rng)
        if name not in names:
            names.append(name)
    countries, capitals = names[: 2 * n_per_table], names[2 * n_per_table :]
    known = dict(zip(countries[:n_per_table], capitals[:n_per_table], strict=True))
    new = dict(zip(countries[n_per_table:], capitals[n_per_table:], strict=True))
    return known, new


KNOWN_FACTS, NEW_FACTS = fact_tables()


def _add(digits: int) -> Callable[[random.Random], tuple[dict[str, str], str]]:
    low, high = (0, 99) if digits == 2 else (100, 999)

    def make(rng: random.Random) -> tuple[dict[str, str], str]:
        a, b = rng.randint(low, high), rng.randint(low, high)
        return {"a": str(a), "b": str(b)}, str(a + b)

    return make


def _on_word(fn: Callable[[str], str], low: int = 3, high: int = 6):
    def make(rng: random.Random) -> tuple[dict[str, str], str]:
        w = _word(rng, low, high)
        return {"w": w}, fn(w)

    return make


def _fact(table: dict[str, str]):
    keys = sorted(table)

    def make(rng: random.Random) -> tuple[dict[str, str], str]:
        country = rng.choice(keys)
        return {"c": country}, table[country]

    return make


def _equation(rng: random.Random) -> tuple[dict[str, str], str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"a": str(a), "b": str(b)}, f"{a}+{b}={a + b}"


_ADD = ("add {a} and {b}", "what is {a} plus {b}?", "{a} + {b} =")
_CAPITAL = ("capital of {c}?", "what is the capital of {c}", "{c} capital:")
_REVERSE = ("reverse {w}", "write {w} backwards", "{w} reversed:")
_SORT = ("sort {w}", "put the letters of {w} in order", "{w} sorted:")

# fmt: off
_ALL: tuple[Task, ...] = (
    Task("add", "general", "2-digit addition", _ADD, _add(2), 1.0),
    Task("reverse", "general", "reverse a 3-6 letter string", _REVERSE, _on_word(lambda w: w[::-1]), 1.0),
    Task("upper", "general", "uppercase a string",
         ("uppercase {w}", "{w} in capitals", "shout {w}"), _on_word(str.upper), 1.0),
    Task("sort", "general", "sort the letters of a string", _SORT, _on_word(lambda w: "".join(sorted(w))), 1.0),
    Task("count", "general", "count the letters of a 1-12 letter string",
         ("how many letters in {w}?", "length of {w}", "count {w}"), _on_word(lambda w: str(len(w)), 1, 12), 1.0),
    Task("capital", "general", "capital of an invented country (32 facts)", _CAPITAL, _fact(KNOWN_FACTS), 1.0),
    Task("add3", "enhancement", "3-digit addition (a little of it in pretraining)", _ADD, _add(3), 0.15, "add"),
    Task("reverse_plus", "enhancement", "more practice of the pretraining task `reverse`", _REVERSE,
         _on_word(lambda w: w[::-1]), skill="reverse"),
    Task("sort_plus", "enhancement", "more practice of the pretraining task `sort`", _SORT,
         _on_word(lambda w: "".join(sorted(w))), skill="sort"),
    Task("facts_new", "adaptation", "a new table of 32 invented capitals behind the known phrasings",
         _CAPITAL, _fact(NEW_FACTS)),
    Task("equation", "adaptation", "known 2-digit addition, new output format 'a+b=sum'",
         ("write {a} plus {b} as an equation", "equation for {a} and {b}"), _equation),
    Task("keyword", "adaptation", "known uppercasing behind a new keyword",
         ("grossschreiben {w}", "{w} in gross:"), _on_word(str.upper)),
)
# fmt: on
TASKS: dict[str, Task] = {task.name: task for task in _ALL}
GENERAL_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL if t.kind == "general")


def to_row(prompt: str, answer: str) -> Row:
    """A JSONL chat row, the format ``esft`` trains on."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def sample_rows(task: Task, n: int, seed: int) -> list[Row]:
    """``n`` chat rows of ``task``; the same ``(task, n, seed)`` always gives the same rows."""
    rng = random.Random(f"{task.name}-{seed}")
    return [to_row(*task.sample(rng)) for _ in range(n)]


def pretraining_mixture(n: int, seed: int) -> list[Row]:
    """``n`` rows of the pretraining mixture: tasks drawn in proportion to ``pretrain_weight``."""
    tasks = [t for t in _ALL if t.pretrain_weight > 0]
    rng = random.Random(f"mixture-{seed}")
    picks = rng.choices(tasks, weights=[t.pretrain_weight for t in tasks], k=n)
    return [to_row(*task.sample(rng)) for task in picks]


@dataclass
class TaskSplits:
    """Train, validation and test rows of one task (disjoint seeds; facts tasks share their table)."""

    train: list[Row]
    validation: list[Row]
    test: list[Row]


def task_splits(name: str, n_train: int, n_val: int, n_test: int) -> TaskSplits:
    """Fixed splits of task ``name``. Seeds 1, 2 and 3 are never used by ``pretraining_mixture``."""
    task = TASKS[name]
    return TaskSplits(sample_rows(task, n_train, 1), sample_rows(task, n_val, 2), sample_rows(task, n_test, 3))


def general_eval_rows(n_per_task: int) -> dict[str, list[Row]]:
    """Held-out rows of every general task, to measure general ability before and after fine-tuning."""
    return {name: sample_rows(TASKS[name], n_per_task, 4) for name in GENERAL_TASKS}


def write_jsonl(rows: list[Row], path: str | Path) -> Path:
    """Write rows as JSONL (one chat example per line) for ``esft`` commands."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return path
