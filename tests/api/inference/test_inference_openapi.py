"""The inference routes in the committed openapi.json: declared torch-free, equal to what the real router
serves, penalties as numbers, streams as text/event-stream, /v1/models described once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from api.deps import get_principal
from api.inference import create_inference_router
from api.main import _no_422, operation_id

COMMITTED = json.loads((Path(__file__).resolve().parents[3] / "openapi.json").read_text())
INFERENCE_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/adapters", "/v1/adapters/{name}/load"]


def test_the_served_router_matches_the_declared_operations():
    app = FastAPI(generate_unique_id_function=operation_id)
    app.include_router(create_inference_router(dependencies=[Depends(get_principal)]))
    served = get_openapi(title="t", version="1", routes=app.routes)
    _no_422(served)
    for path in INFERENCE_PATHS:
        assert served["paths"][path] == COMMITTED["paths"][path], path
    for name, schema in served["components"]["schemas"].items():
        assert COMMITTED["components"]["schemas"][name] == schema, name


def test_document_shapes():
    chat = COMMITTED["paths"]["/v1/chat/completions"]["post"]
    assert chat["operationId"] == "inference_create_chat_completion" and chat["security"] == [{"HTTPBearer": []}]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    request = COMMITTED["components"]["schemas"]["ChatCompletionRequest"]
    for penalty in ("presence_penalty", "frequency_penalty"):
        assert request["properties"][penalty]["type"] == "number"
    assert request["additionalProperties"] is False
    assert sum(path == "/v1/models" for path in COMMITTED["paths"]) == 1
    assert len(COMMITTED["paths"]["/v1/models"]) == 1


def test_the_document_is_built_without_torch():
    code = "import sys, api.openapi; api.openapi.build_schema(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
