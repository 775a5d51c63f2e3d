"""Evaluation through the service: metrics chosen per job, an LLM judge at a real local server (its failures
counted, never fatal), retention on a base-model suite and job files, and the 400s for bad evaluation input."""

from __future__ import annotations

import json

import pytest

from api.core.db.models import Job
from api.core.db.session import session_scope
from api.core.settings import Settings
from tests.esft.evaluation.judge_server import judge_server
from tests.service_support import assert_error, chat_rows, free_port, job_body, jsonl

MAX_NEW_TOKENS = 4


@pytest.fixture
def settings(tmp_path, toy_model_dir) -> Settings:
    return Settings(data_dir=tmp_path / "data", min_examples=4, heartbeat_interval_s=0.2, event_throttle_s=0.0,
                    eval_max_examples=4, eval_max_new_tokens=MAX_NEW_TOKENS, model_roots=[tmp_path, toy_model_dir],
                    outbound_url_allowlist=["127.0.0.1"], judge_timeout_s=2.0, max_eval_examples=50)


def base_answers(model_dir, rows) -> list[str]:
    """The base model's greedy answers (what the job's evaluation will generate for it)."""
    from esft.evaluation.task import generate_answers
    from esft.serving import Engine, EngineConfig

    prompts = [row["messages"][:-1] for row in rows]
    config = EngineConfig(batching="swap", max_new_tokens=MAX_NEW_TOKENS, device="cpu")
    with Engine.from_pretrained(model_dir, config=config, base_name="base") as engine:
        return generate_answers(engine, prompts, ["base"], max_new_tokens=MAX_NEW_TOKENS)["base"]


def test_job_reports_task_metrics_judge_counts_and_retention(
    client, auth, queue, settings, toy_model_dir, upload, tmp_path
):
    rows = chat_rows(4)
    own = [{"messages": [*r["messages"][:-1], {"role": "assistant", "content": a}]}
           for r, a in zip(rows, base_answers(toy_model_dir, rows), strict=True)]
    suite_path = tmp_path / "never.jsonl"
    suite_path.write_bytes(jsonl([{"prompt": "say", "completion": "never-said"}] * 3))
    registered = client.post("/v1/admin/models", headers=auth, json={
        "id": "toy", "path": str(toy_model_dir),
        "general_suite": [{"name": "never", "path": str(suite_path), "metric": "contains"}]})
    assert registered.status_code == 200, registered.text
    assert registered.json()["details"]["general_suite"] == [{"name": "never", "metric": "contains"}]
    training = upload(jsonl(chat_rows())).json()["id"]
    general = upload(jsonl(own), name="own.jsonl").json()["id"]
    with judge_server() as server:
        body = {**job_body("toy", training), "general_files": [{"file": general, "metric": "exact_match"}],
                "evaluation": {"metrics": ["chrf", "exact_match", "llm_judge"], "max_examples": 4,
                               "judge": {"url": server.url, "model": "judge", "api_key": "sk-judge-secret"}}}
        created = client.post("/v1/fine_tuning/jobs", json=body, headers=auth)
        queue.drain()
        judged = len(server.requests)
        assert {r["auth"] for r in server.requests} == {"Bearer sk-judge-secret"}  # the job's own key
    assert "sk-judge-secret" not in created.text
    job = client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}", headers=auth).json()
    with session_scope(settings.database_url) as session:  # nowhere in the job's row either
        row = session.get(Job, job["id"])
        assert "sk-judge-secret" not in json.dumps([row.evaluation, row.method, row.hyperparameters])
    assert job["status"] == "succeeded", job
    assert job["evaluation"]["metrics"] == ["chrf", "exact_match", "llm_judge"]
    result = job["evaluation_result"]
    task = result["task"]
    assert task["n_examples"] == 4 and task["metrics"] == ["chrf", "exact_match", "llm_judge"]
    judge = task["summary"]["adapter"]["llm_judge"]
    # The toy's answers are not numbers, so the judge server's "Score: <first word>" never parses: counted.
    assert judged == 8 and judge["n_unparsed"] + judge["n_ok"] == 4 and judge["n_scored"] == judge["n_ok"]
    assert task["summary"]["base"]["chrf"]["ci95"] is None  # 4 examples: no interval
    delta = task["delta"]["adapter"]["chrf"]["mean"]
    assert delta == pytest.approx(task["summary"]["adapter"]["chrf"]["mean"] - task["summary"]["base"]["chrf"]["mean"])
    never, mine = result["retention"]["files"]
    assert never["name"] == "never" and never["base"] == 0.0 and never["ratio"] is None
    assert mine["base"] == 100.0 and mine["ratio"] == pytest.approx(mine["adapter"] / 100)
    assert result["retention"]["average"]["base"] == 50.0
    assert f"general ability {result['retention']['average']['ratio']:.0%} kept" in result["headline"]
    assert result["headline"].startswith("task ")
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100", headers=auth).json()["data"]
    assert any(e["message"] == f"Evaluation on 4 examples: {result['headline']}." for e in events)
    artifacts = f"/v1/fine_tuning/jobs/{job['id']}/artifacts"
    png = client.get(f"{artifacts}/retention.png", headers=auth)
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    saved = client.get(f"{artifacts}/retention.json", headers=auth).json()
    assert saved["average"] == result["retention"]["average"] and set(saved["results"]) == {"never", mine["name"]}
    answers = client.get(f"{artifacts}/eval_results.json", headers=auth).json()
    assert answers["n_examples"] == 4 and set(answers["examples"][0]["scores"]) == {"base", "adapter"}
    assert answers["result"] == result


