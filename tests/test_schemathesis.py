"""The runtime API fuzzed by schemathesis from the OpenAPI document it serves.

A real setup (SQLite store, job queue, variables with a cipher, a tool registry, a running job
and its genuine token) is served by uvicorn on a loopback port, in an event loop of its own
(a blocking portal): schemathesis is synchronous and calls it over a real socket.

One test per operation draws :data:`MAX_EXAMPLES` requests from schemathesis' Hypothesis
strategies (``APIOperation.as_strategy``), valid and invalid ones (bodies, parameters,
headers, a missing token), sends them and runs schemathesis' checks on the answers:

- with the token: never a 5xx, and every answer one the document describes (status, content
  type, body schema). Two requests in three carry the job's own id, and half of those a key of
  an existing variable or the ``echo`` tool, so that the fuzzing reaches the handlers behind
  the token, not just the 403 in front of them;
- without a token: every operation behind one answers 401 (or 404 for a path that names no
  route), never 5xx; the public ones (``/health``, ``/metrics``) 200.

(schemathesis' own pytest loader, ``schemathesis.pytest.from_fixture``, cannot be used: its
version 4.32 sets ``Function._nodeid``, which pytest 9 no longer has.)

The tool registry holds only :class:`EchoTool`, defined here, and not the webhook tool: no
fuzzed request may make the runtime call anything (the webhook tool would call whatever URL
schemathesis made up). Rate limiting is off, or the fuzzing would mostly see 429s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import attrs
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cronium_core import Event, FakeClock, Script
from cronium_core.crypto import Cipher, generate_key
from cronium_core.datastore import DataStore
from cronium_core.errors import ValidationError
from cronium_core.queue import JobQueue
from cronium_core.runtime import RuntimeService
from cronium_core.tokens import ExecutionTokens
from cronium_core.tools import ToolContext, ToolRegistry
from cronium_core.variables import VariableStore
from cronium_runtime import create_app, serve
from cronium_runtime.app import OPENAPI

pytestmark = pytest.mark.slow

#: requests per operation and run (19 operations and runs: about 15 s in all)
MAX_EXAMPLES = 60
#: variables that exist before the fuzzing starts (and keys it should often use)
VARIABLES = {"api_url": "https://example.invalid/v1", "greeting": {"text": "hi"}}
SECRET = ("api_token", "s3cr3t-value")
PUBLIC = {"/health", "/metrics"}


class EchoTool:
    """A tool that touches nothing outside: ``echo`` returns its config, anything else is a
    bad action (400)."""

    async def execute(self, action: str, config: Mapping[str, Any], context: ToolContext) -> Any:
        if action != "echo":
            raise ValidationError("action", f"the echo tool has no action {action!r} (echo)")
        return {"config": dict(config), "job": context.job_id}


@attrs.frozen(kw_only=True)
class Served:
    url: str
    job_id: str
    token: str


@asynccontextmanager
async def runtime_api(db: Path) -> AsyncIterator[Served]:
    async with AsyncExitStack() as stack:
        clock = FakeClock()  # nothing expires while schemathesis runs
        store = DataStore(url=f"sqlite+aiosqlite:///{db}", clock=clock)
        await store.start(stack, upgrade=True)
        queue = JobQueue(store=store, lease_seconds=30)
        tokens = ExecutionTokens({"k1": generate_key()}, "k1", clock=clock)
        variables = VariableStore(store, Cipher.from_spec(f"c1:{generate_key()}"))
        await variables.start(stack)
        tools = ToolRegistry()
        tools.add("echo", EchoTool())
        service = RuntimeService(
            queue, store, tokens, limiter=None, variables=variables, tools=tools
        )
        event = await store.add_event(
            Event(name="fuzzed", owner="alice", action=Script(language="python", code="pass"))
        )
        await queue.enqueue(event, input={"rows": [1, 2, 3]})
        [job] = await queue.claim("w1", 1)
        for key, value in VARIABLES.items():
            await variables.set("alice", key, value)
        await variables.set("alice", SECRET[0], SECRET[1], secret=True)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        url = await tg.start(serve, create_app(service))
        yield Served(url=url, job_id=job.id, token=tokens.mint(job))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("fuzz") / "cronium.db"
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(runtime_api(db)) as value,
    ):
        assert value.url.startswith("http://127.0.0.1:")
        yield value


def _operations(*, public: bool) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method != "parameters" and (public or path not in PUBLIC)
    ]


@pytest.fixture(scope="module")
def schema(served: Served) -> Any:
    """The document the server serves, loaded by schemathesis over HTTP."""
    config = schemathesis.Config.from_dict({"base-url": served.url, "request-timeout": 10})
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json", config=config)


def fuzz(strategy: st.SearchStrategy[Any], check: Callable[[Any, st.DataObject], None]) -> None:
    """Run ``check`` on MAX_EXAMPLES cases drawn from ``strategy`` (and the draw for more)."""

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(data=st.data())
    def run(data: st.DataObject) -> None:
        check(data.draw(strategy), data)

    run()


def cases(operation: Any, **fixed: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid requests (bodies, parameters, headers) for ``operation``."""
    return st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, **fixed),
        operation.as_strategy(GenerationMode.NEGATIVE, **fixed),
    )


@pytest.mark.parametrize(("method", "path"), _operations(public=True))
def test_with_a_token_no_server_error_and_as_documented(
    schema: Any, served: Served, method: str, path: str
) -> None:
    operation = schema[path][method]
    strategy = cases(operation)
    if "{id}" in path:
        # mostly the job's own id, so that the handlers behind the token get fuzzed too
        own = cases(operation, path_parameters={"id": served.job_id})
        strategy = st.one_of(strategy, own, own)
    keys = [*VARIABLES, SECRET[0], "not_set_yet"]
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: set[int] = set()

    def check(case: Any, data: st.DataObject) -> None:
        own = case.path_parameters and case.path_parameters.get("id") == served.job_id
        if own and "{key}" in path and data.draw(st.booleans()):
            case.path_parameters["key"] = data.draw(st.sampled_from(keys))
        tool_call = path == "/tool-actions/execute" and isinstance(case.body, dict)
        if tool_call and "tool" in case.body and data.draw(st.booleans()):
            case.body.update(tool="echo", action="echo")
        response = case.call(headers={"Authorization": f"Bearer {served.token}"})
        case.validate_response(response, checks=checks)
        statuses.add(response.status_code)
        assert served.token not in response.text
        if "{key}" not in path:  # only reading the secret itself shows it
            assert SECRET[1] not in response.text

    fuzz(strategy, check)
    assert 200 in statuses, f"the fuzzing never got past the token: {sorted(statuses)}"


def refused_without_a_token(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every route behind a token answers 401, or 404 when the path names no route."""
    if response.status_code not in (401, 404):
        raise AssertionError(f"{case.method} {case.formatted_path}: {response.status_code}")
    return None


@pytest.mark.parametrize(("method", "path"), _operations(public=False))
def test_without_a_token_refused_and_no_server_error(schema: Any, method: str, path: str) -> None:
    def check(case: Any, data: st.DataObject) -> None:
        response = case.call()  # any Authorization header in it is made up
        case.validate_response(response, checks=[not_a_server_error, refused_without_a_token])

    fuzz(cases(schema[path][method]), check)


def test_public_routes_answer_without_a_token(schema: Any) -> None:
    for method, path in _operations(public=True):
        if path in PUBLIC:
            case = schema[path][method].Case()
            response = case.call()
            assert response.status_code == 200
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
