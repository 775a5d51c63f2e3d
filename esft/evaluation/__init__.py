"""Evaluation of fine-tuned models: exact match by teacher forcing and the answer-token loss."""

from esft.evaluation.exact_match import END_OF_TURN, EvalResult, exact_match, stop_token_id, tokenize_rows

__all__ = ["END_OF_TURN", "EvalResult", "exact_match", "stop_token_id", "tokenize_rows"]
