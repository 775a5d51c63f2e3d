"""End to end with a real Celery worker process: success, cancel, and a worker killed mid-training."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from tests.service_support import chat_rows, job_body

pytestmark = pytest.mark.e2e


def test_upload_train_register_download(service, upload_rows):
    file_id = upload_rows(chat_rows(16))
    job = service.http.post("/v1/fine_tuning/jobs", json=job_body("toy", file_id, max_steps=6)).json()
    job = service.wait_job(job["id"], lambda j: j["status"] == "succeeded")
    name = job["fine_tuned_model"]
    assert name == f"ft:toy:{job['organization_id']}::{job['id']}" and job["trained_tokens"] > 0
    model = service.http.get(f"/v1/models/{name}").json()
    assert model["parent"] == "toy" and model["kind"] == "adapter"
    archive = service.http.get(f"/v1/models/{name}/content")
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        members = tar.getnames()
    assert any(m.endswith("adapter_model.safetensors") for m in members)
    artifacts = {a["name"] for a in service.http.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts").json()["data"]}
    assert {
        "expert_scores.json",
        "expert_config.json",
        "scores_heatmap.png",
        "loss_curve.png",
        "metrics.csv",
        "eval_results.json",
    } <= artifacts
    messages = [e["message"] for e in service.events(job["id"])]
    assert messages[-1].startswith("New fine-tuned model created")


def test_cancel_during_training_frees_the_worker(service, upload_rows):
    file_id = upload_rows(chat_rows(16))
    long = service.http.post("/v1/fine_tuning/jobs", json=job_body("toy", file_id, max_steps=5000)).json()
    service.wait_job(long["id"], lambda j: j["phase"] == "training" and (j["progress"] or {}).get("fraction"))
    waiting = service.http.post("/v1/fine_tuning/jobs", json=job_body("toy", file_id, max_steps=2)).json()
    assert waiting["status"] == "validating_files" and waiting["queue_position"] == 1
    assert service.http.post(f"/v1/fine_tuning/jobs/{waiting['id']}/cancel").json()["status"] == "cancelled"
    cancelled = service.http.post(f"/v1/fine_tuning/jobs/{long['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    deadline = time.monotonic() + 20
    while not any(
        e["message"] == "Stopped during training; the device is released." for e in service.events(long["id"])
    ):
        assert time.monotonic() < deadline, "the worker did not stop training"
        time.sleep(0.2)
    short = service.http.post("/v1/fine_tuning/jobs", json=job_body("toy", file_id, max_steps=2)).json()
    service.wait_job(short["id"], lambda j: j["status"] == "succeeded")
    assert service.http.get(f"/v1/fine_tuning/jobs/{long['id']}").json()["status"] == "cancelled"
    never_ran = service.http.get(f"/v1/fine_tuning/jobs/{waiting['id']}").json()
    assert never_ran["status"] == "cancelled" and never_ran["started_at"] is None


def test_killed_worker_is_replaced_and_training_resumes(service, upload_rows):
    file_id = upload_rows(chat_rows(16))
    # Enough steps that the kill lands mid-training even when a loaded machine answers the polls slowly.
    body = job_body("toy", file_id, max_steps=300, save_every=4)
    job = service.http.post("/v1/fine_tuning/jobs", json=body).json()

    def has_checkpoint(j: dict) -> bool:
        return bool(
            j["phase"] == "training" and service.http.get(f"/v1/fine_tuning/jobs/{j['id']}/checkpoints").json()["data"]
        )

    before = service.wait_job(job["id"], has_checkpoint)
    service.kill_worker()  # SIGKILL the whole worker: no broker redelivers its task
    assert before["progress"]["fraction"] < 1
    service.start_worker()
    done = service.wait_job(job["id"], lambda j: j["status"] == "succeeded")
    messages = [e["message"] for e in service.events(job["id"])]
    assert any(m.startswith("Re-enqueued step 'train'") for m in messages)
    assert "Resuming training from the latest checkpoint." in messages
    steps = [
        c["step_number"]
        for c in service.http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints?limit=100").json()["data"]
    ]
    assert steps[0] == 300 and done["fine_tuned_model"]


def test_pause_checkpoints_releases_the_device_and_resume_continues(service, upload_rows):
    file_id = upload_rows(chat_rows(16))
    job = service.http.post("/v1/fine_tuning/jobs", json=job_body("toy", file_id, max_steps=600, save_every=50)).json()
    url = f"/v1/fine_tuning/jobs/{job['id']}"
    service.wait_job(job["id"], lambda j: j["phase"] == "training" and (j["progress"] or {}).get("fraction"))
    assert service.http.post(f"{url}/pause").status_code == 200
    paused = service.wait_job(job["id"], lambda j: j["status"] == "paused")
    assert paused["progress"]["fraction"] < 1
    saved = [c["step_number"] for c in service.http.get(f"{url}/checkpoints?limit=100").json()["data"]]
    assert saved, "pausing saves a checkpoint"
    assert service.http.post(f"{url}/resume").json()["status"] in ("queued", "running")
    service.wait_job(job["id"], lambda j: j["status"] == "succeeded")
    events = service.events(job["id"])
    messages = [e["message"] for e in events]
    resumed_at = messages.index("Job resumed at step 'train'.")
    assert "Resuming training from the latest checkpoint." in messages[resumed_at:]
    steps_after = [e["data"]["step"] for e in events[resumed_at:]
                   if e["type"] == "metrics" and e["data"].get("phase") == "training"]
    assert steps_after and min(steps_after) > max(saved), (saved, steps_after)  # continued, not restarted
    final = [c["step_number"] for c in service.http.get(f"{url}/checkpoints?limit=100").json()["data"]]
    assert final == sorted(set(final), reverse=True) and final[0] == 600 and set(saved) <= set(final)


def test_warm_worker_shutdown_checkpoints_and_the_next_worker_continues(service, upload_rows):
    file_id = upload_rows(chat_rows(16))
    body = job_body("toy", file_id, max_steps=3000, save_every=500)
    job = service.http.post("/v1/fine_tuning/jobs", json=body).json()
    service.wait_job(job["id"], lambda j: j["phase"] == "training" and (j["progress"] or {}).get("fraction"))
    service.stop_worker()  # SIGTERM: Celery's warm shutdown waits for the task, which stops at a checkpoint
    messages = [e["message"] for e in service.events(job["id"])]
    assert "Worker shutting down: stopped during training; the next worker continues." in messages
    stopped_at = service.http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["progress"]["fraction"]
    assert stopped_at < 1
    trained = [e["data"]["step"] for e in service.events(job["id"])
               if e["type"] == "metrics" and e["data"].get("phase") == "training"]
    saved = service.http.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert saved and saved[0]["step_number"] == max(trained)  # the step it was on, not the last save_every
    service.start_worker()
    deadline = time.monotonic() + 60
    while "Resuming training from the latest checkpoint." not in messages:
        assert time.monotonic() < deadline, "\n".join(messages)
        time.sleep(0.2)
        messages = [e["message"] for e in service.events(job["id"])]
    assert "Re-enqueued step 'train': its worker shut down." in messages  # by the new worker's reaper, at once
    assert not any("stopped heartbeating" in m for m in messages)  # no lease had to expire
    service.http.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")  # the rest of the run proves nothing new
