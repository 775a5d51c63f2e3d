"""The official ``openai`` SDK drives files and jobs against a live server (ESFT method via the method dict)."""

from __future__ import annotations

import io

import openai
import pytest

from api.core.queue import RecordingQueue
from api.main import create_app
from tests.service_support import LiveServer, chat_rows, jsonl


@pytest.fixture
def sdk(settings, auth, base_model):
    app = create_app(settings, queue=RecordingQueue())
    with LiveServer(app) as server:
        key = auth["Authorization"].split()[1]
        yield openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0)


def test_files_and_jobs_through_the_sdk(sdk):
    uploaded = sdk.files.create(file=("train.jsonl", io.BytesIO(jsonl(chat_rows()))), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes > 0
    assert [f.id for f in sdk.files.list()] == [uploaded.id]
    assert sdk.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert sdk.files.content(uploaded.id).read() == jsonl(chat_rows())

    method = {"type": "esft", "esft": {"top_p": 0.5, "hyperparameters": {"max_steps": 3, "batch_size": 2}}}
    job = sdk.fine_tuning.jobs.create(
        model="toy", training_file=uploaded.id, method=method, suffix="sdk", seed=7, metadata={"team": "a"}
    )
    assert job.status == "validating_files" and job.method.esft["top_p"] == 0.5 and job.seed == 7
    assert sdk.fine_tuning.jobs.retrieve(job.id).metadata == {"team": "a"}
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=5)] == [job.id]
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    events = list(sdk.fine_tuning.jobs.list_events(job.id))
    assert events[0].object == "fine_tuning.job.event" and "cancelled" in events[0].message
    assert list(sdk.fine_tuning.jobs.checkpoints.list(job.id)) == []


def test_sdk_errors_are_typed(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.fine_tuning.jobs.retrieve("ftjob-nope")
    assert missing.value.code == "fine_tuning_job_not_found"
    with pytest.raises(openai.BadRequestError):
        sdk.files.create(file=("x.jsonl", io.BytesIO(b"{bad\n")), purpose="fine-tune")
    bad = openai.OpenAI(api_key="sk-esft-wrong", base_url=str(sdk.base_url), max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.files.list()
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.create(model="missing", training_file="file-x")
