"""Evaluation of fine-tuned models: exact match by teacher forcing and the answer-token loss."""

from esft.evaluation.exact_match import EvalResult, exact_match, tokenize_rows

__all__ = ["EvalResult", "exact_match", "tokenize_rows"]
