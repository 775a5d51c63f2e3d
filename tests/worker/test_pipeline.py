"""The whole pipeline in process with the real library: success, artifacts, registry, and idempotent steps."""

from __future__ import annotations

import io
import tarfile

from sqlalchemy import update

from api.core.db.models import Job
from api.core.db.session import session_scope
from api.core.queue import STEPS
from tests.openai_objects import check_openai
from tests.service_support import assert_error, chat_rows, job_body, jsonl


def run_job(client, auth, queue, model, file_id, **hyper) -> dict:
    job = client.post("/v1/fine_tuning/jobs", json=job_body(model, file_id, **hyper), headers=auth).json()
    queue.drain()
    return client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()


def test_job_succeeds_and_registers_a_downloadable_adapter(client, auth, queue, base_model, training_file):
    job = run_job(client, auth, queue, base_model, training_file, save_every=2)
    assert job["status"] == "succeeded", job
    assert [step for step, _ in queue.outcomes] == list(STEPS)
    assert job["fine_tuned_model"] == f"ft:toy:{job['organization_id']}::{job['id']}" and job["trained_tokens"] > 0
    assert job["progress"]["fraction"] == 1.0 and job["hyperparameters"]["total_steps"] == 4
    check_openai(job)  # with the hyperparameters the worker resolved
    models = {m["id"]: m for m in check_openai(client.get("/v1/models", headers=auth))["data"]}
    assert models[job["fine_tuned_model"]]["parent"] == "toy"
    archive = client.get(f"/v1/models/{job['fine_tuned_model']}/content", headers=auth)
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = tar.getnames()
    assert any(n.endswith("adapter_config.json") for n in names)
    assert any(n.endswith("adapter_model.safetensors") for n in names)
    assert not any("checkpoints" in n for n in names)
    page = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts", headers=auth).json()
    assert (page["first_id"], page["last_id"]) == (page["data"][0]["name"], page["data"][-1]["name"])
    artifacts = {a["name"] for a in page["data"]}
    assert {
        "expert_scores.json",
        "expert_config.json",
        "scores_heatmap.png",
        "loss_curve.png",
        "metrics.csv",
        "eval_results.json",
        "validation_report.json",
    } <= artifacts
    png = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/loss_curve.png", headers=auth)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    csv = client.get(f"/v1/files/{job['result_files'][0]}/content", headers=auth).text
    assert csv.splitlines()[0].startswith("step,") and len(csv.splitlines()) == 5
    checkpoints = check_openai(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth))["data"]
    assert [c["step_number"] for c in checkpoints] == [4, 2]
    metrics = [
        e
        for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100", headers=auth).json()["data"]
        if e["type"] == "metrics" and e["data"].get("phase") == "training"
    ]
    assert metrics[0]["data"]["step"] == 4 and "train_loss" in metrics[0]["data"]  # newest first


def test_every_step_skips_when_its_artifact_exists(client, auth, queue, lib, base_model, training_file, settings):
    job = run_job(client, auth, queue, base_model, training_file)
    assert job["status"] == "succeeded"
    lib.calls.clear()
    for step in STEPS:
        with session_scope(settings.database_url) as session:
            session.execute(
                update(Job).where(Job.id == job["id"]).values(status="running", step=step, dispatch_id=f"again-{step}")
            )
        queue.sent = [(step, job["id"], f"again-{step}")]
        queue.run_next()
        queue.sent.clear()
    assert sum(lib.calls.values()) == 0
    again = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()
    assert again["status"] == "succeeded" and again["fine_tuned_model"] == job["fine_tuned_model"]


def test_invalid_training_file_fails_at_validation(client, auth, queue, base_model, upload):
    bad = upload(jsonl(chat_rows(6) + [{"messages": [{"role": "user", "content": "no answer"}]}])).json()
    job = run_job(client, auth, queue, base_model, bad["id"])
    assert job["status"] == "failed" and job["error"]["param"] == "training_file"
    assert "line 7" in job["error"]["message"] and "example_missing_assistant_message" in job["error"]["message"]
    assert [step for step, _ in queue.outcomes] == ["validate"]


def test_too_few_examples_fail(client, auth, queue, base_model, upload):
    few = upload(jsonl(chat_rows(2))).json()
    job = run_job(client, auth, queue, base_model, few["id"])
    assert job["status"] == "failed" and "too_few_examples" in job["error"]["message"]


def test_adapters_are_isolated_and_deletable(client, auth, other_auth, queue, base_model, training_file):
    job = run_job(client, auth, queue, base_model, training_file)
    name = job["fine_tuned_model"]
    assert_error(client.get(f"/v1/models/{name}", headers=other_auth), 404, "model_not_found")
    assert_error(client.get(f"/v1/models/{name}/content", headers=other_auth), 404)
    assert_error(client.delete(f"/v1/models/{name}", headers=other_auth), 404)
    assert [m["id"] for m in client.get("/v1/models", headers=other_auth).json()["data"]] == ["toy"]
    assert_error(client.delete("/v1/models/toy", headers=other_auth), 403)
    assert client.delete(f"/v1/models/{name}", headers=auth).json()["deleted"]
    assert_error(client.get(f"/v1/models/{name}", headers=auth), 404)


def test_a_tampered_adapter_is_never_served(client, auth, queue, base_model, training_file, settings):
    job = run_job(client, auth, queue, base_model, training_file)
    weights = settings.storage_dir / "adapters" / job["id"] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert_error(client.get(f"/v1/models/{job['fine_tuned_model']}/content", headers=auth), 500, "adapter_corrupted")


def test_validation_file_gives_validation_loss(client, auth, queue, base_model, training_file, upload):
    validation = upload(jsonl(chat_rows(4)), name="valid.jsonl").json()["id"]
    body = {**job_body(base_model, training_file), "validation_file": validation}
    job = client.post("/v1/fine_tuning/jobs", json=body, headers=auth).json()
    queue.drain()
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()["status"] == "succeeded"
    data = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100", headers=auth).json()["data"]
    final = [e["data"] for e in data if e["type"] == "metrics" and e["data"].get("step") == 4][0]
    assert final["valid_loss"] > 0 and final["tokens_per_s"] > 0
    results = client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts/eval_results.json", headers=auth).json()
    assert results["source"] == "validation_file" and results["n_examples"] == 4
