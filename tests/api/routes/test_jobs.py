"""Jobs: create and enqueue, request validation, listing, cancel, events (JSON pages and SSE), checkpoints."""

from __future__ import annotations

import json

import pytest

from api.schemas import openai_params
from esft.config import DEFAULT_LEARNING_RATE
from tests.openai_objects import check_openai
from tests.service_support import assert_error, chat_rows, job_body, jsonl

pytestmark = pytest.mark.db  # also on PostgreSQL

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def job(client, auth, base_model, training_file) -> dict:
    response = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth)
    assert response.status_code == 200, response.text
    return check_openai(response)


def test_create_enqueues_validation(job, queue):
    assert job["object"] == "fine_tuning.job" and job["status"] == "validating_files"
    assert job["queue_position"] == 1 and job["method"]["type"] == "esft"
    assert job["hyperparameters"]["max_steps"] == 4 and job["hyperparameters"]["n_epochs"] == "auto"
    assert queue.sent == [("validate", job["id"], queue.sent[0][2])]


def test_defaults_are_auto(client, auth, base_model, training_file):
    body = {"model": base_model, "training_file": training_file}
    job = client.post("/v1/fine_tuning/jobs", json=body, headers=auth).json()
    esft = job["method"]["esft"]
    assert esft["score_function"] == "token" and esft["top_p"] == "auto"
    assert esft["hyperparameters"]["learning_rate"] == "auto"


def test_unknown_model_and_files(client, auth, base_model, training_file):
    body = job_body("nope", training_file)
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 404, "model_not_found", "model")
    body = job_body(base_model, "file-missing")
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 404, "file_not_found", "training_file")
    body = {**job_body(base_model, training_file), "validation_file": "file-missing"}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 404, param="validation_file")


HP = "method.esft.hyperparameters."


@pytest.mark.parametrize(
    ("esft", "param"),
    [
        ({"top_p": False}, "method.esft.top_p"),
        ({"top_p": 1.5}, "method.esft.top_p"),
        ({"top_p": 0}, "method.esft.top_p"),
        ({"score_function": "magic"}, "method.esft.score_function"),
        ({"n_sample_tokens": -5}, "method.esft.n_sample_tokens"),
        ({"hyperparameters": {"learning_rate": -1.0}}, HP + "learning_rate"),
        ({"hyperparameters": {"learning_rate": 0.0}}, HP + "learning_rate"),
        ({"hyperparameters": {"learning_rate": float("nan")}}, HP + "learning_rate"),
        ({"hyperparameters": {"learning_rate": float("inf")}}, HP + "learning_rate"),
        ({"hyperparameters": {"weight_decay": float("-inf")}}, HP + "weight_decay"),
        ({"hyperparameters": {"batch_size": "8"}}, HP + "batch_size"),
        ({"hyperparameters": {"batch_size": 0}}, HP + "batch_size"),
        ({"hyperparameters": {"n_epochs": -3}}, HP + "n_epochs"),
        ({"hyperparameters": {"warmup_ratio": 2.0}}, HP + "warmup_ratio"),
        ({"unknown": 1}, "method.esft.unknown"),
        # above this deployment's limits (Settings: max_epochs, max_batch_size, max_seq_len, ...)
        ({"hyperparameters": {"n_epochs": 10**12}}, HP + "n_epochs"),
        ({"hyperparameters": {"batch_size": 10**9}}, HP + "batch_size"),
        ({"hyperparameters": {"seq_len": 10**7}}, HP + "seq_len"),
        ({"n_sample_tokens": 10**12}, "method.esft.n_sample_tokens"),
    ],
)
def test_invalid_options_are_400_naming_the_param_and_store_nothing(
    client, auth, base_model, training_file, esft, param
):
    body = {"model": base_model, "training_file": training_file, "method": {"type": "esft", "esft": esft}}
    before = client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"]
    raw = json.dumps(body).encode()  # NaN and Infinity as Python's json writes them (non-standard JSON)
    response = client.post("/v1/fine_tuning/jobs", content=raw, headers={**auth, "content-type": "application/json"})
    error = assert_error(response, 400)
    assert error["param"] == param, error
    assert client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"] == before


def test_suffix_and_metadata_limits(client, auth, base_model, training_file):
    body = {**job_body(base_model, training_file), "suffix": "x" * 65}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 400, param="suffix")
    body = {**job_body(base_model, training_file), "metadata": {str(i): "v" for i in range(17)}}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 400, param="metadata")


