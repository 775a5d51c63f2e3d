"""Schemathesis over the committed ``openapi.json`` (inference routes included) against a live server.

A recording queue (no job runs) and an engine capped at 8 new tokens keep it cheap; the generation is
derandomized and bounded, so the run is the same every time. Every response must be a non-5xx and, where its
status is documented, match the documented schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.core.settings import Settings
from api.inference.embedded import mount_inference_pool
from api.main import create_app
from api.services.registry import add_base_model
from esft.serving import EngineConfig
from tests.service_support import LiveServer, _key, chat_rows, jsonl

pytestmark = pytest.mark.slow

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.json"
EXAMPLES = 20  # per operation and generation mode: ~2,000 requests over 29 operations, about a minute on 2 cores


@pytest.fixture(scope="module")
def live(tmp_path_factory, toy_model_dir):
    base = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(data_dir=base / "data", min_examples=4, model_roots=[base / "models"],
                         rate_limit_requests_per_second=0)
    app = create_app(settings_, queue=RecordingQueue())
    mount_inference_pool(app, EngineConfig(max_new_tokens=8, max_batch_size=4))
    with LiveServer(app) as server:
        auth = _key(settings_, "alpha", True)
        with session_scope(settings_.database_url) as session:
            add_base_model(session, "toy", str(toy_model_dir), roots=None)
        uploaded = httpx.post(f"{server.url}/v1/files", headers=auth, files={"file": ("t.jsonl", jsonl(chat_rows()))},
                              data={"purpose": "fine-tune"})
        assert uploaded.status_code == 200, uploaded.text
        chat = {"model": "toy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        warm = httpx.post(f"{server.url}/v1/chat/completions", headers=auth, json=chat, timeout=120)
        assert warm.status_code == 200, warm.text  # the engine loads once, before the fuzzing
        yield server.url, auth


schema = schemathesis.openapi.from_dict(json.loads(OPENAPI.read_text()))


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_schema_violation(case, live):
    url, auth = live
    checks = [not_a_server_error, response_schema_conformance]
    case.call_and_validate(base_url=url, headers=auth, checks=checks, timeout=60)
