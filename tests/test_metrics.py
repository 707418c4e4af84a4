"""``GET /metrics`` of the runtime API: requests by route template and status, the variable
cache's hits and misses, jobs by status; a registry per app; no id or token in any label."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import prometheus_client
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from cronium_core import Event, FakeClock, Job, Script
from cronium_core.crypto import Cipher, generate_key
from cronium_core.datastore import DataStore
from cronium_core.queue import JobQueue
from cronium_core.runtime import RuntimeService
from cronium_core.tokens import ExecutionTokens
from cronium_core.variables import VariableStore
from cronium_runtime import create_app
from cronium_runtime.metrics import (
    CONTENT_TYPE,
    UNMATCHED,
    MetricsMiddleware,
    RequestStats,
    RuntimeMetrics,
)

pytestmark = pytest.mark.anyio

INPUT = "/executions/{id}/input"
VARIABLE = "/executions/{id}/variables/{key}"


@attrs.define(kw_only=True, eq=False)
class Api:
    store: DataStore
    queue: JobQueue
    tokens: ExecutionTokens
    variables: VariableStore
    service: RuntimeService
    app: Starlette
    http: httpx.AsyncClient
    now: list[float]
    _events: int = 0

    async def running_job(self) -> tuple[Job, str]:
        self._events += 1
        event = await self.store.add_event(
            Event(name=f"ev{self._events}", owner="alice", action=Script(language="python",
                  code="pass"))
        )  # fmt: skip
        await self.queue.enqueue(event)
        [job] = await self.queue.claim("w1", 1)
        return job, self.tokens.mint(job)

    async def scrape(self) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
        """The text of ``/metrics`` and its samples by (name, labels)."""
        response = await self.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == CONTENT_TYPE
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
        return response.text, samples


@asynccontextmanager
async def api(db: str, *, variables: bool = True) -> AsyncIterator[Api]:
    async with AsyncExitStack() as stack:
        clock = FakeClock()
        store = DataStore(url=db, clock=clock)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        tokens = ExecutionTokens({"k1": generate_key()}, "k1", clock=clock)
        store_of_variables = VariableStore(store, Cipher.from_spec(f"c1:{generate_key()}"))
        service = RuntimeService(
            queue, store, tokens, variables=store_of_variables if variables else None
        )
        now = [0.0]
        app = create_app(service, metrics=RuntimeMetrics(service=service, monotonic=lambda: now[0]))
        transport = httpx.ASGITransport(app=app)
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://runtime")
        )
        yield Api(store=store, queue=queue, tokens=tokens, variables=store_of_variables,
                  service=service, app=app, http=http, now=now)  # fmt: skip


@pytest.fixture
async def rt(sqlite_url: str) -> AsyncIterator[Api]:
    async with api(sqlite_url) as value:
        yield value


def requests_total(samples: dict[Any, float], method: str, route: str, status: int) -> float | None:
    labels = frozenset({"method": method, "route": route, "status": str(status)}.items())
    return samples.get(("cronium_runtime_requests_total", labels))


async def test_requests_by_route_template_and_status(rt: Api) -> None:
    job, token = await rt.running_job()
    other, _ = await rt.running_job()
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        assert (await rt.http.get(f"/executions/{job.id}/input", headers=auth)).status_code == 200
    assert (await rt.http.get(f"/executions/{job.id}/input")).status_code == 401
    assert (await rt.http.get(f"/executions/{other.id}/input", headers=auth)).status_code == 403
    assert (await rt.http.get(f"/executions/{job.id}/nope")).status_code == 404
    assert (await rt.http.delete(f"/executions/{job.id}/input")).status_code == 405
    assert (await rt.http.request("BREW", "/health")).status_code == 405
    body = {"value": 1}
    response = await rt.http.put(f"/executions/{job.id}/variables/k1", headers=auth, json=body)
    assert response.status_code == 200

    text, samples = await rt.scrape()
    assert requests_total(samples, "GET", INPUT, 200) == 3
    assert requests_total(samples, "GET", INPUT, 401) == 1
    assert requests_total(samples, "GET", INPUT, 403) == 1
    assert requests_total(samples, "GET", UNMATCHED, 404) == 1
    assert requests_total(samples, "DELETE", INPUT, 405) == 1
    assert requests_total(samples, "OTHER", "/health", 405) == 1  # no label minted by clients
    assert requests_total(samples, "PUT", VARIABLE, 200) == 1
    # the histogram counts the same requests
    labels = frozenset({"method": "GET", "route": INPUT, "status": "200"}.items())
    assert samples[("cronium_runtime_request_duration_seconds_count", labels)] == 3
    bucket = frozenset({*labels, ("le", "+Inf")})
    assert samples[("cronium_runtime_request_duration_seconds_bucket", bucket)] == 3
    assert samples[("cronium_runtime_request_duration_seconds_sum", labels)] > 0
    # no execution id, token or variable key anywhere in the text
    for secret in (job.id, other.id, token, "k1"):
        assert secret not in text
    # the scrape itself is counted by the next one
    _, samples = await rt.scrape()
    assert requests_total(samples, "GET", "/metrics", 200) == 1


async def test_variable_cache_hits_and_misses(rt: Api) -> None:
    job, token = await rt.running_job()
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/executions/{job.id}/variables/api_url"
    await rt.http.put(path, headers=auth, json={"value": "https://example.invalid"})
    for _ in range(4):
        assert (await rt.http.get(path, headers=auth)).status_code == 200
    for _ in range(2):
        missing = await rt.http.get(f"/executions/{job.id}/variables/absent", headers=auth)
        assert missing.status_code == 404  # absent variables are cached too
    _, samples = await rt.scrape()
    hits = samples[("cronium_variables_cache_hits_total", frozenset({("layer", "memory")}))]
    shared = samples[("cronium_variables_cache_hits_total", frozenset({("layer", "valkey")}))]
    misses = samples[("cronium_variables_cache_misses_total", frozenset())]
    assert (hits, shared, misses) == (4, 0, 2)  # one miss per key, then hits
    cache = rt.variables.cache
    assert (cache.hits, cache.misses) == (hits, misses)  # read from the cache, not recounted


async def test_no_variable_metrics_without_a_variables_store(sqlite_url: str) -> None:
    async with api(sqlite_url, variables=False) as rt:
        text, _ = await rt.scrape()
        assert "cronium_variables_cache" not in text
        assert "cronium_runtime_requests_total" in text


async def test_jobs_by_status_counted_at_scrape_time_and_kept_for_a_while(rt: Api) -> None:
    await rt.running_job()
    event = await rt.store.add_event(Event(name="later", action=Script(language="bash",
                                                                       code="true")))  # fmt: skip
    await rt.queue.enqueue(event)

    def jobs(samples: dict[Any, float]) -> dict[str, float]:
        return {
            dict(labels)["status"]: value
            for (name, labels), value in samples.items()
            if name == "cronium_jobs"
        }

    _, samples = await rt.scrape()
    assert jobs(samples) == {
        "queued": 1, "running": 1, "succeeded": 0, "failed": 0, "timed_out": 0, "cancelled": 0,
    }  # fmt: skip
    await rt.queue.enqueue(event)
    _, samples = await rt.scrape()
    assert jobs(samples)["queued"] == 1  # counted less than jobs_ttl ago: not recounted
    rt.now[0] += 5
    _, samples = await rt.scrape()
    assert jobs(samples)["queued"] == 2


async def test_a_failing_count_keeps_the_last_one_and_the_scrape_answers(
    rt: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await rt.running_job()
    _, samples = await rt.scrape()
    assert samples[("cronium_jobs", frozenset({("status", "running")}))] == 1
    async with rt.store.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE jobs RENAME TO jobs_away"))
    try:
        rt.now[0] += 10
        _, samples = await rt.scrape()
    finally:
        async with rt.store.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE jobs_away RENAME TO jobs"))
    assert samples[("cronium_jobs", frozenset({("status", "running")}))] == 1
    assert "cannot count the jobs" in caplog.text


async def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    async with (
        api(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}") as a,
        api(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}") as b,
    ):
        for _ in range(3):
            await a.http.get("/health")
        await b.http.get("/health")
        _, in_a = await a.scrape()
        _, in_b = await b.scrape()
        assert requests_total(in_a, "GET", "/health", 200) == 3
        assert requests_total(in_b, "GET", "/health", 200) == 1
        assert a.app.state.metrics.registry is not b.app.state.metrics.registry
    # nothing was put in the process-wide registry
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("cronium") for name in names)


def test_route_template_without_a_route_in_the_scope(tmp_path: Path) -> None:
    # an older Starlette does not put the matched route in the scope: it is matched again
    service = RuntimeService(None, None, None)  # type: ignore[arg-type]
    app = create_app(service)
    middleware = MetricsMiddleware(app, metrics=app.state.metrics, routes=app.routes)
    scope = {"type": "http", "method": "GET", "path": "/executions/x1/variables/k",
             "root_path": "", "headers": []}  # fmt: skip
    assert middleware._template(scope) == VARIABLE
    assert middleware._template({**scope, "path": "/elsewhere"}) == UNMATCHED


def test_request_stats_buckets_are_cumulative_and_inclusive() -> None:
    # counted in plain numbers (no prometheus-client lock per request), exposed as the same
    # counter and histogram families at scrape time
    stats = RequestStats(buckets=(0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 2.0):
        stats.observe("GET", INPUT, 200, seconds)
    stats.observe("PUT", VARIABLE, 400, 0.02)
    registry = prometheus_client.CollectorRegistry()
    registry.register(stats)
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    labels = {"method": "GET", "route": INPUT, "status": "200"}

    def bucket(le: str) -> float:
        name = "cronium_runtime_request_duration_seconds_bucket"
        return samples[(name, frozenset({**labels, "le": le}.items()))]

    assert (bucket("0.001"), bucket("0.01"), bucket("+Inf")) == (2, 3, 4)  # le: at most
    key = frozenset(labels.items())
    assert samples[("cronium_runtime_request_duration_seconds_count", key)] == 4
    assert samples[("cronium_runtime_request_duration_seconds_sum", key)] == pytest.approx(2.0065)
    assert samples[("cronium_runtime_requests_total", key)] == 4
    other = frozenset({"method": "PUT", "route": VARIABLE, "status": "400"}.items())
    assert samples[("cronium_runtime_requests_total", other)] == 1
