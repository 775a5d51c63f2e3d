"""Text metrics by name: one answer against its reference -> a score from 0 to 100.

``exact_match`` and ``contains`` compare normalised text (case, surrounding and repeated whitespace do not
count); ``exact_match_strict`` counts case and inner whitespace too (code, casing tasks, identifiers), only
surrounding whitespace is stripped. ``bleu`` (sacrebleu's sentence BLEU) tokenizes per example language:
``zh`` when the reference contains Chinese characters, ``13a`` otherwise; with ``13a`` a Chinese sentence is
one token and scores 0. ``chrf`` is character n-gram F-score (language-free). ``rouge_l`` is rouge-score's
LCS F-measure with CJK characters split one per token (rouge-score's own tokenizer keeps only ``[a-z0-9]``
and scores Chinese 0).
``llm_judge`` is not a text function: a model grades each answer 1-10 (``esft.evaluation.judge``).

``esft.evaluation.teacher_forcing.exact_match`` is the strict exact match of greedy decoding, computed in
one forward pass; the functions here score answers that were actually generated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

from esft.errors import ConfigError

LLM_JUDGE = "llm_judge"
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_CHINESE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+")


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed and stripped."""
    return " ".join(text.lower().split())


def bleu_tokenizer(reference: str) -> str:
    """sacrebleu tokenizer for an example: ``zh`` when its reference has Chinese characters, else ``13a``."""
    return "zh" if _CHINESE.search(reference) else "13a"


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens, each CJK character a token of its own."""
    return _WORD.findall(_CJK.sub(lambda m: f" {m.group(0)} ", text.lower()))


def exact_match(answer: str, reference: str) -> float:
    return 100.0 if normalize(answer) == normalize(reference) else 0.0


def exact_match_strict(answer: str, reference: str) -> float:
    return 100.0 if answer.strip() == reference.strip() else 0.0


def contains(answer: str, reference: str) -> float:
    return 100.0 if normalize(reference) in normalize(answer) else 0.0


def bleu(answer: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(answer, [reference], tokenize=bleu_tokenizer(reference)).score)


def chrf(answer: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(answer, [reference]).score)


class _RougeTokenizer:
    """rouge-score's tokenizer interface over ``rouge_tokens``."""

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokens(text)


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer())


def rouge_l(answer: str, reference: str) -> float:
    return 100.0 * _rouge_scorer().score(reference, answer)["rougeL"].fmeasure


TEXT_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "exact_match_strict": exact_match_strict,
    "contains": contains,
    "bleu": bleu,
    "chrf": chrf,
    "rouge_l": rouge_l,
}
METRIC_NAMES: tuple[str, ...] = (*TEXT_METRICS, LLM_JUDGE)
"""Every metric a job may ask for, in the order reports list them."""
SUITE_METRICS: tuple[str, ...] = tuple(TEXT_METRICS)
"""Metrics a general-ability file may use (no judge: suites are scored without outside calls)."""
SCALES: dict[str, tuple[float, float]] = {**{name: (0.0, 100.0) for name in TEXT_METRICS}, LLM_JUDGE: (1.0, 10.0)}


def check_metrics(names: list[str] | tuple[str, ...], *, param: str = "metrics") -> list[str]:
    """The names, deduplicated in order; raise ``ConfigError`` naming any unknown one and the known ones."""
    unknown = [name for name in names if name not in METRIC_NAMES]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {list(METRIC_NAMES)}", param=param)
    if not names:
        raise ConfigError(f"name at least one metric from {list(METRIC_NAMES)}", param=param)
    return list(dict.fromkeys(names))
