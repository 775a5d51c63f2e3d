"""Every method type through the real pipeline (validate -> score -> select -> train -> evaluate -> register), and
its result answering at /v1/chat/completions: ESFT-LoRA through the base model's expert slots, FFT and LoRA as
full copies of the model served by an engine of their own."""

from __future__ import annotations

import pytest

from esft import workflows
from esft.serving import EngineConfig
from tests.service_support import job_body

PROMPT = "hello"
EXPECTED_ARTIFACTS = {"loss_curve.png", "metrics.csv", "eval_results.json", "validation_report.json"}


def _run(client, auth, queue, model, file_id, method: str, **options) -> dict:
    body = job_body(model, file_id)
    hyperparameters = body["method"]["esft"]["hyperparameters"]
    params = {"hyperparameters": hyperparameters, **options}
    if method == "esft_lora":
        params.update(top_p=0.5, n_sample_tokens=256)
    body["method"] = {"type": method, method: params}
    job = client.post("/v1/fine_tuning/jobs", json=body, headers=auth)
    assert job.status_code == 200, job.text
    queue.drain()
    return client.get(f"/v1/fine_tuning/jobs/{job.json()['id']}", headers=auth).json()


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options", "full_copy"), [
    ("esft_lora", {"rank": 2}, False),
    ("fft", {}, True),
    ("lora", {"rank": 2}, True),
    ("lora_experts", {"rank": 2}, True),
])
def test_each_method_trains_registers_and_answers(method, options, full_copy, client, auth, queue, base_model,
                                                  training_file, toy_model_dir):
    from api.inference.embedded import mount_inference_pool

    job = _run(client, auth, queue, base_model, training_file, method, **options)
    assert job["status"] == "succeeded", job
    assert job["method"]["type"] == method and job["method"][method].get("rank") == options.get("rank")
    artifacts = {a["name"] for a in client.get(f"/v1/fine_tuning/jobs/{job['id']}/artifacts", headers=auth).json()
                 ["data"]}
    assert artifacts >= EXPECTED_ARTIFACTS
    assert ("expert_config.json" in artifacts) == (method == "esft_lora")  # only selecting methods select
    model = client.get(f"/v1/models/{job['fine_tuned_model']}", headers=auth).json()
    assert model["details"]["full_copy"] is full_copy and model["details"]["bytes"] > 0
    stored = client.app.state.storage.path(f"adapters/{job['id']}")
    want = (workflows.generate(stored, PROMPT, max_new_tokens=6) if full_copy
            else workflows.generate(toy_model_dir, PROMPT, adapter_dir=stored, max_new_tokens=6))

    pool = mount_inference_pool(client.app, EngineConfig(max_new_tokens=6))
    try:
        body = {"model": job["fine_tuned_model"], "messages": [{"role": "user", "content": PROMPT}],
                "temperature": 0, "max_tokens": 6}
        reply = client.post("/v1/chat/completions", json=body, headers=auth)
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == job["fine_tuned_model"]
        assert reply.json()["choices"][0]["message"]["content"].strip() == want
        assert (job["fine_tuned_model"] in pool.engines) == full_copy  # full copies: an engine of their own
        body["model"] = f"{job['fine_tuned_model']}:ckpt-step-4"  # only ESFT checkpoints convert to adapters
        refused = client.post("/v1/chat/completions", json=body, headers=auth)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "checkpoint_not_servable"
    finally:
        pool.close()


def test_method_options_are_checked_at_creation(client, auth, base_model, training_file):
    body = job_body(base_model, training_file)
    body["method"] = {"type": "lora", "lora": {"rank": 0}}
    reply = client.post("/v1/fine_tuning/jobs", json=body, headers=auth)
    assert reply.status_code == 400 and reply.json()["error"]["param"].startswith("method.lora"), reply.text
    body["method"] = {"type": "fft", "lora": {"rank": 2}}
    reply = client.post("/v1/fine_tuning/jobs", json=body, headers=auth)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "method.lora", reply.text
    body["method"] = {"type": "fft", "fft": {"top_p": 0.5}}  # selection options belong to selecting methods
    assert client.post("/v1/fine_tuning/jobs", json=body, headers=auth).status_code == 400
