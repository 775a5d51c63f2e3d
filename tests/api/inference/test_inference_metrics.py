"""/metrics of the standalone inference app: the engine's batch and queue, and the adapter cache."""

from __future__ import annotations

from tests.api.test_observability import _value, scrape
from tests.esft.serving.serving_assets import PROMPTS


def test_engine_and_adapter_cache_metrics(inference):
    before = scrape(inference)
    hits0 = _value(before["esft_adapter_cache_hits"], "esft_adapter_cache_hits_total", model="toy")
    misses0 = _value(before["esft_adapter_cache_misses"], "esft_adapter_cache_misses_total", model="toy")
    body = {"model": "math", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 2}
    for _ in range(2):
        reply = inference.post("/v1/chat/completions", json=body, headers={"x-request-id": "chat-1"})
        assert reply.status_code == 200 and reply.headers["x-request-id"] == "chat-1", reply.text
    metrics = scrape(inference)
    hits = _value(metrics["esft_adapter_cache_hits"], "esft_adapter_cache_hits_total", model="toy")
    misses = _value(metrics["esft_adapter_cache_misses"], "esft_adapter_cache_misses_total", model="toy")
    assert hits + misses >= hits0 + misses0 + 2 and hits > hits0  # the second request finds it cached
    assert _value(metrics["esft_adapter_cache_bytes"], "esft_adapter_cache_bytes", model="toy") > 0
    assert _value(metrics["esft_engine_batch_size"], "esft_engine_batch_size", model="toy") == 0  # idle again
    assert _value(metrics["esft_engine_queue_length"], "esft_engine_queue_length", model="toy") == 0
    route = "/v1/chat/completions"
    latency = metrics["esft_http_request_duration_seconds"]
    assert _value(latency, "esft_http_request_duration_seconds_count", route=route, status="200") == 2
