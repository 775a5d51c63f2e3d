"""The hostile-input catalogue: malformed or crafted requests to every route family, against one real server.

Each row is one request with the status, error ``code`` and ``param`` it must get. After each, the server must
still answer an ordinary chat, and nothing may have been stored for it: no row in any table, no file in storage,
nothing enqueued. Rows answered with 200 (an unknown cursor is an empty page) are checked with the SDK's types.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.core.db.models import Base
from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.core.settings import Settings
from api.errors import error_body
from api.inference.embedded import mount_inference_pool
from api.main import create_app
from api.services.registry import add_base_model
from esft.serving import EngineConfig
from tests.openai_objects import check_openai
from tests.service_support import LiveServer, _key, chat_rows, job_body, jsonl

MAX_LINE_BYTES = 64 * 1024
MAX_UPLOAD_BYTES = 1024 * 1024
CHAT = {"model": "toy", "messages": [{"role": "user", "content": "add 3 and 6"}], "max_tokens": 4, "temperature": 0}
GOOD_CONFIG = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": 64}


@dataclass(frozen=True)
class Case:
    """One hostile request. ``{job}``, ``{file}`` and ``{root}`` in ``path``/bodies are filled in per server."""

    id: str
    method: str
    path: str
    status: int | tuple[int, ...]
    code: str | None = None
    param: str | None = None
    json: Any = None
    raw: str | bytes | None = None  # a JSON body sent as is (NaN tokens, odd escapes, depth)
    upload: bytes | None = None  # a multipart upload of this content as t.jsonl, purpose fine-tune
    form: dict[str, str] = field(default_factory=dict)  # extra or replacing multipart fields
    filename: str = "t.jsonl"
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    key: str = "admin"  # admin, plain (another project) or none
    marks: tuple = ()


def _job(drop: tuple[str, ...] = (), **changes) -> dict:
    """A valid job body on the service's file, with hyperparameters changed (``hyper``) or dropped."""
    body = job_body("toy", "{file}")
    hyper = {**body["method"]["esft"]["hyperparameters"], **changes.pop("hyper", {})}
    body["method"]["esft"]["hyperparameters"] = {k: v for k, v in hyper.items() if k not in drop}
    return {**body, **changes}


def _raw_job(value: str) -> str:
    """A job body whose learning rate is the JSON token ``value`` exactly as written."""
    return json.dumps(_job(hyper={"learning_rate": 0.123456})).replace("0.123456", value)


def _chat_raw(fragment: str) -> str:
    return json.dumps(CHAT)[:-1] + ", " + fragment + "}"


DEEP = "[" * 100_000 + "]" * 100_000
GOOD_LINES = jsonl(chat_rows())
JOBS = "/v1/fine_tuning/jobs"

