"""Base-model registration (admin, confined to model roots) and the model list."""

from __future__ import annotations

import shutil

import pytest

from tests.openai_objects import check_openai
from tests.service_support import assert_error

pytestmark = pytest.mark.db  # also on PostgreSQL


def test_register_base_model_over_http(client, auth, settings, toy_model_dir, tmp_path):
    inside = tmp_path / "models" / "toy"
    shutil.copytree(toy_model_dir, inside)
    created = client.post("/v1/admin/models", json={"id": "toy-1", "path": str(inside)}, headers=auth).json()
    assert created["kind"] == "base" and created["details"]["model_type"] == "deepseek_v2"
    assert created["details"]["config_hash"].startswith("sha256:")
    again = client.post("/v1/admin/models", json={"id": "toy-1", "path": str(inside)}, headers=auth)
    assert again.status_code == 200  # idempotent for the same directory
    listed = check_openai(client.get("/v1/models", headers=auth))["data"]
    assert [m["id"] for m in listed] == ["toy-1"] and listed[0]["owned_by"] == "system"
    assert check_openai(client.get("/v1/models/toy-1", headers=auth))["id"] == "toy-1"


def test_register_rejects_bad_paths_and_ids(client, auth, toy_model_dir, tmp_path):
    post = lambda body: client.post("/v1/admin/models", json=body, headers=auth)  # noqa: E731
    assert_error(post({"id": "x", "path": "/etc"}), 400, "path_not_allowed", "path")
    assert_error(post({"id": "x", "path": str(tmp_path / "missing")}), 400, "model_path_not_found", "path")
    (tmp_path / "empty").mkdir()
    assert_error(post({"id": "x", "path": str(tmp_path / "empty")}), 400, "unsupported_model", "path")
    assert_error(post({"id": "../evil", "path": str(tmp_path)}), 400, param="id")
    inside = tmp_path / "m"
    shutil.copytree(toy_model_dir, inside)
    assert post({"id": "a", "path": str(inside)}).status_code == 200
    (tmp_path / "m2").mkdir()
    shutil.copytree(toy_model_dir, tmp_path / "m2" / "toy")
    assert_error(post({"id": "a", "path": str(tmp_path / "m2" / "toy")}), 409, "model_exists", "id")


def test_base_models_cannot_be_downloaded(client, auth, base_model):
    assert_error(client.get(f"/v1/models/{base_model}/content", headers=auth), 400, "not_an_adapter")
    assert_error(client.get("/v1/models/ft:toy:x:ftjob-none", headers=auth), 404, "model_not_found")