def test_a_judge_that_is_down_is_counted_and_the_job_succeeds(client, auth, queue, base_model, training_file):
    body = {**job_body(base_model, training_file),
            "evaluation": {"metrics": ["llm_judge", "rouge_l"],
                           "judge": {"url": f"http://127.0.0.1:{free_port()}/v1", "model": "j"}}}
    job = client.post("/v1/fine_tuning/jobs", json=body, headers=auth).json()
    queue.drain()
    job = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=auth).json()
    assert job["status"] == "succeeded", job
    summary = job["evaluation_result"]["task"]["summary"]
    for model in ("base", "adapter"):
        judged = summary[model]["llm_judge"]
        assert judged["n_scored"] == 0 and judged["n_unreachable"] + judged["n_skipped"] == 4
    assert summary["adapter"]["rouge_l"]["n_scored"] == 4
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events?limit=100", headers=auth).json()["data"]
    assert any(e["level"] == "warn" and e["message"].startswith("LLM judge: 0 of 4") for e in events)


@pytest.mark.parametrize(("evaluation", "param", "code"), [
    ({"metrics": ["exact_match", "accuracy"]}, "evaluation.metrics[1]", None),
    ({"metrics": []}, "evaluation.metrics", None),
    ({"metrics": ["llm_judge"]}, "evaluation.judge", "invalid_request"),
    ({"metrics": ["llm_judge"], "judge": {"url": "http://judge.elsewhere/v1", "model": "j"}},
     "evaluation.judge.url", "outbound_url_not_allowed"),
    ({"metrics": ["bleu"], "judge": {"url": "file:///etc/passwd", "model": "j"}}, "evaluation.judge.url",
     "outbound_url_not_allowed"),
    ({"max_examples": 51}, "evaluation.max_examples", "invalid_request"),
    ({"max_examples": 0}, "evaluation.max_examples", None),
])
def test_bad_evaluation_specs_are_400s_and_store_nothing(client, auth, base_model, training_file, evaluation,
                                                         param, code):
    body = {**job_body(base_model, training_file), "evaluation": evaluation}
    assert_error(client.post("/v1/fine_tuning/jobs", json=body, headers=auth), 400, code, param)
    assert client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"] == []


def test_bad_general_files_are_400s(client, auth, base_model, training_file, upload):
    broken = upload(b'{"messages": [{"role": "user", "content": "hi"}]}\n{"nonsense": 1}\n').json()
    assert broken["status"] == "error"
    results = upload(jsonl(chat_rows(2)), purpose="batch")
    cases = [([{"file": broken["id"]}], "general_files[0].file", "invalid_file"),
             ([{"file": training_file}, {"file": "file-missing"}], "general_files[1].file", None),
             ([{"file": training_file, "metric": "llm_judge"}], "general_files[0].metric", None)]
    if results.status_code == 200:
        cases.append(([{"file": results.json()["id"]}], "general_files[0].file", "invalid_file_purpose"))
    for general, param, code in cases:
        body = {**job_body(base_model, training_file), "general_files": general}
        response = client.post("/v1/fine_tuning/jobs", json=body, headers=auth)
        assert response.status_code in (400, 404) and response.json()["error"]["param"] == param, response.text
        if code:
            assert response.json()["error"]["code"] == code
    assert client.get("/v1/fine_tuning/jobs", headers=auth).json()["data"] == []


def test_bad_general_suites_are_refused_at_registration(client, auth, toy_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nonsense": 1}\n')
    elsewhere = toy_model_dir.parent / "x.jsonl"  # outside the model roots of this test
    for suite, code in ((bad, "invalid_file"), (tmp_path / "missing.jsonl", "file_not_found"),
                        (elsewhere, "path_not_allowed")):
        body = {"id": "toy", "path": str(toy_model_dir), "general_suite": [{"name": "g", "path": str(suite)}]}
        assert_error(client.post("/v1/admin/models", json=body, headers=auth), 400, code, "general_suite[0].path")
    assert client.get("/v1/models", headers=auth).json()["data"] == []


def test_results_the_engine_cannot_swap_are_served_by_an_engine_of_their_own(toy_model_dir, tmp_path):
    """A LoRA result is not an ESFT adapter: its answers come from the folded model, still through an engine."""
    from esft import workflows
    from esft.config import TrainingConfig
    from esft.evaluation import EvalExample
    from esft.generation import generate_text
    from esft.methods import load_adapter
    from esft.models.loading import load_model
    from worker.evaluation import compare_models

    data = tmp_path / "train.jsonl"
    data.write_bytes(jsonl(chat_rows(8)))
    out = workflows.train(toy_model_dir, data, None, tmp_path / "lora",
                          TrainingConfig(max_steps=2, batch_size=4, learning_rate=5e-2, seq_len=32),
                          method="lora").adapter_dir
    examples = [EvalExample(r["messages"][:-1], r["messages"][-1]["content"]) for r in chat_rows(3)]
    task, report, _ = compare_models(toy_model_dir, out, examples, ["exact_match"], max_new_tokens=MAX_NEW_TOKENS)
    model, tokenizer = load_model(toy_model_dir, device="cpu")
    tuned = load_adapter(model, out).fold()
    for row, example in zip(task.examples, examples, strict=True):
        assert row["adapter"].strip() == generate_text(tuned, tokenizer, example.prompt, max_new_tokens=MAX_NEW_TOKENS)
    assert report is None and set(task.summary) == {"base", "adapter"}
