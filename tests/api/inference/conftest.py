"""Fixtures for the inference API tests: the standalone inference app over the shared toy model + adapters."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.inference import create_inference_app
from esft.serving import EngineConfig
from tests.esft.serving.serving_assets import ServingAssets, serving_assets


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> ServingAssets:
    return serving_assets(tmp_path_factory)


@pytest.fixture(scope="module")
def inference_app(assets):
    app = create_inference_app(
        assets.model_dir, assets.adapters, base_name="toy", config=EngineConfig(max_new_tokens=64, max_batch_size=8)
    )
    yield app
    app.state.inference_engine.close()


@pytest.fixture(scope="module")
def inference(inference_app):
    """A client of the standalone inference app (``client`` is the main service's, from ``tests.service_support``)."""
    with TestClient(inference_app) as client:
        yield client
