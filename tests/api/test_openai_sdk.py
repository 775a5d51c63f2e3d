"""The official ``openai`` SDK drives files, jobs and models against a live server; every object it gets back
is validated strictly with the SDK's own types (``tests.openai_objects.check_openai``)."""

from __future__ import annotations

import io

import openai
import pytest

from api.core.queue import RecordingQueue
from api.main import create_app
from tests.openai_objects import check_openai
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


@pytest.fixture
def inline(settings, auth, base_model):
    """The SDK against a live server whose queue runs the real pipeline steps when drained."""
    from tests.worker.inline_queue import InlineQueue

    queue = InlineQueue(settings)
    with LiveServer(create_app(settings, queue=queue)) as server:
        key = auth["Authorization"].split()[1]
        yield openai.OpenAI(api_key=key, base_url=f"{server.url}/v1", max_retries=0), queue


def strict(call, *args, **kwargs):
    """Call a ``with_raw_response`` method, validate the body strictly, return what the SDK parsed."""
    response = call(*args, **kwargs)
    check_openai(response.http_response.json())
    return response.parse()


def test_acceptance_files_jobs_models_through_the_sdk(inline):
    sdk, queue = inline
    files, jobs, models = sdk.files.with_raw_response, sdk.fine_tuning.jobs.with_raw_response, sdk.models
    data = ("train.jsonl", io.BytesIO(jsonl(chat_rows())))
    kept = strict(files.create, file=data, purpose="fine-tune")
    expiring = strict(files.create, file=("e.jsonl", io.BytesIO(jsonl(chat_rows()))), purpose="fine-tune",
                      expires_after={"anchor": "created_at", "seconds": 7200})
    assert kept.expires_at is None and expiring.expires_at == expiring.created_at + 7200
    assert [f.id for f in strict(files.list, order="asc").data] == [kept.id, expiring.id]
    assert [f.id for f in strict(files.list, order="desc").data] == [expiring.id, kept.id]
    assert strict(files.retrieve, expiring.id).filename == "e.jsonl"

    supervised = strict(jobs.create, model="toy", training_file=kept.id, metadata={"kind": "supervised"},
                        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert supervised.method.type == "supervised" and supervised.hyperparameters.n_epochs == 2
    older = strict(jobs.create, model="toy", training_file=kept.id, hyperparameters={"learning_rate_multiplier": 2.0},
                   metadata={"kind": "older"})
    assert older.method.type == "supervised" and older.hyperparameters.learning_rate_multiplier == 2.0
    esft = {"type": "esft", "esft": {"top_p": 0.5, "n_sample_tokens": 256,
                                     "hyperparameters": {"max_steps": 4, "batch_size": 4, "save_every": 2}}}
    job = strict(jobs.create, model="toy", training_file=kept.id, method=esft, suffix="sdk", metadata={"kind": "esft"})
    assert [j.id for j in strict(jobs.list, metadata={"kind": "esft"}).data] == [job.id]
    assert strict(jobs.retrieve, job.id).metadata == {"kind": "esft"}

    assert strict(jobs.pause, supervised.id).status == "paused"
    assert strict(jobs.resume, supervised.id).status == "validating_files"
    for waiting in (supervised, older):
        assert strict(jobs.cancel, waiting.id).status == "cancelled"
    queue.drain()

    done = strict(jobs.retrieve, job.id)
    assert done.status == "succeeded" and done.hyperparameters.learning_rate_multiplier == pytest.approx(1.0)
    latest = strict(jobs.list_events, job.id, limit=1)
    assert latest.data[0].message.startswith("New fine-tuned model created") and latest.has_more
    older_events = strict(jobs.list_events, job.id, after=latest.data[0].id, limit=100).data
    assert older_events[-1].message.startswith("Created fine-tuning job")
    checkpoints = strict(jobs.checkpoints.list, job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model)
    ckpt_model = strict(models.with_raw_response.retrieve, checkpoints[1].fine_tuned_model_checkpoint)
    assert ckpt_model.owned_by == done.organization_id and ckpt_model.id.endswith(":ckpt-step-2")

    listed = strict(models.with_raw_response.list).data
    assert {m.id for m in listed} == {"toy", done.fine_tuned_model}
    assert done.fine_tuned_model == f"ft:toy:{done.organization_id}:sdk:{job.id}"
    assert strict(models.with_raw_response.retrieve, done.fine_tuned_model).owned_by == done.organization_id
    assert strict(models.with_raw_response.delete, done.fine_tuned_model).deleted
    assert [m.id for m in sdk.models.list()] == ["toy"]