CASES = [
    # ---- files: uploads that are not usable JSONL are refused whole ------------------------------------------------
    Case("upload-deep-line", "POST", "/v1/files", 400, "too_deeply_nested", "file",
         upload=GOOD_LINES + b'{"text": "x", "n": ' + b"[" * 20_000 + b"]" * 20_000 + b"}\n"),
    Case("upload-long-number", "POST", "/v1/files", 400, "invalid_json", "file",
         upload=GOOD_LINES + b'{"text": ' + b"9" * 5000 + b"}\n"),
    Case("upload-long-line", "POST", "/v1/files", 400, "line_too_long", "file",
         upload=GOOD_LINES + json.dumps({"text": "x" * MAX_LINE_BYTES}).encode() + b"\n"),
    Case("upload-not-utf8", "POST", "/v1/files", 400, "invalid_utf8", "file",
         upload=GOOD_LINES + b'{"text": "\xff"}\n'),
    Case("upload-not-json", "POST", "/v1/files", 400, "invalid_json", "file", upload=GOOD_LINES + b"{nope\n"),
    Case("upload-empty", "POST", "/v1/files", 400, "empty_file", "file", upload=b"\n\n"),
    Case("upload-wrong-extension", "POST", "/v1/files", 400, "invalid_file_format", "file", upload=GOOD_LINES,
         filename="t.exe"),
    Case("upload-purpose", "POST", "/v1/files", 400, "invalid_purpose", "purpose", upload=GOOD_LINES,
         form={"purpose": "fine-tune\x00"}),
    Case("upload-expiry-huge", "POST", "/v1/files", 400, "invalid_expires_after", "expires_after.seconds",
         upload=GOOD_LINES, form={"expires_after[anchor]": "created_at", "expires_after[seconds]": "9" * 40}),
    Case("upload-expiry-anchor", "POST", "/v1/files", 400, "invalid_expires_after", "expires_after.anchor",
         upload=GOOD_LINES, form={"expires_after[anchor]": "now", "expires_after[seconds]": "3600"}),
    Case("upload-too-large", "POST", "/v1/files", 413, "request_too_large", None,
         upload=GOOD_LINES * (2 * MAX_UPLOAD_BYTES // len(GOOD_LINES))),
    Case("upload-no-boundary", "POST", "/v1/files", 400, "invalid_request", None, raw=b"--x\r\n",
         headers={"content-type": "multipart/form-data"}),
    Case("upload-no-file-field", "POST", "/v1/files", 400, "invalid_request", "file",
         raw=b'--x\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--x--\r\n',
         headers={"content-type": "multipart/form-data; boundary=x"}),
    Case("files-id-nul", "GET", "/v1/files/file-%00", 400, "invalid_value", "file_id"),
    Case("files-after-nul", "GET", "/v1/files", 400, "invalid_value", "after", params={"after": "file-\x00"}),
    Case("files-limit-huge", "GET", "/v1/files", 400, "invalid_request", "limit", params={"limit": "9" * 40}),
    Case("files-delete-other-project", "DELETE", "/v1/files/{file}", 404, "file_not_found", None, key="plain"),
    # ---- jobs: non-standard numbers, unbounded options, unstorable text -------------------------------------------
    Case("job-nan-learning-rate", "POST", JOBS, 400, "invalid_value", "method.esft.hyperparameters.learning_rate",
         raw=_raw_job("NaN")),
    Case("job-infinity-learning-rate", "POST", JOBS, 400, "invalid_value",
         "method.esft.hyperparameters.learning_rate", raw=_raw_job("-Infinity")),
    Case("job-overflowing-learning-rate", "POST", JOBS, 400, "invalid_value",
         "method.esft.hyperparameters.learning_rate", raw=_raw_job("1e999")),
    Case("job-epochs-huge", "POST", JOBS, 400, None, "method.esft.hyperparameters.n_epochs",
         json=_job(drop=("max_steps",), hyper={"n_epochs": 10**12})),
    Case("job-batch-size-huge", "POST", JOBS, 400, None, "method.esft.hyperparameters.batch_size",
         json=_job(hyper={"batch_size": 10**9})),
    Case("job-seed-2^64", "POST", JOBS, 400, "invalid_request", "seed", json=_job(seed=2**64)),
    Case("job-number-too-long", "POST", JOBS, 400, "invalid_request", None,
         raw=json.dumps(_job()).replace('"seed": 1', '"seed": ' + "9" * 5000)),
    Case("job-deep-body", "POST", JOBS, 400, "invalid_request", None, raw='{"metadata": ' + DEEP + "}"),
    Case("job-malformed-json", "POST", JOBS, 400, "invalid_json", None, raw='{"model": '),
    Case("job-body-a-list", "POST", JOBS, 400, "invalid_request", None, json=[_job()]),
    Case("job-surrogate-metadata", "POST", JOBS, 400, "invalid_value", "metadata.note",
         raw=json.dumps(_job(metadata={"note": "NOTE"})).replace("NOTE", "\\ud800")),
    Case("job-nul-model", "POST", JOBS, 400, "invalid_value", "model", json=_job(model="toy\x00")),
    Case("job-nan-integrations", "POST", JOBS, 400, "invalid_value", "integrations[0].x",
         raw=json.dumps(_job(integrations=[{"x": "X"}])).replace('"X"', "NaN")),
    Case("job-metadata-17-pairs", "POST", JOBS, 400, "invalid_request", "metadata",
         json=_job(metadata={f"k{i}": "v" for i in range(17)})),
    Case("job-suffix-slash", "POST", JOBS, 400, "invalid_request", "suffix", json=_job(suffix="../x")),
    Case("job-unknown-file", "POST", JOBS, 404, "file_not_found", "training_file",
         json=_job(training_file="file-nope")),
    Case("job-other-projects-file", "POST", JOBS, 404, "file_not_found", "training_file", json=_job(), key="plain"),
    Case("job-unknown-field", "POST", JOBS, 400, "invalid_request", "learning_rate",
         json={**_job(), "learning_rate": 1}),
    Case("jobs-id-nul", "GET", JOBS + "/ftjob-%00", 400, "invalid_value", "fine_tuning_job_id"),
    Case("jobs-status-bogus", "GET", JOBS, 400, "invalid_request", "status", params={"status": "exploded"}),
    Case("jobs-metadata-filter-nul", "GET", JOBS, 400, "invalid_value", "metadata[a]", params={"metadata[a]": "\x00"}),
    Case("job-cancel-other-project", "POST", JOBS + "/{job}/cancel", 404, "fine_tuning_job_not_found",
         "fine_tuning_job_id", key="plain"),
    # ---- events, checkpoints, artifacts -----------------------------------------------------------------------------
    Case("events-cursor-30-nines", "GET", JOBS + "/{job}/events", 200, params={"after": "ftevent-" + "9" * 30}),
    Case("events-stream-unknown-cursor", "GET", JOBS + "/{job}/events", 400, "invalid_cursor", "after",
         params={"stream": "true", "after": "ftevent-" + "9" * 30}),
    Case("events-limit-zero", "GET", JOBS + "/{job}/events", 400, "invalid_request", "limit", params={"limit": "0"}),
    Case("events-cursor-nul", "GET", JOBS + "/{job}/events", 400, "invalid_value", "after", params={"after": "\x00"}),
    Case("checkpoints-cursor-nul", "GET", JOBS + "/{job}/checkpoints", 400, "invalid_value", "after",
         params={"after": "\x00"}),
    Case("artifact-name-nul", "GET", JOBS + "/{job}/artifacts/a%00b", 400, "invalid_value", "name"),
    Case("artifact-unknown", "GET", JOBS + "/{job}/artifacts/..passwd", 404, "artifact_not_found", "name"),
    # ---- models ------------------------------------------------------------------------------------------------------
    Case("model-id-nul", "GET", "/v1/models/toy%00", 400, "invalid_value", "model"),
    Case("model-checkpoint-step-huge", "GET", "/v1/models/ft:toy:p::{job}:ckpt-step-" + "9" * 30, 404,
         "model_not_found", "model"),
    Case("model-delete-base-plain-key", "DELETE", "/v1/models/toy", 403, "permission_denied", "model", key="plain"),
    Case("model-content-unknown", "GET", "/v1/models/ft:toy:nope/content", 404, "model_not_found", "model"),
    # ---- admin: registering base models from server paths -----------------------------------------------------------
    Case("admin-config-invalid-json", "POST", "/v1/admin/models", 400, "invalid_model_config", "path",
         json={"id": "bad1", "path": "{root}/invalid"}),
    Case("admin-config-list", "POST", "/v1/admin/models", 400, "invalid_model_config", "path",
         json={"id": "bad2", "path": "{root}/list"}),
    Case("admin-config-nul-model-type", "POST", "/v1/admin/models", 400, "invalid_model_config", "path",
         json={"id": "bad3", "path": "{root}/nul"}),
    Case("admin-config-not-utf8", "POST", "/v1/admin/models", 400, "invalid_model_config", "path",
         json={"id": "bad4", "path": "{root}/binary"}),
    Case("admin-config-symlinked-out", "POST", "/v1/admin/models", 400, "path_not_allowed", "path",
         json={"id": "bad5", "path": "{root}/linked"}),
    Case("admin-path-symlink-loop", "POST", "/v1/admin/models", 400, "invalid_path", "path",
         json={"id": "bad6", "path": "{root}/loop/x"}),
    Case("admin-path-nul", "POST", "/v1/admin/models", 400, "invalid_value", "path",
         json={"id": "bad7", "path": "{root}/good\x00"}),
    Case("admin-path-outside-roots", "POST", "/v1/admin/models", 400, "path_not_allowed", "path",
         json={"id": "bad8", "path": "/etc"}),
    Case("admin-path-too-long", "POST", "/v1/admin/models", 400, "invalid_request", "path",
         json={"id": "bad9", "path": "/" + "a" * 5000}),
    Case("admin-id-bad", "POST", "/v1/admin/models", 400, "invalid_request", "id",
         json={"id": "../x", "path": "{root}/good"}),
    Case("admin-plain-key", "POST", "/v1/admin/models", 403, "permission_denied", None,
         json={"id": "bad10", "path": "{root}/good"}, key="plain"),
    Case("no-api-key", "GET", "/v1/files", 401, "missing_api_key", None, key="none"),
    Case("bad-api-key", "GET", "/v1/files", 401, "invalid_api_key", None, key="none",
         headers={"authorization": "Bearer esft-" + "x" * 10_000}),
    # ---- inference --------------------------------------------------------------------------------------------------
    Case("chat-nan-temperature", "POST", "/v1/chat/completions", 400, "invalid_value", "temperature",
         raw=_chat_raw('"temperature": NaN')),
    Case("chat-surrogate-content", "POST", "/v1/chat/completions", 400, "invalid_value", "messages[0].content",
         raw=json.dumps({**CHAT, "messages": [{"role": "user", "content": "X"}]}).replace('"X"', '"\\ud800"')),
    Case("chat-nul-model", "POST", "/v1/chat/completions", 400, "invalid_value", "model",
         json={**CHAT, "model": "\x00"}),
    Case("chat-seed-2^64", "POST", "/v1/chat/completions", 400, "invalid_request", "seed",
         json={**CHAT, "seed": 2**64}),
    Case("chat-temperature-1e-300", "POST", "/v1/chat/completions", (200, 400), None, None,
         json={**CHAT, "temperature": 1e-300}),
    Case("chat-temperature-1e-38-stream", "POST", "/v1/chat/completions", (200, 400), None, None,
         json={**CHAT, "temperature": 1e-38, "stream": True}),
    Case("chat-deep-body", "POST", "/v1/chat/completions", 400, "invalid_request", None,
         raw='{"model": "toy", "messages": ' + DEEP + "}"),
    Case("chat-deep-json-schema", "POST", "/v1/chat/completions", 400, None, "response_format",
         json={**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": json.loads(
             '{"type": "array", "items": ' * 200 + "{}" + "}" * 200)}}}),
    Case("chat-unknown-model", "POST", "/v1/chat/completions", 404, "model_not_found", "model",
         json={**CHAT, "model": "ft:toy:nope"}),
    Case("chat-prompt-too-long", "POST", "/v1/chat/completions", 400, "context_length_exceeded", "messages",
         json={**CHAT, "messages": [{"role": "user", "content": "hi " * 100_000}]}),
    Case("chat-max-tokens-huge", "POST", "/v1/chat/completions", 400, None, "max_tokens",
         json={**CHAT, "max_tokens": 10**40}),
    Case("chat-logit-bias-key", "POST", "/v1/chat/completions", 400, "invalid_request", "logit_bias",
         json={**CHAT, "logit_bias": {"-1": 5}}),
    Case("chat-unknown-argument", "POST", "/v1/chat/completions", 400, "unrecognized_argument", "tempreature",
         json={**CHAT, "tempreature": 0.5}),
    Case("chat-tools", "POST", "/v1/chat/completions", 400, "unsupported_parameter", "functions",
         json={**CHAT, "functions": []}),
    Case("completion-token-out-of-vocab", "POST", "/v1/completions", 400, "invalid_prompt", "prompt",
         json={"model": "toy", "prompt": [2**70], "max_tokens": 4}),
    Case("embeddings-not-served", "POST", "/v1/embeddings", 404, "not_found", None,
         json={"model": "toy", "input": "x"}),
    Case("adapter-pin-nul", "POST", "/v1/adapters/a%00/pin", 400, "invalid_value", "name"),
    Case("adapter-load-unknown", "POST", "/v1/adapters/ft:toy:nope/load", 404, "model_not_found", "model"),
]