def test_list_filters_and_pages(client, auth, base_model, training_file):
    ids = [
        client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file), headers=auth).json()["id"]
        for _ in range(3)
    ]
    client.post(f"/v1/fine_tuning/jobs/{ids[0]}/cancel", headers=auth)
    page = client.get("/v1/fine_tuning/jobs?limit=2", headers=auth).json()
    assert [j["id"] for j in page["data"]] == [ids[2], ids[1]] and page["has_more"]
    after = client.get(f"/v1/fine_tuning/jobs?after={ids[1]}", headers=auth).json()
    assert [j["id"] for j in after["data"]] == [ids[0]]
    cancelled = client.get("/v1/fine_tuning/jobs?status=cancelled", headers=auth).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[0]]
    assert_error(client.get("/v1/fine_tuning/jobs?status=bogus", headers=auth), 400, param="status")


def test_cancel_then_conflict(client, auth, job):
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    again = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
    assert_error(again, 409, "job_not_cancellable")
    assert again.headers["x-should-retry"] == "false"


def test_events_newest_first_and_the_stream_oldest_first(client, auth, job):
    client.post(f"{JOBS}/{job['id']}/cancel", headers=auth)
    latest = check_openai(client.get(f"{JOBS}/{job['id']}/events?limit=1", headers=auth))
    assert latest["has_more"] and "cancelled" in latest["data"][0]["message"]
    older = check_openai(client.get(f"{JOBS}/{job['id']}/events?after={latest['last_id']}", headers=auth))
    assert [e["message"][:7] for e in older["data"]] == ["Created"] and not older["has_more"]
    with client.stream("GET", f"{JOBS}/{job['id']}/events?stream=true", headers=auth) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    assert body.count("event: message") == 2 and body.rstrip().endswith("data: [DONE]")
    assert body.index("Created") < body.index("cancelled")
    resumed = {**auth, "Last-Event-ID": older["data"][0]["id"]}
    with client.stream("GET", f"{JOBS}/{job['id']}/events?stream=true", headers=resumed) as stream:
        body = "".join(stream.iter_text())
    assert "Created" not in body and "cancelled" in body


@pytest.mark.parametrize("cursor", ["ftevent-" + "9" * 30, "ftevent-1", "ftevent--1", "x" * 300, ""])
def test_event_ids_are_opaque_cursors(client, auth, job, cursor):
    page = client.get(f"{JOBS}/{job['id']}/events", params={"after": cursor}, headers=auth)
    assert page.status_code == 200 and page.json()["data"] == []
    headers = {**auth, "Last-Event-ID": cursor} if cursor else auth
    if cursor:
        assert_error(client.get(f"{JOBS}/{job['id']}/events?stream=true", headers=headers), 400, "invalid_cursor")


def test_checkpoints_and_artifacts_start_empty(client, auth, job):
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth).json()["data"] == []
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts", headers=auth).json()["data"] == []
    missing = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/loss_curve.png", headers=auth)
    assert_error(missing, 404, "artifact_not_found")
    assert_error(client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/..%2Fesft.db", headers=auth), 404)


def test_deleting_a_file_in_use_conflicts(client, auth, job, training_file):
    assert_error(client.delete(f"/v1/files/{training_file}", headers=auth), 409, "file_in_use")


def test_job_on_invalid_file_is_accepted_then_fails_in_validation(client, auth, base_model, upload, queue):
    bad = upload(jsonl(chat_rows(4) + [{"messages": [{"role": "user", "content": "no answer"}]}])).json()
    assert bad["status"] == "error"
    job = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, bad["id"]), headers=auth).json()
    assert job["status"] == "validating_files"


# --- jobs as OpenAI users write them ------------------------------------------------------------------------


def _create(client, auth, body) -> dict:
    response = client.post(JOBS, json=body, headers=auth)
    assert response.status_code == 200, response.text
    return check_openai(response)


def test_supervised_runs_the_default_method_and_is_reported_as_supervised(client, auth, base_model, training_file):
    hp = {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 2.0}
    body = {"model": base_model, "training_file": training_file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}
    job = _create(client, auth, body)
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": hp}}
    assert job["hyperparameters"] == hp
    assert _create(client, auth, {**body, "method": {"type": "supervised"}})["hyperparameters"] == {
        "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}


def test_top_level_hyperparameters_are_openais_older_supervised_form(client, auth, base_model, training_file):
    body = {"model": base_model, "training_file": training_file, "hyperparameters": {"n_epochs": 3}}
    job = _create(client, auth, body)
    assert job["method"]["type"] == "supervised" and job["method"]["supervised"]["hyperparameters"]["n_epochs"] == 3
    both = {**body, "method": {"type": "supervised"}}
    assert_error(client.post(JOBS, json=both, headers=auth), 400, param="hyperparameters")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"max_steps": 3}}}},
         "method.supervised.hyperparameters.max_steps"),
        ({"method": {"type": "supervised", "esft": {}}}, "method.esft"),
        ({"method": {"type": "esft", "supervised": {}}}, "method.supervised"),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"hyperparameters": {"learning_rate_multiplier": 0}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": "2"}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"learning_rate_multiplier": 1e6}}, "hyperparameters.learning_rate_multiplier"),
        ({"method": {"type": "esft", "esft": {"hyperparameters": {"learning_rate": 1e-4,
                                                                   "learning_rate_multiplier": 2.0}}}},
         "method.esft.hyperparameters.learning_rate_multiplier"),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
    ],
)
def test_openai_spec_errors_are_400_naming_the_field(client, auth, base_model, training_file, body, param):
    body = {"model": base_model, "training_file": training_file, **body}
    assert_error(client.post(JOBS, json=body, headers=auth), 400, param=param)


