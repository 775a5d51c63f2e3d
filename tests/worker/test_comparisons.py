"""POST /v1/fine_tuning/comparisons: one ordinary job per method on the same files and budget, then a report
with every method, a winner per column, Markdown and a PNG; bad requests store nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from api.core.db.models import Comparison, Job
from api.core.db.session import session_scope
from api.quickstart import TASK, task_rows
from api.schemas.comparisons import ComparisonList
from tests.service_support import assert_error, jsonl

METHODS = ["esft", "esft_lora", "fft", "lora", "lora_experts"]
BUDGET = {"max_steps": 2, "batch_size": 8, "learning_rate": 1e-2, "seq_len": 64}


def _files(upload) -> tuple[str, str]:
    rows = task_rows(repeats=2)
    training = upload(jsonl(rows)).json()["id"]
    validation = upload(jsonl(rows[: len(TASK)]), name="valid.jsonl").json()["id"]
    return training, validation


@pytest.mark.slow
def test_a_comparison_on_the_quickstart_data_reports_every_method(client, auth, queue, base_model, upload):
    training, validation = _files(upload)
    body = {"model": base_model, "training_file": training, "validation_file": validation, "methods": METHODS,
            "hyperparameters": BUDGET, "seed": 3}
    created = client.post("/v1/fine_tuning/comparisons", json=body, headers=auth)
    assert created.status_code == 200, created.text
    comparison = created.json()
    assert comparison["status"] == "running" and [j["method"] for j in comparison["jobs"]] == METHODS
    queue.drain(max_steps=100)

    done = client.get(f"/v1/fine_tuning/comparisons/{comparison['id']}", headers=auth).json()
    assert done["status"] == "succeeded", done
    assert all(j["status"] == "succeeded" for j in done["jobs"])
    report = done["report"]
    assert report["methods"] == METHODS
    columns = {c["name"] for c in report["columns"]}
    assert {"task.exact_match", "adapter_bytes", "optimizer_state_bytes", "train_seconds"} <= columns
    values = {row["method"]: row["values"] for row in report["rows"]}
    assert all(v["adapter_bytes"] > 0 and v["optimizer_state_bytes"] > 0 for v in values.values())
    assert values["esft_lora"]["adapter_bytes"] < values["esft"]["adapter_bytes"] < values["fft"]["adapter_bytes"]
    assert report["winners"]["optimizer_state_bytes"] != ["fft"]
    jobs = [client.get(f"/v1/fine_tuning/jobs/{j['id']}", headers=auth).json() for j in done["jobs"]]
    assert {job["hyperparameters"]["total_steps"] for job in jobs} == {2}  # the same budget for every method
    assert {job["seed"] for job in jobs} == {3} and {job["metadata"]["comparison"] for job in jobs} == {done["id"]}

    png = client.get(f"/v1/fine_tuning/comparisons/{done['id']}/report.png", headers=auth)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    markdown = client.get(f"/v1/fine_tuning/comparisons/{done['id']}/report.md", headers=auth).text
    assert all(f"| {m} |" in markdown for m in METHODS)
    page = ComparisonList.model_validate(client.get("/v1/fine_tuning/comparisons", headers=auth).json())
    assert [c.id for c in page.data] == [page.first_id] == [done["id"]]  # not an OpenAI object: our schema


def test_bad_comparisons_are_refused_and_store_nothing(client, auth, other_auth, base_model, upload):
    training, _ = _files(upload)
    body = {"model": base_model, "training_file": training, "methods": ["esft", "fft"], "hyperparameters": BUDGET}
    assert_error(client.post("/v1/fine_tuning/comparisons", json={**body, "methods": ["fft", "fft"]},
                             headers=auth), 400, param="methods")
    assert_error(client.post("/v1/fine_tuning/comparisons", json={**body, "methods": ["fft", "dora"]},
                             headers=auth), 400)
    bad_budget = {**body, "hyperparameters": {**BUDGET, "n_epochs": 10**6, "max_steps": None}}
    assert client.post("/v1/fine_tuning/comparisons", json=bad_budget, headers=auth).status_code == 400
    assert_error(client.post("/v1/fine_tuning/comparisons", json={**body, "training_file": "file-nope"},
                             headers=auth), 404)
    with session_scope(client.app.state.settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
    created = client.post("/v1/fine_tuning/comparisons", json=body, headers=auth).json()
    assert_error(client.get(f"/v1/fine_tuning/comparisons/{created['id']}", headers=other_auth), 404)
    assert_error(client.get(f"/v1/fine_tuning/comparisons/{created['id']}/report.png", headers=auth), 404)
