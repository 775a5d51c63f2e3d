"""The committed openapi.json matches the app; operation ids are stable; uploads are binary."""

from __future__ import annotations

import json
from pathlib import Path

from api.openapi import build_schema, render

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"


def test_committed_schema_has_not_drifted():
    assert COMMITTED.read_text() == render(build_schema()), (
        "openapi.json is stale: run `python -m api.cli openapi --out openapi.json` and commit it"
    )


def test_operation_ids_and_binary_upload():
    schema = json.loads(COMMITTED.read_text())
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    assert {
        "files_create",
        "fine_tuning_create_job",
        "fine_tuning_cancel_job",
        "fine_tuning_list_events",
        "models_list",
        "models_download",
        "admin_create_base_model",
    } <= ids
    upload = schema["components"]["schemas"]["Body_files_create"]["properties"]["file"]
    assert upload["format"] == "binary" and "contentMediaType" not in upload
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
