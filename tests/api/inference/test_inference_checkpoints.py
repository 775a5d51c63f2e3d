"""Checkpoints are models: a real job's ``...:ckpt-step-N`` chats, completes, retrieves and downloads as an adapter,
scoped to its project like adapters are."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from api.inference.embedded import mount_inference_pool
from esft import workflows
from esft.adapters import ESFTAdapter
from esft.serving import EngineConfig
from tests.api.inference.sdk_objects import objects
from tests.openai_objects import check_openai
from tests.service_support import assert_error, job_body
from tests.worker.inline_queue import InlineQueue

PROMPT = "red"


@pytest.fixture
def queue(settings) -> InlineQueue:
    """The app's queue runs the real pipeline steps when drained (overrides the recording queue)."""
    return InlineQueue(settings)


@pytest.fixture
def finished(client, auth, queue, base_model, training_file) -> tuple[dict, dict[int, str]]:
    """A job that checkpointed at every step (1..4; training keeps the newest two) and its checkpoint names."""
    created = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, training_file, save_every=1), headers=auth)
    queue.drain()
    job = client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}", headers=auth).json()
    assert job["status"] == "succeeded", job
    page = check_openai(client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints", headers=auth))
    names = {c["step_number"]: c["fine_tuned_model_checkpoint"] for c in page["data"]}
    assert sorted(names) == [1, 2, 3, 4] and names[3] == f"{job['fine_tuned_model']}:ckpt-step-3"
    return job, names


def _chat(client, model: str, headers: dict):
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 8}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def _download(client, model: str, headers: dict, into: Path) -> ESFTAdapter:
    response = client.get(f"/v1/models/{model}/content", headers=headers)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        files = sorted(Path(n).name for n in tar.getnames() if tar.getmember(n).isfile())
        if ":ckpt-step-" in model:  # the ordinary adapter format, nothing else
            assert files == ["adapter_config.json", "adapter_model.safetensors"]
        tar.extractall(into, filter="data")
    (folder,) = into.iterdir()
    return ESFTAdapter.from_pretrained(folder)  # the library loads it, sha256 checked


def test_a_checkpoint_chats_retrieves_and_downloads_as_an_adapter(client, auth, finished, toy_model_dir, tmp_path):
    job, names = finished
    model = check_openai(client.get(f"/v1/models/{names[3]}", headers=auth))
    assert (model["id"], model["parent"], model["owned_by"]) == (names[3], "toy", job["organization_id"])
    assert model["kind"] == "checkpoint" and model["details"] == {"step_number": 3}
    step3 = _download(client, names[3], auth, tmp_path / "step3")
    assert all(t.dtype == torch.float32 for t in step3.tensors.values())  # the toy base model's dtype
    assert step3.metadata["checkpoint"]["step"] == 3 and step3.base_model["config_hash"]
    last, final = _download(client, names[4], auth, tmp_path / "step4"), _download(
        client, job["fine_tuned_model"], auth, tmp_path / "final")
    assert last.row_tensors == final.row_tensors and sorted(last.tensors) == sorted(final.tensors)
    assert all(torch.equal(last.tensors[k], final.tensors[k]) for k in final.tensors)  # last checkpoint = adapter
    assert not torch.equal(next(iter(step3.tensors.values())), next(iter(final.tensors.values())))

    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    try:
        (reply,) = objects(_chat(client, names[3], auth))
        folder = next((tmp_path / "step3").iterdir())
        want = workflows.generate(toy_model_dir, [{"role": "user", "content": PROMPT}], adapter_dir=folder,
                                  max_new_tokens=8)
        assert reply["model"] == names[3] and reply["choices"][0]["message"]["content"].strip() == want.strip()
        body = {"model": names[3], "prompt": PROMPT, "max_tokens": 4, "temperature": 0}
        objects(client.post("/v1/completions", json=body, headers=auth))
    finally:
        pool.close()
    cache = client.app.state.storage.path(f"jobs/{job['id']}/checkpoint_adapters")
    assert sorted(p.name for p in cache.iterdir()) == ["step-3", "step-4"]  # converted once, no leftovers


def test_checkpoint_names_are_scoped_to_their_project_and_step(client, auth, other_auth, finished):
    job, names = finished
    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=12))
    try:
        missing = f"{job['fine_tuned_model']}:ckpt-step-9"
        forged = names[3].replace(job["organization_id"], "beta")
        for name, headers in ((names[3], other_auth), (missing, auth), (forged, other_auth)):
            error = assert_error(_chat(client, name, headers), 404, "model_not_found", "model")
            assert name in error["message"]
            assert_error(client.get(f"/v1/models/{name}", headers=headers), 404, "model_not_found", "model")
            assert_error(client.get(f"/v1/models/{name}/content", headers=headers), 404, "model_not_found")
        rotated = assert_error(_chat(client, names[1], auth), 404, "model_not_found", "model")
        assert "no longer stored" in rotated["message"]
        assert_error(client.get(f"/v1/models/{names[1]}/content", headers=auth), 404, "model_not_found")
        assert _chat(client, names[4], auth).status_code == 200
    finally:
        pool.close()
    assert_error(client.delete(f"/v1/models/{names[4]}", headers=auth), 400, "not_deletable", "model")
