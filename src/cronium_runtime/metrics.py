"""Prometheus metrics of the runtime API, served as text at ``GET /metrics``.

Each app gets a registry of its own (:class:`RuntimeMetrics`), never the process-wide one, so
that several apps can live in one process (tests, a sidecar serving two stores) without their
series clashing. What it exposes:

- ``cronium_runtime_requests_total{method, route, status}`` and
  ``cronium_runtime_request_duration_seconds{method, route, status}``: every HTTP request,
  labelled by its route *template* (``/executions/{id}/input``, never the execution id) or
  ``(unmatched)``; counted by :class:`MetricsMiddleware`;
- ``cronium_variables_cache_hits_total{layer}`` and ``cronium_variables_cache_misses_total``:
  the counters of the service's :class:`~cronium_core.variables.VariableCache`, read at scrape
  time (absent when the service has no variables store); ``layer`` is ``memory``, ``valkey``
  or ``inflight`` (a read that waited for the database read of the same variable that another
  call had just started);
- ``cronium_jobs{status}``: jobs in the store by status, counted with
  :meth:`~cronium_core.queue.JobQueue.count` at scrape time and kept for ``jobs_ttl`` seconds
  (a scrape never costs more than one round of counts per ``jobs_ttl``). Every process sharing
  the store reports the same figures: aggregate them with ``max``, not ``sum``.

No label ever holds a token, an execution id, a variable key or a raw path.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cronium_core.jobs import JobStatus
from cronium_core.runtime import RuntimeService

__all__ = ["CONTENT_TYPE", "UNMATCHED", "MetricsMiddleware", "RequestStats", "RuntimeMetrics"]

log = logging.getLogger("cronium.runtime")

#: the classic Prometheus text format, which ``generate_latest`` writes
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: the route label of a request that matched no route
UNMATCHED = "(unmatched)"
#: the runtime API answers in about a millisecond: finer buckets at the low end
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: any other method is counted as "OTHER": a client must not be able to mint label values
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@attrs.define(kw_only=True, eq=False)
class RuntimeMetrics:
    """The metrics of one runtime API app, in a registry of their own."""

    service: RuntimeService
    #: seconds the job counts of one scrape are reused by the next ones
    jobs_ttl: float = 5.0
    monotonic: Callable[[], float] = time.monotonic
    registry: CollectorRegistry = attrs.field(init=False, factory=CollectorRegistry)
    #: the requests counter and latency histogram
    requests: RequestStats = attrs.field(init=False, factory=lambda: RequestStats())
    _jobs: dict[JobStatus, int] | None = attrs.field(init=False, default=None)
    _jobs_at: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.registry.register(self.requests)
        self.registry.register(_VariableCacheCollector(self.service))
        self.registry.register(_JobsCollector(self))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.observe(method if method in METHODS else "OTHER", route, status, seconds)

    async def render(self) -> bytes:
        """The current metrics, in the Prometheus text format."""
        await self.refresh_jobs()
        return generate_latest(self.registry)

    async def refresh_jobs(self) -> None:
        """Count the jobs by status, unless the last count is younger than ``jobs_ttl``. A
        failed count is logged and leaves the last one in place (or none): a scrape must not
        fail because the database is away; the request metrics are still worth having."""
        now = self.monotonic()
        if self._jobs_at is not None and now - self._jobs_at < self.jobs_ttl:
            return
        self._jobs_at = now
        counts: dict[JobStatus, int] = {}
        try:
            for status in JobStatus:
                counts[status] = await self.service.queue.count(status)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            log.warning("metrics: cannot count the jobs (%s); serving the last count",
                        type(exc).__name__)  # fmt: skip
            return
        self._jobs = counts

    @property
    def jobs(self) -> dict[JobStatus, int] | None:
        """The last job counts, ``None`` before the first successful one."""
        return self._jobs


class RequestStats:
    """``cronium_runtime_requests_total`` and ``cronium_runtime_request_duration_seconds``,
    counted in plain numbers and turned into metric families at scrape time.

    prometheus-client's own Counter and Histogram take a lock per update and a label lookup
    per request (together about 5 µs, measured: several percent of a request that costs about
    70 µs of CPU); the runtime API observes from its event loop only, so plain numbers do."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        #: (method, route, status) -> [count per bucket (+Inf last), sum of seconds]; bounded
        #: as the label values are: the methods, the route templates, the app's statuses
        self._series: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[(method, route, status)] = [[0] * (len(self.buckets) + 1), 0.0]
        series[0][bisect.bisect_left(self.buckets, seconds)] += 1
        series[1] += seconds

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families()

    def _families(self) -> list[Metric]:
        labels = ["method", "route", "status"]
        total = CounterMetricFamily(
            "cronium_runtime_requests",
            "Runtime API requests by method, route template and status.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "cronium_runtime_request_duration_seconds",
            "Runtime API request latency in seconds (until the response is sent).",
            labels=labels,
        )
        # as prometheus-client writes them ("0.0005", "1.0"): repr, for bounds this plain
        bounds = [repr(float(b)) for b in self.buckets] + ["+Inf"]
        for (method, route, status), (counts, seconds) in list(self._series.items()):
            values = [method, route, str(status)]
            cumulative = list(itertools.accumulate(counts))
            total.add_metric(values, cumulative[-1])
            latency.add_metric(values, list(zip(bounds, cumulative, strict=True)), seconds)
        return [total, latency]