@dataclass
class Service:
    url: str
    settings: Settings
    queue: RecordingQueue
    keys: dict[str, dict[str, str]]
    job: str
    file: str
    root: Path

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{job}", self.job).replace("{file}", self.file).replace("{root}", str(self.root))
        if isinstance(value, bytes):
            return self.fill(value.decode("latin-1")).encode("latin-1")
        if isinstance(value, dict):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value


def _model_folders(root: Path) -> None:
    """Model folders an admin might be tricked into registering, under the allowed root."""
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "config.json").write_text(json.dumps(GOOD_CONFIG))
    contents: dict[str, bytes] = {
        "good": json.dumps(GOOD_CONFIG).encode(),
        "invalid": b"{not json",
        "list": b"[1, 2, 3]",
        "nul": json.dumps({**GOOD_CONFIG, "model_type": "deepseek\u0000v2"}).encode(),
        "binary": b"\xff\xfe\x00\x01",
    }
    for name, content in contents.items():
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_bytes(content)
    (root / "linked").mkdir()
    (root / "linked" / "config.json").symlink_to(outside / "config.json")
    (root / "loop").symlink_to(root / "loop")


@pytest.fixture(scope="module")
def service(tmp_path_factory, toy_model_dir):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "models"
    _model_folders(root)
    settings = Settings(
        data_dir=base / "data", min_examples=4, model_roots=[root], max_line_bytes=MAX_LINE_BYTES,
        max_upload_bytes=MAX_UPLOAD_BYTES, rate_limit_requests_per_second=0,  # (no rate limit: its own test)
    )
    queue = RecordingQueue()
    app = create_app(settings, queue=queue)
    mount_inference_pool(app, EngineConfig(max_new_tokens=8, max_batch_size=4))
    with LiveServer(app) as server:
        keys = {"admin": _key(settings, "alpha", True), "plain": _key(settings, "beta", False), "none": {}}
        with session_scope(settings.database_url) as session:
            add_base_model(session, "toy", str(toy_model_dir), roots=None)
        with httpx.Client(base_url=server.url, headers=keys["admin"], timeout=120) as client:
            file = client.post("/v1/files", files={"file": ("t.jsonl", GOOD_LINES)}, data={"purpose": "fine-tune"})
            job = client.post(JOBS, json={**job_body("toy", file.json()["id"])})
            assert job.status_code == 200, job.text
            assert client.post("/v1/chat/completions", json=CHAT).status_code == 200  # engine loaded once
        yield Service(server.url, settings, queue, keys, job.json()["id"], file.json()["id"], root)


