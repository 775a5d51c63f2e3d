"""Prometheus ``/metrics``: HTTP latency by route template, jobs by status, queue depth, training step time and
tokens/s, each inference engine's batch, queue and adapter cache, and the full-copy engines closed to load others.

Each app has its own registry (``app.state.metrics``). Job and engine figures are read when Prometheus scrapes
(from the database and the engines), so the worker processes need no exporter of their own. Nothing exported
names a project, job or adapter: the endpoint needs no key (bind the port to a trusted network).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, get_args

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.core.db.models import Job, JobEvent
from api.schemas.jobs import JobStatus

WAITING = ("validating_files", "queued")


class ServiceMetrics:
    """The app's registry and the metrics its middleware observes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_latency = Histogram(
            "esft_http_request_duration_seconds",
            "HTTP request latency by route template (not raw path), method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _step_seconds(events: list[JobEvent]) -> float | None:
    """Seconds per training step between a running job's last two training reports."""
    if len(events) < 2:
        return None
    new, old = ((e.data or {}) for e in events)
    if new.get("phase") != "training" or old.get("phase") != "training":
        return None
    steps = (new.get("step") or 0) - (old.get("step") or 0)
    return (events[0].created_at - events[1].created_at).total_seconds() / steps if steps > 0 else None


class JobsCollector:
    """Jobs by status, the queue depth, and the running jobs' step time and throughput, from the database."""

    def __init__(self, sessions: sessionmaker[Session]):
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with self.sessions() as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            running = session.scalars(select(Job.id).where(Job.status == "running")).all()
            latest = [
                session.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job, JobEvent.type == "metrics")
                    .order_by(JobEvent.id.desc())
                    .limit(2)
                ).all()
                for job in running
            ]
        jobs = GaugeMetricFamily("esft_jobs", "Fine-tuning jobs by status.", labels=["status"])
        for status in get_args(JobStatus):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily(
            "esft_queue_depth", "Jobs waiting for a worker.", value=sum(counts.get(s, 0) for s in WAITING)
        )
        steps = [s for events in latest if (s := _step_seconds(events)) is not None]
        yield GaugeMetricFamily(
            "esft_training_step_seconds",
            "Mean seconds per optimizer step over the running jobs (between their last two reports).",
            value=sum(steps) / len(steps) if steps else 0.0,
        )
        rates = [(events[0].data or {}).get("tokens_per_s") or 0.0 for events in latest if events]
        yield GaugeMetricFamily(
            "esft_training_tokens_per_second", "Training tokens/s summed over the running jobs.", value=sum(rates)
        )


ENGINE_FAMILIES = (  # (key in the sums below, metric kind, name, help)
    ("running", GaugeMetricFamily, "esft_engine_batch_size", "Requests decoding in the running batch."),
    ("waiting", GaugeMetricFamily, "esft_engine_queue_length", "Requests waiting to join a batch."),
    ("used_bytes", GaugeMetricFamily, "esft_adapter_cache_bytes", "Bytes of adapters in the host cache."),
    ("budget_bytes", GaugeMetricFamily, "esft_adapter_cache_budget_bytes", "Adapter cache capacity."),
    ("hits", CounterMetricFamily, "esft_adapter_cache_hits", "Adapter lookups served from the cache."),
    ("misses", CounterMetricFamily, "esft_adapter_cache_misses", "Adapter lookups that loaded it."),
    ("evictions", CounterMetricFamily, "esft_adapter_cache_evictions", "Adapters evicted."),
)
FULL_COPY_LABEL = "full_copy"  # every full copy's engine is counted under this label, never under its id


class EnginesCollector:
    """Per base model: running batch, waiting requests, adapter cache bytes, hits, misses and evictions (full
    copies' engines summed under ``model="full_copy"``: their ids name a project's model); and the engines the
    pool closed (``EnginePool.evictions``, no label: an evicted engine is gone)."""

    def __init__(self, engines: Callable[[], Iterable[tuple[str, Any]]], engine_evictions: Callable[[], int]):
        self.engines, self.engine_evictions = engines, engine_evictions

    def collect(self) -> Iterator[Metric]:
        families = {key: kind(name, help_text, labels=["model"]) for key, kind, name, help_text in ENGINE_FAMILIES}
        totals: dict[str, dict[str, float]] = {}
        for label, engine in list(self.engines()):
            stats = engine.stats()
            values = {"running": stats["running"], "waiting": stats["waiting"],
                      "used_bytes": stats["cache"]["used_bytes"], "budget_bytes": stats["cache"]["budget_bytes"],
                      "hits": getattr(engine.cache, "hits", 0), "misses": getattr(engine.cache, "misses", 0),
                      "evictions": stats["cache"]["evictions"]}
            sums = totals.setdefault(label, dict.fromkeys(families, 0.0))
            for key, value in values.items():
                sums[key] += value
        for label, sums in totals.items():
            for key, family in families.items():
                family.add_metric([label], sums[key])
        yield from families.values()
        yield CounterMetricFamily(
            "esft_engine_evictions", "Idle full-copy engines closed to load another.", value=self.engine_evictions()
        )


def _engines(app: FastAPI) -> list[tuple[str, Any]]:
    """``(label, engine)`` of the app's engines: the service's pool (full copies labelled ``full_copy``), or the
    standalone inference app's one engine."""
    pool = getattr(app.state, "inference_pool", None)
    if pool is not None:
        full = set(pool.full_copies())
        return [(FULL_COPY_LABEL if name in full else name, engine) for name, engine in list(pool.engines.items())]
    engine = getattr(app.state, "inference_engine", None)
    return [] if engine is None else [(engine.base_name, engine)]


def _engine_evictions(app: FastAPI) -> int:
    """Engines the service's pool closed to load others (the standalone app's one engine stays)."""
    return getattr(getattr(app.state, "inference_pool", None), "evictions", 0)


def mount_metrics(app: FastAPI, sessions: sessionmaker[Session] | None = None) -> ServiceMetrics:
    """Add ``GET /metrics`` (not in the OpenAPI document) and the collectors; ``sessions``: the service's DB."""
    metrics = ServiceMetrics()
    if sessions is not None:
        metrics.registry.register(JobsCollector(sessions))
    metrics.registry.register(EnginesCollector(lambda: _engines(app), lambda: _engine_evictions(app)))
    app.state.metrics = metrics
    app.add_api_route(
        "/metrics", metrics.render, methods=["GET"], include_in_schema=False, name="metrics", tags=["health"]
    )
    return metrics
