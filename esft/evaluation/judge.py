"""LLM-as-judge through any OpenAI-compatible ``/chat/completions`` endpoint (this service's own included).

The rubric, prompt and parse rule below are the ones ``docs/llm-judge.md`` documents (a test keeps the two
equal). A judge reply that does not parse, a timeout, a refusal or an unreachable endpoint is counted per
outcome and leaves that answer unscored; it never fails the evaluation. After ``max_consecutive_failures``
calls in a row fail without a reply, the remaining answers are not sent (counted as ``skipped``): a dead
endpoint costs a job a few timeouts, not one per example.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

JUDGE_SYSTEM = "You are a strict, fair grader of answers. You reply with a score line only."
JUDGE_PROMPT = """Grade the ANSWER to the QUESTION against the REFERENCE answer.

Rubric (integer 1-10):
10: correct and complete; as good as the reference.
7-9: correct in substance, with minor omissions or wording problems.
4-6: partly correct: some key content right, some missing or wrong.
2-3: mostly wrong, with a relevant fragment.
1: wrong, irrelevant, empty or harmful.

QUESTION:
{question}

REFERENCE:
{reference}

ANSWER:
{answer}

Reply with exactly one line: Score: N (N an integer from 1 to 10)."""
SCORE_PATTERN = re.compile(r"score\s*[:=]\s*(\d+)(?:\s*/\s*10)?", re.IGNORECASE)
BARE_SCORE = re.compile(r"^\s*(\d+)(?:\s*/\s*10)?\s*\.?\s*$")

OK, UNPARSED, TIMEOUT, REFUSED, UNREACHABLE, SKIPPED = "ok", "unparsed", "timeout", "refused", "unreachable", "skipped"
OUTCOMES = (OK, UNPARSED, TIMEOUT, REFUSED, UNREACHABLE, SKIPPED)


def parse_score(reply: str) -> int | None:
    """The score in a judge reply: the last ``Score: N`` (or ``N/10``), else a reply that is only a number;
    ``None`` unless it is an integer from 1 to 10."""
    matches = SCORE_PATTERN.findall(reply)
    if matches:
        value = int(matches[-1])
    elif bare := BARE_SCORE.match(reply):
        value = int(bare.group(1))
    else:
        return None
    return value if 1 <= value <= 10 else None


def judge_messages(question: str, reference: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_PROMPT.format(question=question, reference=reference, answer=answer)},
    ]


@dataclass
class Verdict:
    """One graded answer: the score (``None`` unless ``outcome == "ok"``), the outcome and the raw reply."""

    score: int | None
    outcome: str
    reply: str | None = None


@dataclass
class JudgeClient:
    """A judge model behind an OpenAI-compatible endpoint.

    Attributes:
        url: the API base, e.g. ``http://judge:8000/v1`` (``/chat/completions`` is appended). The caller
            checks it against the outbound allowlist (``esft.outbound.check_outbound_url``) first.
        model: the judge's model name.
        api_key: sent as a bearer token when given.
        timeout_s: per call.
        concurrency: calls in flight at once.
        max_consecutive_failures: calls failing in a row (no reply) before the rest are skipped.
    """

    url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 30.0
    concurrency: int = 4
    max_consecutive_failures: int = 3
    _failures: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _call(self, client: httpx.Client, question: str, reference: str, answer: str) -> Verdict:
        with self._lock:
            if self._failures >= self.max_consecutive_failures:
                return Verdict(None, SKIPPED)
        body = {"model": self.model, "messages": judge_messages(question, reference, answer),
                "temperature": 0, "max_tokens": 16}
        try:
            response = client.post(self.url.rstrip("/") + "/chat/completions", json=body)
        except httpx.TimeoutException:
            return self._failed(TIMEOUT)
        except httpx.HTTPError:
            return self._failed(UNREACHABLE)
        if response.status_code >= 400:
            return self._failed(REFUSED, response.text[:200])
        with self._lock:
            self._failures = 0
        try:
            reply = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return Verdict(None, UNPARSED, response.text[:200])
        if not isinstance(reply, str):
            return Verdict(None, UNPARSED, repr(reply)[:200])
        score = parse_score(reply)
        return Verdict(score, OK if score is not None else UNPARSED, reply[:200])

    def _failed(self, outcome: str, reply: str | None = None) -> Verdict:
        with self._lock:
            self._failures += 1
        return Verdict(None, outcome, reply)

    def grade(self, questions: Sequence[str], references: Sequence[str], answers: Sequence[str]) -> list[Verdict]:
        """Grade each answer (in order); never raises for what the endpoint does."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client, ThreadPoolExecutor(
            max(1, self.concurrency)
        ) as pool:
            return list(pool.map(lambda qra: self._call(client, *qra), zip(questions, references, answers,
                                                                             strict=True)))


def outcome_counts(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """``n_<outcome>`` for every outcome (zeros included), so reports always carry the same keys."""
    counts = Counter(v.outcome for v in verdicts)
    return {f"n_{outcome}": counts.get(outcome, 0) for outcome in OUTCOMES}