def _stored(service: Service) -> tuple:
    """Every table's row count, every stored file and what was enqueued."""
    with session_scope(service.settings.database_url) as session:
        counts = {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    data = service.settings.storage_dir
    files = sorted(
        str(p.relative_to(data)) for p in data.rglob("*")
        if p.is_file() and not p.name.startswith("esft.db") and "broker" not in p.parts
    )
    return counts, files, len(service.queue.sent)


def _send(client: httpx.Client, service: Service, case: Case) -> httpx.Response:
    headers = {**service.keys[case.key], **case.headers}
    kwargs: dict[str, Any] = {"params": service.fill(case.params), "headers": headers}
    if case.upload is not None:
        kwargs["files"] = {"file": (case.filename, case.upload, "application/jsonl")}
        kwargs["data"] = {"purpose": "fine-tune", **case.form}
    elif case.raw is not None:
        kwargs["content"] = service.fill(case.raw)
        kwargs["headers"] = {"content-type": "application/json", **headers}
    elif case.json is not None:
        kwargs["json"] = service.fill(case.json)
    return client.request(case.method, service.fill(case.path), **kwargs)


def _check_envelope(response: httpx.Response, case: Case) -> None:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert error["type"] == error_body(response.status_code, "", None, None)["error"]["type"], body
    if case.code is not None:
        assert error["code"] == case.code, body
    assert error["param"] == case.param, body


def _ids(case: Case) -> Any:
    return pytest.param(case, id=case.id, marks=case.marks)


def test_the_catalogue_has_every_route_family():
    families = {case.path.split("/")[2] for case in CASES}
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    assert {"files", "fine_tuning", "models", "admin", "chat", "completions", "adapters"} <= families


@pytest.mark.parametrize("case", [_ids(case) for case in CASES])
def test_hostile_input_is_refused_cleanly_and_stores_nothing(service: Service, case: Case):
    before = _stored(service)
    with httpx.Client(base_url=service.url, timeout=120) as client:
        response = _send(client, service, case)
        expected = case.status if isinstance(case.status, tuple) else (case.status,)
        assert response.status_code in expected, response.text[:2000]
        if response.status_code >= 400:
            _check_envelope(response, case)
        elif response.headers["content-type"].startswith("application/json") and "data" in response.json():
            check_openai(response)  # a list page
        chat = client.post("/v1/chat/completions", json=CHAT, headers=service.keys["admin"])
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] is not None, chat.text
    assert _stored(service) == before


