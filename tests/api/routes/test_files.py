"""Files: upload, validation report, listing, content, deletion, and every rejected upload storing nothing."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from api.core.db.models import File
from api.core.db.session import session_scope
from tests.openai_objects import check_openai
from tests.service_support import assert_error, chat_rows, jsonl

pytestmark = pytest.mark.db  # also on PostgreSQL


def _stored(settings) -> tuple[int, list]:
    with session_scope(settings.database_url) as session:
        rows = session.scalar(select(func.count()).select_from(File))
    blobs = [p for p in (settings.storage_dir / "files").glob("*")] if (settings.storage_dir / "files").exists() else []
    temps = list((settings.storage_dir / "tmp").glob("*"))
    return rows, blobs + temps


def test_upload_list_retrieve_content_delete(client, auth, upload):
    content = jsonl(chat_rows())
    created = check_openai(upload(content))
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert created["bytes"] == len(content) and created["status"] == "processed"
    assert created["validation_report"]["ok"] and created["validation_report"]["n_examples"] == 12
    assert check_openai(client.get("/v1/files", headers=auth))["data"][0]["id"] == created["id"]
    assert client.get(f"/v1/files/{created['id']}", headers=auth).json() == created
    assert client.get(f"/v1/files/{created['id']}/content", headers=auth).content == content
    deleted = check_openai(client.delete(f"/v1/files/{created['id']}", headers=auth))
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    assert_error(client.get(f"/v1/files/{created['id']}", headers=auth), 404, "file_not_found")


def test_schema_problems_are_kept_with_a_report(upload):
    rows = chat_rows(4) + [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"prompt": "a"},
    ]
    body = upload(jsonl(rows)).json()
    report = body["validation_report"]
    assert body["status"] == "error" and not report["ok"] and "invalid" in body["status_details"]
    by_line = {e["line"]: e["code"] for e in report["errors"]}
    assert by_line == {5: "example_missing_assistant_message", 6: "unrecognized_role", 7: "unknown_format"}


def test_malformed_json_is_rejected_and_nothing_stored(upload, settings):
    content = jsonl(chat_rows(3)) + b"{not json\n"
    error = assert_error(upload(content), 400, "invalid_json", "file")
    assert "line 4" in error["message"]
    assert _stored(settings) == (0, [])


def test_non_utf8_is_rejected(upload, settings):
    content = jsonl(chat_rows(2)) + json.dumps({"text": "caf"}).encode()[:-2] + b'\xe9"}\n'
    assert_error(upload(content), 400, "invalid_utf8", "file")
    assert _stored(settings) == (0, [])


def test_empty_file_wrong_extension_and_purpose(upload, settings):
    assert_error(upload(b"\n\n"), 400, "empty_file")
    assert_error(upload(jsonl(chat_rows()), name="data.csv"), 400, "invalid_file_format", "file")
    assert_error(upload(jsonl(chat_rows()), purpose="assistants"), 400, "invalid_purpose", "purpose")
    assert _stored(settings) == (0, [])


def test_oversized_upload_is_rejected(client, auth, settings, upload):
    client.app.state.settings.max_upload_bytes = 200
    assert_error(upload(jsonl(chat_rows(20))), 413, "file_too_large", "file")
    assert _stored(settings) == (0, [])


def test_filename_is_only_a_label(upload, settings):
    body = upload(jsonl(chat_rows()), name="../../etc/evil.jsonl").json()
    assert body["filename"] == "evil.jsonl"
    assert all(p.name.startswith("file-") for p in (settings.storage_dir / "files").iterdir())


def test_list_pagination_and_purpose_filter(client, auth, upload):
    ids = [upload(jsonl(chat_rows())).json()["id"] for _ in range(3)]
    page = client.get("/v1/files?limit=2", headers=auth).json()
    assert [f["id"] for f in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get(f"/v1/files?limit=2&after={page['data'][-1]['id']}", headers=auth).json()
    assert [f["id"] for f in rest["data"]] == [ids[0]] and not rest["has_more"]
    assert client.get("/v1/files?purpose=fine-tune-results", headers=auth).json()["data"] == []


def _upload_expiring(client, auth, seconds, anchor="created_at"):
    form = {"purpose": "fine-tune", "expires_after[anchor]": anchor, "expires_after[seconds]": str(seconds)}
    return client.post("/v1/files", files={"file": ("t.jsonl", jsonl(chat_rows()))}, data=form, headers=auth)


def test_files_list_in_either_order_with_first_and_last_ids(client, auth, upload):
    ids = [upload(jsonl(chat_rows())).json()["id"] for _ in range(3)]
    newest = check_openai(client.get("/v1/files", headers=auth))
    assert [f["id"] for f in newest["data"]] == ids[::-1]
    oldest = check_openai(client.get("/v1/files?order=asc&limit=2", headers=auth))
    assert [f["id"] for f in oldest["data"]] == ids[:2] and oldest["has_more"]
    rest = check_openai(client.get(f"/v1/files?order=asc&after={oldest['last_id']}", headers=auth))
    assert [f["id"] for f in rest["data"]] == ids[2:]
    assert_error(client.get("/v1/files?order=up", headers=auth), 400, param="order")


def test_expires_after_sets_expires_at_within_openais_bounds(client, auth, upload):
    created = check_openai(_upload_expiring(client, auth, 3600))
    assert created["expires_at"] == created["created_at"] + 3600
    assert check_openai(upload(jsonl(chat_rows())))["expires_at"] is None
    assert_error(_upload_expiring(client, auth, 60), 400, "invalid_expires_after", "expires_after.seconds")
    assert_error(_upload_expiring(client, auth, 31 * 86400), 400, param="expires_after.seconds")
    assert_error(_upload_expiring(client, auth, 3600, anchor="last_used"), 400, param="expires_after.anchor")


def test_the_sweep_deletes_expired_files_no_unfinished_job_uses(client, auth, settings, base_model):
    from datetime import timedelta

    from api.core.db.models import utcnow
    from api.services.files import sweep_expired
    from tests.service_support import job_body

    used, free = (_upload_expiring(client, auth, 3600).json()["id"] for _ in range(2))
    job = client.post("/v1/fine_tuning/jobs", json=job_body(base_model, used), headers=auth).json()
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause", headers=auth)  # paused is unfinished
    storage = client.app.state.storage
    with session_scope(settings.database_url) as session:
        assert sweep_expired(session, storage) == []  # not expired yet
        assert sweep_expired(session, storage, now=utcnow() + timedelta(hours=2)) == [free]
    assert client.get(f"/v1/files/{free}", headers=auth).status_code == 404
    assert client.get(f"/v1/files/{used}", headers=auth).status_code == 200
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=auth)
    with session_scope(settings.database_url) as session:
        assert sweep_expired(session, storage, now=utcnow() + timedelta(hours=2)) == [used]
    assert _stored(settings) == (0, [])