def test_learning_rate_multiplier_resolves_into_the_learning_rate():
    from api.core.settings import Settings
    from api.services import job_options
    from esft.config import DataFacts

    facts, settings = DataFacts(n_examples=40), Settings()

    def resolved(hyperparameters: dict) -> tuple[float, float]:
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
        values = job_options.resolve(job_options.spec_values(method, 0), facts, settings)
        return values["learning_rate_multiplier"], values["learning_rate"]

    assert resolved({"learning_rate_multiplier": 3.0}) == (3.0, pytest.approx(3 * DEFAULT_LEARNING_RATE))
    assert resolved({}) == (1.0, DEFAULT_LEARNING_RATE)
    esft = {"type": "esft", "esft": {"hyperparameters": {"learning_rate": 4 * DEFAULT_LEARNING_RATE}}}
    values = job_options.resolve(job_options.spec_values(esft, 0), facts, settings)
    assert values["learning_rate_multiplier"] == pytest.approx(4.0)


def test_list_filters_by_metadata(client, auth, base_model, training_file):
    made = {
        team: _create(client, auth, {**job_body(base_model, training_file), "metadata": {"team": team, "x": "1"}})
        for team in ("a", "b")
    }
    page = check_openai(client.get(JOBS, params={"metadata[team]": "b", "metadata[x]": "1"}, headers=auth))
    assert [j["id"] for j in page["data"]] == [made["b"]["id"]]
    assert client.get(JOBS, params={"metadata[team]": "c"}, headers=auth).json()["data"] == []
    assert len(client.get(JOBS, headers=auth).json()["data"]) == 2


def test_pause_resume_cancel_routes(client, auth, job, queue):
    paused = check_openai(client.post(f"{JOBS}/{job['id']}/pause", headers=auth))
    assert paused["status"] == "paused" and paused["queue_position"] is None
    assert_error(client.post(f"{JOBS}/{job['id']}/pause", headers=auth), 409, "job_not_pausable")
    resumed = check_openai(client.post(f"{JOBS}/{job['id']}/resume", headers=auth))
    assert resumed["status"] == "validating_files" and queue.sent[-1][0] == "validate"
    assert_error(client.post(f"{JOBS}/{job['id']}/resume", headers=auth), 409, "job_not_resumable")
    client.post(f"{JOBS}/{job['id']}/pause", headers=auth)
    assert check_openai(client.post(f"{JOBS}/{job['id']}/cancel", headers=auth))["status"] == "cancelled"
    assert_error(client.post(f"{JOBS}/{job['id']}/resume", headers=auth), 409, "job_not_resumable")
    assert_error(client.post(f"{JOBS}/ftjob-nope/pause", headers=auth), 404)


JOB_SAMPLES = {  # a value that uses each row of docs/openai-compatibility.md's job table
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    "seed": 3,
    "suffix": "row",
    "metadata": {"team": "a"},
    "hyperparameters": {"n_epochs": 2, "batch_size": 4},
    "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
}


@pytest.mark.parametrize(("name", "status"), [(n, s) for n, (s, _) in openai_params.JOBS.items()])
def test_every_job_parameter_row_answers_as_the_table_says(client, auth, base_model, training_file, name, status):
    body = {"model": base_model, "training_file": training_file}
    if name == "validation_file":
        body[name] = training_file
    elif name in JOB_SAMPLES:
        body[name] = JOB_SAMPLES[name]
    response = client.post(JOBS, json=body, headers=auth)
    if status == "refused":
        assert_error(response, 400, param=name)
    else:
        assert response.status_code == 200, response.text
        check_openai(response)


def test_deleting_a_general_ability_file_of_an_unfinished_job_conflicts(
    client, auth, base_model, training_file, upload
):
    general = upload(jsonl(chat_rows()), name="general.jsonl").json()["id"]
    body = {**job_body(base_model, training_file), "general_files": [{"file": general, "metric": "exact_match"}]}
    job = check_openai(client.post("/v1/fine_tuning/jobs", json=body, headers=auth))
    error = assert_error(client.delete(f"/v1/files/{general}", headers=auth), 409, "file_in_use")
    assert job["id"] in error["message"]
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/files/{general}", headers=auth).status_code == 200