class _VariableCacheCollector:
    """Reads the variable cache's own counters at scrape time (no double counting)."""

    def __init__(self, service: RuntimeService) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        return self._families(0, 0, 0)

    def collect(self) -> Iterable[Metric]:
        variables = self.service.variables
        if variables is None:
            return []
        cache = variables.cache
        return self._families(cache.hits, cache.shared_hits, cache.misses, cache.joined_hits)

    @staticmethod
    def _families(hits: int, shared_hits: int, misses: int, joined_hits: int = 0) -> list[Metric]:
        hit_family = CounterMetricFamily(
            "cronium_variables_cache_hits",
            "Variable reads served without the database, by cache layer.",
            labels=["layer"],
        )
        hit_family.add_metric(["memory"], hits - shared_hits - joined_hits)
        hit_family.add_metric(["valkey"], shared_hits)
        # reads that waited for a read of the same variable already on its way
        hit_family.add_metric(["inflight"], joined_hits)
        miss_family = CounterMetricFamily(
            "cronium_variables_cache_misses", "Variable reads that went to the database.",
            value=misses,
        )  # fmt: skip
        return [hit_family, miss_family]


class _JobsCollector:
    """The job counts of the last :meth:`RuntimeMetrics.refresh_jobs` (collect is synchronous:
    the counting happens before, in the async scrape handler)."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        counts = self.metrics.jobs
        if counts is None:
            return []
        family = self._family()
        for status, count in counts.items():
            family.add_metric([status.value], count)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "cronium_jobs", "Jobs in the store by status (the whole store).", labels=["status"]
        )


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: it adds microseconds, not a task).

    The route label is the template of the route that handled the request, read from the
    scope once the router has set it; requests that matched nothing are ``(unmatched)``. A
    request cancelled before it was answered (the client went away) is not counted."""

    def __init__(self, app: ASGIApp, *, metrics: RuntimeMetrics, routes: Sequence[BaseRoute]):
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except anyio.get_cancelled_exc_class():
            if status is not None:
                self._observe(scope, status, started)
            raise
        except Exception:
            # the server error handler outside this middleware answers 500
            self._observe(scope, status or 500, started)
            raise
        self._observe(scope, status or 500, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        self.metrics.observe(scope["method"], self._template(scope), status, seconds)

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        # a Starlette that does not record the route in the scope: match it again
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                found = getattr(candidate, "path", None)
                return found if isinstance(found, str) else UNMATCHED
        return UNMATCHED
