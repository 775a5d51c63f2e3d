"""Tests of esft.data.formats: parsing, line-numbered errors, streaming reads and file validation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from esft.data.formats import Example, example_text, iter_examples, parse_example, read_examples
from esft.data.validation import ValidationReport, validate_jsonl
from esft.errors import ConfigError, DataFormatError

REPO_ROOT = Path(__file__).resolve().parents[3]

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye.", "weight": 1},
    ]
}


def write_lines(path: Path, lines: list[object]) -> Path:
    """Write JSON values (or raw str/bytes lines as they are) one per line."""
    with open(path, "wb") as handle:
        for line in lines:
            if isinstance(line, bytes):
                handle.write(line + b"\n")
            elif isinstance(line, str):
                handle.write(line.encode() + b"\n")
            else:
                handle.write(json.dumps(line).encode() + b"\n")
    return path


def test_parse_the_three_formats():
    chat = parse_example(CHAT, line=3)
    assert chat.kind == "chat" and chat.line == 3
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[1]["name"] == "ann" and chat.messages[2]["weight"] == 0
    completion = parse_example({"prompt": "", "completion": " 4"}, line=1)
    assert (completion.kind, completion.prompt, completion.completion) == ("completion", "", " 4")
    text = parse_example({"text": "doc", "id": 7}, line=2)
    assert text == Example(kind="text", text="doc", line=2)


def test_parse_copies_messages():
    raw = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    example = parse_example(raw, line=1)
    raw["messages"][0]["content"] = "changed"
    assert example.messages[0]["content"] == "a"


def _chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


USER = {"role": "user", "content": "q"}
ASSISTANT = {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("obj", "code", "fragment"),
    [
        ([1, 2], "data_type", "expected a JSON object, got list"),
        ("text", "data_type", "got str"),
        ({"messages": "hi"}, "missing_messages_list", "non-empty list"),
        ({"messages": []}, "missing_messages_list", "non-empty list"),
        (_chat(USER, "a"), "data_type", "message 2 is a str"),
        (
            _chat({"role": "user"}, ASSISTANT),
            "message_missing_key",
            "message 1 is missing key(s) ['content']",
        ),
        (_chat(USER, {**ASSISTANT, "tool": 1}), "message_unrecognized_key", "message 2 has unrecognized key"),
        (
            _chat(USER, {"role": "robot", "content": "x"}),
            "unrecognized_role",
            "message 2 has role 'robot'; expected one of system, user, assistant",
        ),
        (_chat(USER, {"role": "assistant", "content": "  \n"}), "missing_content", "message 2 (assistant)"),
        (_chat({"role": "user", "content": 5}, ASSISTANT), "missing_content", "non-string content 5"),
        (_chat({"role": "user", "content": None}, ASSISTANT), "missing_content", "message 1"),
        (_chat(USER), "example_missing_assistant_message", "no assistant message"),
        (_chat(USER, {**ASSISTANT, "weight": 0}), "example_missing_assistant_message", "weight 0"),
        (_chat(USER, {**ASSISTANT, "weight": 2}), "invalid_weight", "weight must be 0 or 1"),
        (_chat(USER, {**ASSISTANT, "weight": True}), "invalid_weight", "weight must be 0 or 1"),
        (_chat({**USER, "name": 3}, ASSISTANT), "data_type", "non-string 'name'"),
        ({"prompt": "x"}, "unknown_format", "has 'prompt' but no 'completion'"),
        ({"completion": "x"}, "unknown_format", "has 'completion' but no 'prompt'"),
        ({"prompt": 1, "completion": "x"}, "missing_content", "'prompt' must be a string"),
        ({"prompt": "x", "completion": " "}, "missing_content", "'completion' must be a non-empty string"),
        ({"text": ""}, "missing_content", "'text' must be a non-empty string"),
        ({"foo": 1}, "unknown_format", "keys ['foo']"),
    ],
)
def test_parse_errors_have_code_line_and_reason(obj, code, fragment):
    with pytest.raises(DataFormatError) as info:
        parse_example(obj, line=7)
    error = info.value
    assert error.code == code
    assert error.line == 7
    assert str(error).startswith("line 7: ")
    assert fragment in str(error)


def test_iter_examples_streams_skips_blanks_and_numbers_lines(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "one"}, "", "   ", {"prompt": "p", "completion": "c"}])
    examples = list(iter_examples(path))
    assert [(e.kind, e.line) for e in examples] == [("text", 1), ("completion", 4)]


def test_iter_examples_is_lazy_and_stops_at_the_first_bad_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "one"}, "", "{not json", {"foo": 1}])
    stream = iter_examples(path)
    assert next(stream).line == 1  # yielded before the bad line is even read
    with pytest.raises(DataFormatError) as info:
        next(stream)
    assert (info.value.code, info.value.line) == ("invalid_json", 3)
    assert "invalid JSON" in str(info.value)


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "one"}, b'{"text": "caf\xe9"}'])
    with pytest.raises(DataFormatError) as info:
        list(iter_examples(path))
    assert (info.value.code, info.value.line) == ("invalid_utf8", 2)
    assert "UTF-8" in str(info.value)


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    assert [e.text for e in read_examples(path)] == ["a", "b"]


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_read_examples_rejects_an_empty_file(tmp_path, content):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as info:
        read_examples(path)
    assert info.value.code == "empty_file"


def test_example_text_concatenates_contents():
    assert example_text(parse_example(CHAT, 1)) == "Be brief.\nHi\nHello!\nBye\nGoodbye."
    assert example_text(parse_example({"prompt": "2+2=", "completion": "4"}, 1)) == "2+2=4"
    assert example_text(parse_example({"text": "t"}, 1)) == "t"


def _words(text: str) -> int:
    return len(text.split())


def test_validate_counts_every_problem_and_keeps_going(tmp_path):
    lines = [
        CHAT,  # 1: 6 words
        {"text": "a b c"},  # 2: 3 words
        "",  # 3: blank
        "{broken",  # 4
        b'{"text": "\xff"}',  # 5
        _chat(USER, {"role": "robot", "content": "x"}),  # 6
        {"prompt": "one two", "completion": "three"},  # 7: "one twothree", 2 words
        {"text": " ".join(["w"] * 12)},  # 8: 12 words, over the context
    ]
    report = validate_jsonl(write_lines(tmp_path / "d.jsonl", lines), count_tokens=_words, max_context=10)
    assert (report.n_lines, report.n_examples, report.n_invalid) == (8, 4, 3)
    assert report.formats == {"chat": 1, "text": 2, "completion": 1}
    assert report.error_counts == {
        "invalid_json": 1,
        "invalid_utf8": 1,
        "unrecognized_role": 1,
        "too_many_tokens": 1,
    }
    assert [(e["line"], e["code"]) for e in report.errors] == [
        (4, "invalid_json"),
        (5, "invalid_utf8"),
        (6, "unrecognized_role"),
        (8, "too_many_tokens"),
    ]
    assert report.errors[2]["message"].startswith("line 6: message 2 has role 'robot'")
    assert report.n_over_context == 1
    assert report.token_stats == {"total": 23, "min": 2, "max": 12, "mean": 5.75, "p50": 3, "p95": 12}
    assert not report.ok
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_validate_keeps_only_max_errors_but_counts_all(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "ok"}] + [{"bad": i} for i in range(30)])
    report = validate_jsonl(path, max_errors=5)
    assert len(report.errors) == 5
    assert [e["line"] for e in report.errors] == [2, 3, 4, 5, 6]
    assert report.error_counts == {"unknown_format": 30}
    assert report.n_invalid == 30 and report.n_examples == 1
    assert report.token_stats is None


def test_validate_a_clean_file_is_ok(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [CHAT, {"text": "x"}])
    report = validate_jsonl(path, count_tokens=_words, max_context=100)
    assert report.ok and report.errors == [] and report.n_over_context == 0
    assert report.to_dict()["ok"] is True


def test_validate_too_few_examples(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [CHAT, {"bad": 1}])
    report = validate_jsonl(path, min_examples=10)
    assert report.error_counts == {"unknown_format": 1, "too_few_examples": 1}
    assert report.errors[-1] == {
        "line": None,
        "code": "too_few_examples",
        "message": "1 valid example(s); at least 10 are needed",
    }
    assert not report.ok


def test_validate_an_empty_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n\n")
    report = validate_jsonl(path)
    assert report.n_lines == 2 and report.n_examples == 0
    assert report.error_counts == {"empty_file": 1}
    assert not report.ok


def test_validate_needs_count_tokens_for_max_context(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match="count_tokens"):
        validate_jsonl(path, max_context=10)


def test_report_ok_needs_min_examples():
    assert not ValidationReport(n_examples=0).ok
    assert ValidationReport(n_examples=3, min_examples=3).ok


def test_formats_imports_neither_torch_nor_transformers():
    code = "import sys, esft.data.formats; bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_line_limits_reject_long_and_deep_lines_without_stopping_validation(tmp_path):
    from esft.data.formats import LineLimits

    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    deep = '{"messages": ' + "[" * 5000 + "]" * 5000 + "}"
    long = json.dumps({"text": "x" * 5000})
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join([good, deep, long, good]) + "\n")
    report = validate_jsonl(path, limits=LineLimits(max_bytes=len(good) + 10, max_depth=8))
    codes = {e["line"]: e["code"] for e in report.to_dict()["errors"]}
    assert codes == {2: "line_too_long", 3: "line_too_long"} and report.n_examples == 2
    report = validate_jsonl(path, limits=LineLimits(max_depth=8))
    codes = {e["line"]: e["code"] for e in report.to_dict()["errors"]}
    assert codes == {2: "too_deeply_nested"} and report.n_examples == 3


def test_hostile_lines_are_reported_not_raised(tmp_path):
    good = json.dumps({"text": "fine"})
    huge_number = '{"text": ' + "1" * 5000 + "}"  # past Python's int_max_str_digits: a ValueError, not a JSON error
    deep = '{"text": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"  # past the parser's recursion limit
    path = write_lines(tmp_path / "d.jsonl", [good, huge_number, deep, good])
    report = validate_jsonl(path)
    assert {e["line"]: e["code"] for e in report.errors} == {2: "invalid_json", 3: "too_deeply_nested"}
    assert report.n_examples == 2


def test_report_stays_small_whatever_the_file(tmp_path):
    """Bad content is quoted as a short excerpt; past ``max_errors`` problems are only counted."""
    big = "x" * 100_000
    rows = [
        {"messages": [{"role": big, "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": [big[:100]] * 1000}, {"role": "assistant", "content": "b"}]},
        {**{f"key{i}-{big[:100]}": i for i in range(1000)}},
        {"messages": [{"role": "user", "content": "a", big: 1}, {"role": "assistant", "content": "b"}]},
    ] * 10
    report = validate_jsonl(write_lines(tmp_path / "d.jsonl", rows), max_errors=5)
    assert len(report.errors) == 5 and report.errors_omitted == 36 and sum(report.error_counts.values()) == 41
    assert all(len(e["message"]) <= 200 for e in report.errors)
    assert len(json.dumps(report.to_dict())) < 3000
