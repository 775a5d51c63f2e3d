"""``resources.gpus``: bounded, checked against the devices this deployment's workers declare, stored, shown."""

from __future__ import annotations

import pytest

from api.core.db.models import Job
from api.core.db.session import session_scope
from tests.openai_objects import check_openai
from tests.service_support import assert_error, job_body

JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"max_gpus_per_job": 4})


def test_default_is_one_device(client, auth, base_model, training_file):
    job = check_openai(client.post(JOBS, json=job_body(base_model, training_file), headers=auth))
    assert job["resources"]["gpus"] == 1 and job["resources"]["ep_size"] is None


def test_gpus_up_to_the_declared_capacity_are_stored_and_shown(client, auth, settings, base_model, training_file):
    body = {**job_body(base_model, training_file), "resources": {"gpus": 4}}
    job = check_openai(client.post(JOBS, json=body, headers=auth))
    assert job["resources"] == {"gpus": 4, "ep_size": None}  # data parallel
    assert client.get(f"{JOBS}/{job['id']}", headers=auth).json()["resources"]["gpus"] == 4
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job["id"]).resources == {"gpus": 4}


@pytest.mark.parametrize(
    ("resources", "code"),
    [
        ({"gpus": 5}, "insufficient_devices"),  # above what the workers declare
        ({"gpus": 0}, None),
        ({"gpus": 1000}, None),  # above the schema's bound
        ({"gpus": "2"}, None),  # strict: no coercion
        ({"gpus": 2.5}, None),
        ({"gpus": True}, None),
    ],
)
def test_bad_gpus_are_400_naming_resources_gpus_and_store_nothing(
    client, auth, base_model, training_file, resources, code
):
    body = {**job_body(base_model, training_file), "resources": resources}
    assert_error(client.post(JOBS, json=body, headers=auth), 400, code=code, param="resources.gpus")
    assert client.get(JOBS, headers=auth).json()["data"] == []


def test_unknown_resource_is_400(client, auth, base_model, training_file):
    body = {**job_body(base_model, training_file), "resources": {"gpus": 2, "tpus": 1}}
    assert_error(client.post(JOBS, json=body, headers=auth), 400, param="resources.tpus")


def test_multi_device_jobs_are_esft_only_for_now(client, auth, base_model, training_file):
    body = {**job_body(base_model, training_file), "method": {"type": "fft"}, "resources": {"gpus": 2}}
    assert_error(client.post(JOBS, json=body, headers=auth), 400, code="unsupported_value", param="resources.gpus")
    assert client.get(JOBS, headers=auth).json()["data"] == []


def test_expert_parallel_jobs_store_an_ep_size_that_divides_the_devices(
    client, auth, settings, base_model, training_file
):
    body = {**job_body(base_model, training_file), "resources": {"gpus": 4, "ep_size": 2}}
    job = check_openai(client.post(JOBS, json=body, headers=auth))
    assert job["resources"] == {"gpus": 4, "ep_size": 2}
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job["id"]).resources == {"gpus": 4, "ep_size": 2}
    body["resources"] = {"gpus": 4, "ep_size": 3}
    assert_error(client.post(JOBS, json=body, headers=auth), 400, code="invalid_value", param="resources.ep_size")
