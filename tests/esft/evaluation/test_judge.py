"""The LLM judge against a real local HTTP server: scores, the parse rule, and every failure counted."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from esft.errors import ConfigError
from esft.evaluation import EvalExample, JudgeClient, parse_score, score_answers
from esft.evaluation.judge import JUDGE_PROMPT, JUDGE_SYSTEM
from esft.outbound import check_outbound_url
from tests.esft.evaluation.judge_server import judge_server

DOCS = Path(__file__).resolve().parents[3] / "docs" / "llm-judge.md"


@pytest.mark.parametrize(("reply", "score"), [
    ("Score: 7", 7), ("score = 10", 10), ("Score: 3/10", 3), ("8", 8), (" 9/10. ", 9),
    ("Score: 2\nOn reflection, Score: 6", 6), ("Score: 0", None), ("Score: 11", None),
    ("seven", None), ("I'd give it 8 or 9", None), ("", None),
])
def test_parse_rule(reply, score):
    assert parse_score(reply) == score


def test_docs_show_the_prompt_the_code_sends():
    text = DOCS.read_text()
    assert JUDGE_PROMPT in text and JUDGE_SYSTEM in text


def test_scores_and_failure_modes_are_counted_never_raised():
    answers = ["9 great", "4 partial", "ramble", "eleven", "garbage", "refuse", "slow", "7 fine"]
    examples = [EvalExample([{"role": "user", "content": f"q{i}"}], f"ref{i}") for i in range(len(answers))]
    with judge_server() as server:
        judge = JudgeClient(server.url, "judge-1", api_key="k", timeout_s=0.5, concurrency=2,
                            max_consecutive_failures=99)
        result = score_answers(examples, {"model": answers}, ["llm_judge", "exact_match"], judge=judge)
    summary = result.summary["model"]["llm_judge"]
    assert summary["n_scored"] == 3 and summary["mean"] == pytest.approx((9 + 4 + 7) / 3)
    assert (summary["n_ok"], summary["n_unparsed"], summary["n_refused"], summary["n_timeout"]) == (3, 3, 1, 1)
    assert [row["scores"]["model"]["llm_judge"] for row in result.examples] == [9, 4, None, None, None, None, None, 7]
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer k"
    assert sent["body"]["model"] == "judge-1" and sent["body"]["temperature"] == 0
    assert "QUESTION:\nq" in sent["body"]["messages"][-1]["content"]


def test_dead_endpoint_costs_a_few_calls_then_is_skipped():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = JudgeClient(f"http://127.0.0.1:{port}/v1", "j", timeout_s=0.5, concurrency=1)
    examples = [EvalExample("q", "r")] * 6
    result = score_answers(examples, {"base": ["a"] * 6}, ["llm_judge"], judge=judge)
    summary = result.summary["base"]["llm_judge"]
    assert (summary["n_unreachable"], summary["n_skipped"], summary["n_scored"]) == (3, 3, 0)
    assert summary["mean"] is None


def test_judge_needs_an_endpoint():
    with pytest.raises(ConfigError) as err:
        score_answers([EvalExample("q", "r")], {"base": ["a"]}, ["llm_judge"])
    assert err.value.param == "evaluation.judge"


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://judge.internal:8000/v1", True), ("https://api.example.com/v1/x", True),
    ("https://api.example.com/v10", False), ("http://api.example.com/v1", False),
    ("http://evil.example/v1", False), ("file:///etc/passwd", False), ("http://u:p@judge.internal/v1", False),
])
def test_outbound_allowlist(url, allowed):
    allowlist = ["judge.internal", "https://api.example.com/v1"]
    if allowed:
        check_outbound_url(url, allowlist, param="evaluation.judge.url")  # no error
    else:
        with pytest.raises(ConfigError) as err:
            check_outbound_url(url, allowlist, param="evaluation.judge.url")
        assert err.value.param == "evaluation.judge.url"
