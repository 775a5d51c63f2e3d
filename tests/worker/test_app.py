"""Celery policy and process hygiene: no torch before fork, tasks registered by name, devices pinned."""

from __future__ import annotations

import json
import subprocess
import sys

from api.core.queue import TASK_NAMES, celery_config
from api.core.settings import Settings
from worker import devices


def test_parent_process_and_control_plane_never_import_torch():
    code = (
        "import sys, json, api.main, api.cli, worker.app, worker.tasks; "
        "print(json.dumps({'torch': 'torch' in sys.modules, 'tasks': sorted(worker.app.app.tasks)}))"
    )
    out = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    )
    assert out["torch"] is False
    assert set(TASK_NAMES.values()) <= set(out["tasks"])


def test_delivery_policy(tmp_path):
    config = celery_config(Settings(data_dir=tmp_path))
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["accept_content"] == ["json"]
    options = config["broker_transport_options"]
    assert options["polling_interval"] == 0.1 and (tmp_path / "broker" / "queue").is_dir()
    assert (tmp_path / "broker" / "control").is_dir()
    redis = celery_config(Settings(data_dir=tmp_path, broker_url_override="redis://localhost:6379/0"))
    assert redis["broker_transport_options"]["visibility_timeout"] >= 24 * 3600


def test_device_pinning(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert devices.configure(Settings(data_dir=tmp_path, device="cuda:1")) == "cuda:1"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    devices.configure(Settings(data_dir=tmp_path, device="cpu"))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
