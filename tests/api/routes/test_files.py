"""Files: upload, validation report, listing, content, deletion, and every rejected upload storing nothing."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from api.core.db.models import File
from api.core.db.session import session_scope
from tests.service_support import assert_error, chat_rows, jsonl


def _stored(settings) -> tuple[int, list]:
    with session_scope(settings.database_url) as session:
        rows = session.scalar(select(func.count()).select_from(File))
    blobs = [p for p in (settings.storage_dir / "files").glob("*")] if (settings.storage_dir / "files").exists() else []
    temps = list((settings.storage_dir / "tmp").glob("*"))
    return rows, blobs + temps


def test_upload_list_retrieve_content_delete(client, auth, upload):
    content = jsonl(chat_rows())
    created = upload(content).json()
    assert created["object"] == "file" and created["id"].startswith("file-")
    assert created["bytes"] == len(content) and created["status"] == "processed"
    assert created["validation_report"]["ok"] and created["validation_report"]["n_examples"] == 12
    assert client.get("/v1/files", headers=auth).json()["data"][0]["id"] == created["id"]
    assert client.get(f"/v1/files/{created['id']}", headers=auth).json() == created
    assert client.get(f"/v1/files/{created['id']}/content", headers=auth).content == content
    deleted = client.delete(f"/v1/files/{created['id']}", headers=auth).json()
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
