"""Model identity read from ``config.json``: hostile or broken files are refused with the reason, never crash."""

from __future__ import annotations

import json

import pytest

from esft.errors import UnsupportedModelError
from esft.models.identity import model_identity

GOOD = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 64}


def _model_dir(tmp_path, content: bytes | str):
    (tmp_path / "config.json").write_bytes(content.encode() if isinstance(content, str) else content)
    return tmp_path


def test_identity_of_a_good_config(tmp_path):
    identity = model_identity(_model_dir(tmp_path, json.dumps(GOOD)))
    assert identity["model_type"] == "deepseek_v2" and identity["architectures"] == ["DeepseekV2ForCausalLM"]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ("[1, 2]", "JSON list, not an object"),
        ('"deepseek_v2"', "JSON str, not an object"),
        (json.dumps({**GOOD, "model_type": "deep\u0000seek"}), "`model_type`"),
        (json.dumps({**GOOD, "model_type": ["x"]}), "`model_type`"),
        (json.dumps({**GOOD, "architectures": "DeepseekV2ForCausalLM"}), "`architectures`"),
        (json.dumps({**GOOD, "architectures": ["A\u0000"]}), "`architectures`"),
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
        ('{"a": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
    ids=["invalid", "binary", "list", "string", "nul-type", "list-type", "str-architectures", "nul-arch", "deep",
         "long-number"],
)
def test_broken_configs_are_refused_with_the_reason(tmp_path, content, why):
    with pytest.raises(UnsupportedModelError, match="config.json") as caught:
        model_identity(_model_dir(tmp_path, content))
    assert why in caught.value.message and caught.value.code == "invalid_model_config"


def test_missing_config_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no config.json"):
        model_identity(tmp_path)
