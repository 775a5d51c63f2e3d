"""A client generated from the committed openapi.json by openapi-python-client runs a whole job, and chats and
completes (plain and streaming) with the inference routes mounted on the service."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from api.cli import ensure_default_key
from api.core.db.session import session_scope
from api.core.migrate import upgrade
from api.core.queue import RecordingQueue
from api.core.settings import Settings
from api.main import create_app
from api.services.registry import add_base_model
from tests.api.inference.sdk_objects import strict
from tests.service_support import LiveServer, chat_rows, jsonl

pytestmark = pytest.mark.e2e
SCHEMA = Path(__file__).resolve().parents[2] / "openapi.json"


@pytest.fixture
def generated(tmp_path, monkeypatch):
    tool = shutil.which("openapi-python-client")
    if tool is None:
        pytest.skip("openapi-python-client is not installed (pip install -e '.[dev]')")
    out = tmp_path / "esft_generated_client"
    subprocess.run(
        [tool, "generate", "--path", str(SCHEMA), "--meta", "none", "--output-path", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("esft_generated_client")
    for name in [m for m in sys.modules if m.startswith("esft_generated_client")]:
        del sys.modules[name]


def test_generated_client_runs_a_job(service, generated):
    from esft_generated_client import AuthenticatedClient
    from esft_generated_client.api.files import files_create
    from esft_generated_client.api.fine_tuning import (
        fine_tuning_create_job,
        fine_tuning_list_events,
        fine_tuning_retrieve_job,
    )
    from esft_generated_client.api.models import models_download, models_retrieve
    from esft_generated_client.models import BodyFilesCreate, JobCreate
    from esft_generated_client.types import File

    client = AuthenticatedClient(base_url=service.url, token=service.key)
    body = BodyFilesCreate(file=File(payload=jsonl(chat_rows(16)), file_name="train.jsonl"), purpose="fine-tune")
    uploaded = files_create.sync(client=client, body=body)
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    request = JobCreate.from_dict(
        {
            "model": "toy",
            "training_file": uploaded.id,
            "suffix": "gen",
            "method": {
                "type": "esft",
                "esft": {
                    "top_p": 0.5,
                    "n_sample_tokens": 256,
                    "hyperparameters": {"max_steps": 3, "batch_size": 4, "seq_len": 32},
                },
            },
        }
    )
    job = fine_tuning_create_job.sync(client=client, body=request)
    deadline = time.monotonic() + 240
    while (job := fine_tuning_retrieve_job.sync(client=client, fine_tuning_job_id=job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    events = fine_tuning_list_events.sync(client=client, fine_tuning_job_id=job.id, limit=100)
    assert any(e.type_ == "metrics" for e in events.data)
    model = models_retrieve.sync(client=client, model=job.fine_tuned_model)
    assert model.parent == "toy" and job.fine_tuned_model == f"ft:toy:{job.organization_id}:gen:{job.id}"
    archive = models_download.sync_detailed(client=client, model=job.fine_tuned_model)
    assert archive.status_code == 200 and archive.content[:2] == b"\x1f\x8b"  # gzip magic

    # The job's events as a server-sent stream (oldest first), through the generated request builder.
    kwargs = fine_tuning_list_events._get_kwargs(fine_tuning_job_id=job.id, stream=True)
    with client.get_httpx_client().stream(**kwargs) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    streamed = [json.loads(line) for line in lines if line != "[DONE]"]
    assert streamed[0]["message"].startswith("Created") and any(e["type"] == "metrics" for e in streamed)

    # The adapter answers at the chat endpoint under its model name.
    from esft_generated_client.api.inference import inference_create_chat_completion
    from esft_generated_client.models import ChatCompletionRequest

    ask = {"model": job.fine_tuned_model, "messages": [{"role": "user", "content": "add 1 and 4"}], "max_tokens": 4}
    reply = inference_create_chat_completion.sync(client=client, body=ChatCompletionRequest.from_dict(ask))
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.role == "assistant"


@pytest.fixture
def inference_service(tmp_path, toy_model_dir):
    """The service (no worker) with inference mounted for the registered base model ``toy``."""
    from api.inference.embedded import mount_inference
    from esft.serving import EngineConfig

    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings.database_url)
    key = ensure_default_key(settings)
    with session_scope(settings.database_url) as session:
        add_base_model(session, "toy", str(toy_model_dir), roots=None)
    app = create_app(settings, queue=RecordingQueue(), migrate=False)
    mount_inference(app, "toy", EngineConfig(max_new_tokens=16))
    with LiveServer(app) as server:  # its shutdown closes the engine (app.state.shutdown_hooks)
        yield SimpleNamespace(url=server.url, key=key)


def _stream(client, operation, body) -> list[dict]:
    """Stream with the generated request builder over the generated client's session (the generator reads
    JSON bodies only); every event validated against the openai SDK's types."""
    with client.get_httpx_client().stream(**operation._get_kwargs(body=body)) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    events = [json.loads(line) for line in data[:-1]]
    for event in events:
        strict(event, chunk=True)
    return events


def test_generated_client_chats_and_completes(inference_service, generated):
    from esft_generated_client import AuthenticatedClient
    from esft_generated_client.api.inference import inference_create_chat_completion, inference_create_completion
    from esft_generated_client.models import ChatCompletion, ChatCompletionRequest, CompletionRequest, TextCompletion

    client = AuthenticatedClient(base_url=inference_service.url, token=inference_service.key)
    ask = {"model": "toy", "messages": [{"role": "user", "content": "name a colour"}], "max_tokens": 6}
    ask |= {"temperature": 0, "n": 2, "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5}
    reply = inference_create_chat_completion.sync(client=client, body=ChatCompletionRequest.from_dict(ask))
    assert isinstance(reply, ChatCompletion), reply
    strict(reply.to_dict())
    assert [c.index for c in reply.choices] == [0, 1] and reply.system_fingerprint == "fp_toy"
    streamed = _stream(
        client,
        inference_create_chat_completion,
        ChatCompletionRequest.from_dict({**ask, "stream": True, "stream_options": {"include_usage": True}}),
    )
    for choice in reply.choices:
        text = "".join(
            e["choices"][0]["delta"].get("content") or ""
            for e in streamed[:-1]
            if e["choices"][0]["index"] == choice.index
        )
        assert text == choice.message.content
    assert streamed[-1]["usage"]["completion_tokens"] == reply.usage.completion_tokens

    body = {"model": "toy", "prompt": "red", "max_tokens": 5, "temperature": 0}
    text = inference_create_completion.sync(client=client, body=CompletionRequest.from_dict(body))
    assert isinstance(text, TextCompletion), text
    strict(text.to_dict())
    events = _stream(client, inference_create_completion, CompletionRequest.from_dict({**body, "stream": True}))
    assert "".join(e["choices"][0]["text"] for e in events) == text.choices[0].text
