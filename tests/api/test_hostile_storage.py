"""What hostile input may not leave behind: temp files of interrupted uploads, stale temp files of a killed
server, non-standard JSON in the database, and validation reports as large as the bad file."""

from __future__ import annotations

import json
import os
import socket
import time

from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from api.core.db.models import File
from api.core.db.session import session_scope
from api.core.queue import RecordingQueue
from api.main import create_app
from api.services import files
from tests.service_support import LiveServer, chat_rows, jsonl


def _file_rows(settings) -> int:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(File))


def _leftovers(settings) -> list[str]:
    return sorted(p.name for p in (settings.storage_dir / "tmp").iterdir())


def _send_half_an_upload(port: int, auth: dict[str, str], stop_after: int) -> None:
    """A multipart upload announcing 8 MiB whose client disappears after ``stop_after`` bytes of it."""
    boundary = "hostile-boundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    body = head + jsonl(chat_rows(8 * 1024 * 1024 // 100))[: stop_after - len(head)]
    request = (
        f"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {8 * 1024 * 1024}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request + body)
        time.sleep(0.2)  # let the server start on the body before the client vanishes
        sock.shutdown(socket.SHUT_RDWR)


def test_an_upload_cut_off_midway_leaves_no_temp_file_and_no_row(client, auth, settings):
    with LiveServer(client.app) as server:
        for stop_after in (1024, 3 * 1024 * 1024):  # in the form's headers, then well into the file
            _send_half_an_upload(server.port, auth, stop_after)
        deadline = time.monotonic() + 20
        while _leftovers(settings) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _leftovers(settings) == [] and _file_rows(settings) == 0
        import httpx

        after = httpx.post(
            f"{server.url}/v1/files", headers=auth, files={"file": ("t.jsonl", jsonl(chat_rows()))},
            data={"purpose": "fine-tune"}, timeout=30,
        )
        assert after.status_code == 200, after.text
    assert _leftovers(settings) == [] and _file_rows(settings) == 1


def test_stale_temp_files_of_a_killed_server_are_swept_at_startup(settings):
    tmp = settings.storage_dir / "tmp"
    tmp.mkdir(parents=True)
    stale, fresh = tmp / "upload-stale", tmp / "upload-fresh"
    stale.write_bytes(b"half an upload")
    fresh.write_bytes(b"an upload in progress")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    with TestClient(create_app(settings, queue=RecordingQueue())):
        assert _leftovers(settings) == ["upload-fresh"]


def test_non_finite_floats_are_stored_as_standard_json(client, settings):
    """A NaN (a diverged loss, say) reaches the database as null, never as the non-standard token NaN."""
    with session_scope(settings.database_url) as session:
        from api.services.auth import create_key

        _, key = create_key(session, "alpha", is_admin=False)
        session.add(File(id="file-nan", project_id=key.project_id, filename="a.jsonl", purpose="fine-tune", bytes=1,
                         sha256="0" * 64, status="processed", storage_key="files/file-nan",
                         validation={"loss": float("nan"), "nested": [float("inf"), 1.5]}))
    with session_scope(settings.database_url) as session:
        stored = session.scalar(text("SELECT validation FROM files WHERE id = 'file-nan'"))

    def refuse(token: str):
        raise AssertionError(f"non-standard JSON token {token} stored")

    assert json.loads(stored, parse_constant=refuse) == {"loss": None, "nested": [None, 1.5]}


def test_a_huge_bad_file_gives_a_small_report(client, auth, upload, settings):
    """Every bad line quotes 100 KB of junk: the stored report and the file object stay a few KB."""
    junk = "x" * 100_000
    bad = [{"messages": [{"role": junk, "content": junk}, {"role": "assistant", "content": "b"}]}] * 200
    created = upload(jsonl(chat_rows() + bad))
    assert created.status_code == 200 and created.json()["status"] == "error", created.text
    report = created.json()["validation_report"]
    assert report["error_counts"] == {"unrecognized_role": 200} and report["errors_omitted"] == 200 - len(
        report["errors"]
    )
    assert all(len(error["message"]) <= 200 for error in report["errors"])
    for response in (client.get("/v1/files", headers=auth), client.get(f"/v1/files/{created.json()['id']}",
                                                                         headers=auth)):
        assert response.status_code == 200 and len(response.content) < 10_000
    with session_scope(settings.database_url) as session:
        assert len(json.dumps(session.get(File, created.json()["id"]).validation)) < 10_000


def test_reports_stored_before_the_bound_are_shown_bounded(client, auth, upload, settings):
    file_id = upload(jsonl(chat_rows())).json()["id"]
    with session_scope(settings.database_url) as session:
        row = session.get(File, file_id)
        row.validation = {**row.validation, "ok": False, "error_counts": {"unrecognized_role": 3},
                          "errors": [{"line": 1, "code": "unrecognized_role", "message": "y" * 1_000_000}]}
    shown = client.get(f"/v1/files/{file_id}", headers=auth).json()["validation_report"]
    assert len(shown["errors"][0]["message"]) == 200 and shown["errors_omitted"] == 2
    assert files.summary(row.validation) == "0 invalid line(s) of 12 (unrecognized_role: 3)"
