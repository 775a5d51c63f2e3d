"""Evaluation of fine-tuned models.

- ``metrics``: text metrics by name (exact_match, contains, bleu, chrf, rouge_l) and ``llm_judge`` (``judge``).
- ``task``: greedy answers through the serving engine, scored per example and summarised with bootstrap
  intervals (``evaluate_task``, ``score_answers``).
- ``retention``: what an adapter kept of the base model's general ability.
- ``exact_match``: exact match of greedy decoding by one teacher-forced forward pass (training-time checks).
"""

from esft.evaluation.exact_match import EvalResult, exact_match, tokenize_rows
from esft.evaluation.judge import JudgeClient, parse_score
from esft.evaluation.metrics import METRIC_NAMES, TEXT_METRICS, check_metrics
from esft.evaluation.retention import FileScore, headline, retention
from esft.evaluation.task import EvalExample, EvaluationResult, evaluate_task, load_examples, score_answers

__all__ = [
    "METRIC_NAMES",
    "TEXT_METRICS",
    "EvalExample",
    "EvalResult",
    "EvaluationResult",
    "FileScore",
    "JudgeClient",
    "check_metrics",
    "evaluate_task",
    "exact_match",
    "headline",
    "load_examples",
    "parse_score",
    "retention",
    "score_answers",
    "tokenize_rows",
]