def test_a_burst_from_one_key_gets_429_and_stores_nothing(service: Service):
    """150 uploads at once from a key limited to 5 requests/s: 429s in OpenAI's shape, the others stored whole."""
    from api.services import auth  # set_limits comes with the rate-limit work

    with session_scope(service.settings.database_url) as session:
        raw, key = auth.create_key(session, "gamma", is_admin=False)
        auth.set_limits(key, {"requests_per_second": 5, "burst": 5})
    headers = {"Authorization": f"Bearer {raw}"}
    with httpx.Client(base_url=service.url, timeout=120) as client:
        statuses = [
            client.post("/v1/files", headers=headers, files={"file": ("t.jsonl", GOOD_LINES)},
                        data={"purpose": "fine-tune"}).status_code
            for _ in range(150)
        ]
        limited = client.get("/v1/files", headers=headers)
        assert set(statuses) == {200, 429} and limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
        time.sleep(int(limited.headers["retry-after"]))  # the bucket refills: the key is served again
        assert len(check_openai(client.get("/v1/files", headers=headers))["data"]) == statuses.count(200)


def test_the_model_folders_are_as_described(service: Service):
    """The admin rows above test what they claim: the good folder registers, the link points outside."""
    assert os.path.realpath(service.root / "linked" / "config.json").startswith(str(service.root.parent / "outside"))
    with httpx.Client(base_url=service.url, headers=service.keys["admin"], timeout=60) as client:
        created = client.post("/v1/admin/models", json={"id": "good", "path": str(service.root / "good")})
        assert created.status_code == 200, created.text
        assert client.delete("/v1/models/good").status_code == 200

