"""Fixtures for the API tests (from `tests.service_support`): a fresh app per test, two projects, a toy model."""

from tests.service_support import (  # noqa: F401
    auth,
    base_model,
    client,
    other_auth,
    queue,
    settings,
    toy_model_dir,
    training_file,
    upload,
)
