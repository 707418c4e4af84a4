"""The runtime API over real HTTP (uvicorn on loopback) against SQLite and PostgreSQL:
every route's happy path, the token matrix (RELIABILITY A1), execution scoping and revocation
(A2), and the statuses of bad requests."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import attrs
import httpx
import jwt
import pytest
from starlette.routing import Route

from cronium_core import Event, FakeClock, Job, JobStatus, RetryPolicy, Script
from cronium_core.broker import LocalBroker
from cronium_core.datastore import DataStore
from cronium_core.engine import RunEngine
from cronium_core.errors import ValidationError
from cronium_core.queue import JobQueue
from cronium_core.runtime import RateLimiter, RuntimeService, parse_keys
from cronium_core.tokens import ExecutionTokens
from cronium_core.workflows import Node, Workflow
from cronium_runtime import create_app, runtime_env_factory, serve
from cronium_runtime.app import OPENAPI, TOKEN_MESSAGE
from cronium_runtime.server import freeze_heap
from tests.test_tokens import BAD_TOKENS, KEY, OTHER_KEY, Forge

pytestmark = pytest.mark.anyio

NOOP = Script(language="python", code="pass")


@attrs.define(kw_only=True, eq=False)
class Runtime:
    """A store, a queue and the runtime API served on a loopback port."""

    clock: FakeClock
    store: DataStore
    queue: JobQueue
    engine: RunEngine
    tokens: ExecutionTokens
    service: RuntimeService
    url: str
    http: httpx.AsyncClient
    _events: int = 0

    async def running_job(self, input: Any = None, **event: Any) -> tuple[Job, str]:
        """Add an event, queue a run, claim it: a running attempt and its token."""
        self._events += 1
        ev = await self.store.add_event(
            Event(name=f"ev{self._events}", action=event.pop("action", NOOP), **event)
        )
        queued = await self.queue.enqueue(ev, input=input)
        [job] = await self.queue.claim("w1", 1)
        assert job.id == queued.id and job.lease_id
        return job, self.tokens.mint(job)

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.http.request(method, path, headers=headers, **kwargs)
        if token:
            assert token not in response.text
            assert all(token not in v for v in response.headers.values())
        return response


@asynccontextmanager
async def runtime(db_url: str, clock: FakeClock, **app_options: Any) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url, clock=clock)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        engine = RunEngine(store=store, queue=queue, broker=LocalBroker())
        tokens = ExecutionTokens({"k1": KEY, "k2": OTHER_KEY}, "k1", clock=clock)
        service = RuntimeService(queue, store, tokens)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        url = await tg.start(serve, create_app(service, **app_options))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
        yield Runtime(
            clock=clock, store=store, queue=queue, engine=engine, tokens=tokens,
            service=service, url=url, http=http,
        )  # fmt: skip


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as value:
        yield value


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and set(body) == {"success", "data"}
    return body["data"]


def refused(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False and body["error"] == error
    assert set(body) == {"success", "error", "message"} and isinstance(body["message"], str)
    return body


def unauthorized(response: httpx.Response) -> None:
    body = refused(response, 401, "unauthorized")
    assert body["message"] == TOKEN_MESSAGE  # generic, whatever the reason
    assert response.headers["www-authenticate"].startswith("Bearer")


# -- happy paths -----------------------------------------------------------------------


async def test_health_and_openapi(rt: Runtime) -> None:
    assert rt.url.startswith("http://127.0.0.1:")
    assert ok(await rt.call("GET", "/health")) == {"status": "ok"}
    doc = (await rt.call("GET", "/openapi.json")).json()
    assert doc == json.loads(json.dumps(OPENAPI)) and doc["openapi"] == "3.1.0"
    # every route is described with its methods, and every reference resolves
    app = create_app(rt.service)
    served = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route) and route.path != "/openapi.json"
        for method in route.methods or ()
        if method != "HEAD"
    }
    described = {
        (path, m) for path, item in doc["paths"].items() for m in item if m != "parameters"
    }
    assert described == served

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(doc):
        target = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]


async def test_input_output_condition(rt: Runtime) -> None:
    job, token = await rt.running_job(input={"x": 1, "names": ["a", "ü"]})
    base = f"/executions/{job.id}"
    assert ok(await rt.call("GET", f"{base}/input", token)) == {"x": 1, "names": ["a", "ü"]}
    assert ok(await rt.call("GET", f"{base}/condition", token)) is False  # unset
    assert ok(await rt.call("POST", f"{base}/output", token, json={"data": {"n": 2}})) is None
    assert ok(await rt.call("POST", f"{base}/condition", token, json={"condition": True})) is None
    assert ok(await rt.call("GET", f"{base}/condition", token)) is True
    stored = await rt.queue.get(job.id)
    assert stored.output == {"n": 2} and stored.condition is True
    # the last output wins; any JSON value will do
    for value in ([1, "two", None], "text", 3.5, None):
        ok(await rt.call("POST", f"{base}/output", token, json={"data": value}))
        assert (await rt.queue.get(job.id)).output == value


async def test_input_defaults_to_empty_object(rt: Runtime) -> None:
    job, token = await rt.running_job()
    assert ok(await rt.call("GET", f"/executions/{job.id}/input", token)) == {}


async def test_context(rt: Runtime) -> None:
    job, token = await rt.running_job(owner="alice")
    ctx = ok(await rt.call("GET", f"/executions/{job.id}/context", token))
    assert ctx == {
        "event": {
            "id": job.event_id, "name": "ev1", "type": "python", "executor": "local",
            "runs": {"total": 0, "succeeded": 0, "failed": 0},
        },
        "execution": {
            "id": job.id, "attempt": 1, "trigger": "manual",
            "started_at": rt.clock.now().isoformat(),
        },
        "workflow": None,
        "server": None,
        "user": {"id": "alice"},
    }  # fmt: skip


async def test_context_in_a_workflow_run(rt: Runtime) -> None:
    ev = await rt.store.add_event(Event(name="step", action=NOOP))
    wf = await rt.store.add_workflow(Workflow(name="wf", nodes=[Node(id="a", event_id=ev.id)]))
    run = await rt.engine.start_workflow_run(wf, input={"from": "run"})
    [job] = await rt.queue.claim("w1", 1)
    ctx = ok(await rt.call("GET", f"/executions/{job.id}/context", rt.tokens.mint(job)))
    assert ctx["workflow"] == {"run_id": run.id, "node_id": "a"}
    assert ctx["execution"]["trigger"] == "workflow"


async def test_variables_and_tool_actions_are_not_implemented_yet(rt: Runtime) -> None:
    job, token = await rt.running_job()
    path = f"/executions/{job.id}/variables/api_url"
    for response in (
        await rt.call("GET", path, token),
        await rt.call("PUT", path, token, json={"value": 1}),
        await rt.call("POST", "/tool-actions/execute", token,
                      json={"tool": "slack", "action": "send", "config": {}}),
        await rt.call("POST", "/tool-actions/execute", token,
                      json={"tool": "slack", "action": "send", "params": {"a": 1}}),
    ):  # fmt: skip
        refused(response, 501, "not_implemented")
    body = (await rt.call("GET", path, token)).json()
    assert body["message"] == "variables arrive with the variables store"
    # the token is checked first, and the contract's key rules already hold
    unauthorized(await rt.call("GET", path))
    unauthorized(await rt.call("POST", "/tool-actions/execute", json={"tool": "t"}))
    reserved = f"/executions/{job.id}/variables/CRONIUM_X"
    refused(await rt.call("GET", reserved, token), 400, "bad_request")
    bad_bodies: list[dict[str, Any]] = [
        {"action": "send"},
        {"tool": "", "action": "a"},
        {"tool": "t", "action": "a", "config": [1]},
    ]
    for bad in bad_bodies:
        response = await rt.call("POST", "/tool-actions/execute", token, json=bad)
        refused(response, 400, "bad_request")


async def test_unknown_routes_keep_the_error_shape(rt: Runtime) -> None:
    refused(await rt.call("GET", "/nope"), 404, "not_found")
    refused(await rt.call("DELETE", "/executions/x/input"), 405, "method_not_allowed")


async def test_runtime_env_factory(rt: Runtime) -> None:
    job, _ = await rt.running_job()
    env = runtime_env_factory(rt.url, rt.tokens)(job)
    assert set(env) == {"CRONIUM_RUNTIME_API", "CRONIUM_EXECUTION_TOKEN"}
    assert env["CRONIUM_RUNTIME_API"] == rt.url
    token = env["CRONIUM_EXECUTION_TOKEN"]
    assert rt.tokens.verify(token).lease_id == job.lease_id
    ok(await rt.call("GET", f"/executions/{job.id}/input", token))


# -- A1: the token matrix ------------------------------------------------------------------


async def test_token_negative_matrix(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    job, genuine = await rt.running_job(input={"secret": "input"})
    forge = Forge(
        claims=_claims(genuine),
        kid="k1", key=KEY, other_key=OTHER_KEY, now=int(rt.clock.now().timestamp()),
    )  # fmt: skip
    path = f"/executions/{job.id}/input"
    # the control: a forged copy of the genuine token opens the route
    assert ok(await rt.call("GET", path, forge.good())) == {"secret": "input"}

    cases: list[tuple[str, dict[str, str]]] = [
        ("no Authorization header", {}),
        ("bearer without token", {"Authorization": "Bearer"}),
        ("basic scheme", {"Authorization": f"Basic {genuine}"}),
        ("token without scheme", {"Authorization": genuine}),
    ]
    cases += [(name, {"Authorization": f"Bearer {make(forge)}"}) for name, make in BAD_TOKENS]
    wrong: dict[str, str] = {}
    caplog.set_level(logging.WARNING, logger="cronium.runtime")
    for name, headers in cases:
        caplog.clear()
        response = await rt.call("GET", path, headers=headers)
        try:
            unauthorized(response)
            assert any("auth failure" in r.getMessage() for r in caplog.records), "not logged"
        except AssertionError as exc:
            wrong[name] = f"{response.status_code} {response.text[:80]} {exc}"
        token = headers.get("Authorization", "").partition(" ")[2]
        if token:
            assert token not in response.text and token not in caplog.text
    assert wrong == {}
    # a write with a bad token writes nothing
    bad = f"Bearer {forge.with_claims(iss='x')}"
    response = await rt.call("POST", f"/executions/{job.id}/output", headers={"Authorization": bad},
                             json={"data": "forged"})  # fmt: skip
    unauthorized(response)
    assert (await rt.queue.get(job.id)).output is None


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_expired_token_refused_while_the_job_still_runs(rt: Runtime) -> None:
    # A2 (d): no token outlives the job's hard timeout (there is no refresh to ask for)
    job, token = await rt.running_job(timeout=60)
    path = f"/executions/{job.id}/input"
    ok(await rt.call("GET", path, token))
    rt.clock.advance(60 + 60 + 31)  # timeout + grace + leeway
    assert (await rt.queue.get(job.id)).status is JobStatus.RUNNING
    unauthorized(await rt.call("GET", path, token))


# -- A2: scoping and revocation --------------------------------------------------------------


async def test_token_of_one_execution_on_another(rt: Runtime) -> None:
    e1, t1 = await rt.running_job(input={"who": "e1"})
    e2, _ = await rt.running_job(input={"who": "e2"})
    base = f"/executions/{e2.id}"
    for method, path, body in [
        ("GET", f"{base}/input", None),
        ("POST", f"{base}/output", {"data": "stolen"}),
        ("GET", f"{base}/condition", None),
        ("POST", f"{base}/condition", {"condition": True}),
        ("GET", f"{base}/context", None),
        ("GET", f"{base}/variables/k", None),
        ("PUT", f"{base}/variables/k", {"value": 1}),
    ]:
        response = await rt.call(method, path, t1, json=body)
        refused(response, 403, "forbidden")
        assert "e2" not in response.text
    untouched = await rt.queue.get(e2.id)
    assert untouched.output is None and untouched.condition is None
    ok(await rt.call("GET", f"/executions/{e1.id}/input", t1))


async def test_token_dies_when_its_job_ends(rt: Runtime) -> None:
    job, token = await rt.running_job()
    base = f"/executions/{job.id}"
    ok(await rt.call("POST", f"{base}/output", token, json={"data": 1}))
    assert job.lease_id is not None
    await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
    # at once, long before exp
    unauthorized(await rt.call("GET", f"{base}/input", token))
    unauthorized(await rt.call("POST", f"{base}/output", token, json={"data": 2}))
    unauthorized(await rt.call("POST", f"{base}/condition", token, json={"condition": True}))
    done = await rt.queue.get(job.id)
    assert done.output == 1 and done.condition is None


async def test_attempt_token_dies_when_the_job_is_reclaimed(rt: Runtime) -> None:
    job, token1 = await rt.running_job(retry=RetryPolicy(max_attempts=2, backoff_base=1))
    base = f"/executions/{job.id}"
    ok(await rt.call("GET", f"{base}/input", token1))
    rt.clock.advance(31)  # the worker died: its lease expires
    reaped = await rt.engine.reap()
    assert [j.id for j in reaped.requeued] == [job.id]
    unauthorized(await rt.call("GET", f"{base}/input", token1))  # queued: no attempt runs
    rt.clock.advance(5)
    [again] = await rt.queue.claim("w2", 1)
    assert again.id == job.id and again.attempt == 2 and again.lease_id != job.lease_id
    token2 = rt.tokens.mint(again)
    unauthorized(await rt.call("GET", f"{base}/input", token1))
    unauthorized(await rt.call("POST", f"{base}/output", token1, json={"data": "zombie"}))
    ok(await rt.call("POST", f"{base}/output", token2, json={"data": "attempt 2"}))
    assert (await rt.queue.get(job.id)).output == "attempt 2"


# -- bad requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("output", b"{not json"),
        ("output", b""),
        ("output", b"[1, 2]"),
        ("output", b'"just a string"'),
        ("output", b"{}"),  # no "data"
        ("output", b'{"data": NaN}'),
        ("output", b'{"data": Infinity}'),
        ("output", b'{"data": "nul \\u0000 inside"}'),
        ("output", b'{"data": {"k\\u0000": 1}}'),
        ("output", b'{"data": "\\ud800 lone surrogate"}'),
        ("output", b'{"data": ' + b"[" * 150 + b"]" * 150 + b"}"),
        ("output", b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("output", b"\xff\xfe garbage"),
        ("condition", b'{"condition": "true"}'),
        ("condition", b'{"condition": 1}'),
        ("condition", b'{"condition": null}'),
        ("condition", b"{}"),
    ],
)
async def test_bad_bodies(rt: Runtime, path: str, content: bytes) -> None:
    job, token = await rt.running_job()
    response = await rt.call("POST", f"/executions/{job.id}/{path}", token, content=content,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    refused(response, 400, "bad_request")
    stored = await rt.queue.get(job.id)
    assert stored.output is None and stored.condition is None


async def test_body_too_large(db_url: str, clock: FakeClock) -> None:
    async with runtime(db_url, clock, max_body=1000) as rt:
        job, token = await rt.running_job()
        path = f"/executions/{job.id}/output"
        big = json.dumps({"data": "x" * 1000}).encode()
        # declared by Content-Length
        refused(await rt.call("POST", path, token, content=big), 413, "payload_too_large")

        # streamed (chunked, no Content-Length): counted as it arrives
        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"data": "'
            for _ in range(20):
                yield b"y" * 100
            yield b'"}'

        response = await rt.call("POST", path, token, content=chunks())
        refused(response, 413, "payload_too_large")
        assert (await rt.queue.get(job.id)).output is None
        small = json.dumps({"data": "x" * 900}).encode()
        ok(await rt.call("POST", path, token, content=small))

        # a body in many pieces, under the limit: all of them, in order
        async def pieces() -> AsyncIterator[bytes]:
            yield b'{"data": ['
            for n in range(50):
                yield b"%d," % n
            yield b'"end"]}'

        ok(await rt.call("POST", path, token, content=pieces()))
        assert (await rt.queue.get(job.id)).output == [*range(50), "end"]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32-be"])
async def test_bodies_in_any_json_encoding(rt: Runtime, encoding: str) -> None:
    # as json.loads reads bytes (RFC 8259 names UTF-8; older clients sent the others)
    job, token = await rt.running_job()
    body = json.dumps({"data": "snow \u2603"}, ensure_ascii=False).encode(encoding)
    ok(await rt.call("POST", f"/executions/{job.id}/output", token, content=body))
    assert (await rt.queue.get(job.id)).output == "snow \u2603"


async def test_default_limit_is_one_mebibyte(rt: Runtime) -> None:
    job, token = await rt.running_job()
    path = f"/executions/{job.id}/output"
    under = {"data": "x" * (1024 * 1024 - 100)}
    ok(await rt.call("POST", path, token, json=under))
    refused(await rt.call("POST", path, token, json={"data": "x" * (1024 * 1024)}),
            413, "payload_too_large")  # fmt: skip


async def test_rate_limit_per_execution(rt: Runtime) -> None:
    now = [0.0]
    rt.service.limiter = RateLimiter(rate=2, burst=3, monotonic=lambda: now[0])
    e1, t1 = await rt.running_job()
    e2, t2 = await rt.running_job()
    p1, p2 = f"/executions/{e1.id}/condition", f"/executions/{e2.id}/condition"
    for _ in range(3):
        ok(await rt.call("GET", p1, t1))
    response = await rt.call("GET", p1, t1)
    refused(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "1"
    ok(await rt.call("GET", p2, t2))  # another execution has its own bucket
    now[0] += 0.5  # refills at 2/s: one more request
    ok(await rt.call("GET", p1, t1))
    refused(await rt.call("GET", p1, t1), 429, "rate_limited")


def test_rate_limiter_forgets_idle_executions() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=2, max_keys=4, monotonic=lambda: now[0])
    for i in range(4):
        assert limiter.acquire(f"e{i}") == 0.0
    assert limiter.acquire("e0") == 0.0
    assert limiter.acquire("e0") > 0  # e0's bucket is empty
    now[0] += 10
    assert limiter.acquire("e4") == 0.0  # 5 keys > 4: the idle, full ones are dropped
    assert len(limiter._buckets) == 1


async def test_serve_stops_when_cancelled(db_url: str, clock: FakeClock) -> None:
    async with runtime(db_url, clock) as rt:
        url = rt.url
        ok(await rt.call("GET", "/health"))
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/health")


def test_freeze_heap_exempts_what_is_alive_now() -> None:
    alive = len(gc.get_objects())
    try:
        freeze_heap()
        # the startup heap left the collector's generations: a full collection skips it
        assert gc.get_freeze_count() >= alive // 2
        assert len(gc.get_objects()) < alive // 10
    finally:
        gc.unfreeze()


def test_runtime_keys_are_parsed_and_checked() -> None:
    keys, current = parse_keys(" k2:two , k1:one ,")
    assert (keys, current) == ({"k2": "two", "k1": "one"}, "k2")  # the first signs
    for spec, problem in [("", "no key given"), ("k1", "expected kid:secret"),
                          ("k1:a,k2:b,k1:c", "'k1' is given twice")]:  # fmt: skip
        with pytest.raises(ValidationError, match=problem):
            parse_keys(spec)
