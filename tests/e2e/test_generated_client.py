"""A client generated from the committed openapi.json by openapi-python-client runs a whole job."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.service_support import chat_rows, jsonl

pytestmark = pytest.mark.e2e
SCHEMA = Path(__file__).resolve().parents[2] / "openapi.json"


@pytest.fixture
def generated(tmp_path, monkeypatch):
    tool = shutil.which("openapi-python-client")
    if tool is None:
        pytest.skip("openapi-python-client is not installed (pip install -e '.[dev]')")
    out = tmp_path / "esft_generated_client"
    subprocess.run(
        [tool, "generate", "--path", str(SCHEMA), "--meta", "none", "--output-path", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("esft_generated_client")
    for name in [m for m in sys.modules if m.startswith("esft_generated_client")]:
        del sys.modules[name]


def test_generated_client_runs_a_job(service, generated):
    from esft_generated_client import AuthenticatedClient
    from esft_generated_client.api.files import files_create
    from esft_generated_client.api.fine_tuning import (
        fine_tuning_create_job,
        fine_tuning_list_events,
        fine_tuning_retrieve_job,
    )
    from esft_generated_client.api.models import models_download, models_retrieve
    from esft_generated_client.models import BodyFilesCreate, JobCreate
    from esft_generated_client.types import File

    client = AuthenticatedClient(base_url=service.url, token=service.key)
    body = BodyFilesCreate(file=File(payload=jsonl(chat_rows(16)), file_name="train.jsonl"), purpose="fine-tune")
    uploaded = files_create.sync(client=client, body=body)
    assert uploaded.id.startswith("file-") and uploaded.status == "processed"
    request = JobCreate.from_dict(
        {
            "model": "toy",
            "training_file": uploaded.id,
            "suffix": "gen",
            "method": {
                "type": "esft",
                "esft": {
                    "top_p": 0.5,
                    "n_sample_tokens": 256,
                    "hyperparameters": {"max_steps": 3, "batch_size": 4, "seq_len": 32},
                },
            },
        }
    )
    job = fine_tuning_create_job.sync(client=client, body=request)
    deadline = time.monotonic() + 240
    while (job := fine_tuning_retrieve_job.sync(client=client, fine_tuning_job_id=job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job.status == "succeeded", job.error
    events = fine_tuning_list_events.sync(client=client, fine_tuning_job_id=job.id, limit=100)
    assert any(e.type_ == "metrics" for e in events.data)
    model = models_retrieve.sync(client=client, model=job.fine_tuned_model)
    assert model.parent == "toy" and job.fine_tuned_model == f"ft:toy:{job.organization_id}:gen:{job.id}"
    archive = models_download.sync_detailed(client=client, model=job.fine_tuned_model)
    assert archive.status_code == 200 and archive.content[:2] == b"\x1f\x8b"  # gzip magic
