"""The Node SDK (``sdk/node/cronium``) as scripts use it: run by node over a real socket against
the runtime API served on loopback, by the real local executor through Cronium, and against
small stand-in servers for retries, timeouts and failures."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cronium_core import (
    Cronium,
    Edge,
    EdgeKind,
    Event,
    FakeClock,
    JobStatus,
    Node,
    NodeStatus,
    Script,
    Stream,
    Workflow,
)
from cronium_runtime import serve
from tests.test_runtime_api import Runtime, runtime
from tests.test_sdk_python import FAKE_TOKEN, SUCCESS, UNAVAILABLE, free_port

pytestmark = [
    pytest.mark.anyio,
    # CI installs node: there a missing node fails the tests, never skips them
    pytest.mark.skipif(
        shutil.which("node") is None and os.environ.get("CI") != "true",
        reason="node is not installed",
    ),
]

SDK = Path(__file__).resolve().parents[1] / "sdk" / "node"
PACKAGE = SDK / "cronium"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as value:
        yield value


async def run_node(
    code: str,
    tmp_path: Path,
    *,
    url: str | None,
    token: str | None,
    execution_id: str | None,
    name: str = "script.js",
) -> tuple[int, str, str]:
    """Run ``code`` as a script file, with the SDK on ``NODE_PATH`` as the local executor
    puts it, and the job's env."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_PATH": str(SDK)}
    job_env = {
        "CRONIUM_RUNTIME_API": url,
        "CRONIUM_EXECUTION_TOKEN": token,
        "CRONIUM_EXECUTION_ID": execution_id,
    }
    env.update({key: value for key, value in job_env.items() if value is not None})
    with anyio.fail_after(60):
        result = await anyio.run_process(["node", str(script)], env=env, cwd=tmp_path, check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


class StandIn:
    """A small server that answers as told, keeping each request and its JSON body."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, str, str | None]] = []
        self.bodies: list[Any] = []
        self.answers: list[tuple[int, Any]] = []  #: consumed in order; the last one repeats
        self.delay = 0.0

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            raw = await request.body()
            self.bodies.append(json.loads(raw) if raw else None)
            auth = request.headers.get("authorization")
            self.requests.append((request.method, request.scope["raw_path"].decode(), auth))
            await anyio.sleep(self.delay)
            status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(body, bytes):
                return Response(body, status_code=status)
            return JSONResponse(body, status_code=status)

        methods = ["GET", "POST", "PUT", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", handle, methods=methods)])


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    async with anyio.create_task_group() as tg:
        server.url = await tg.start(serve, server.app())
        yield server
        tg.cancel_scope.cancel()


# -- the package -----------------------------------------------------------------------------


async def test_javascript_files_parse() -> None:
    for path in sorted(PACKAGE.glob("*.js")) + sorted(PACKAGE.glob("*.mjs")):
        result = await anyio.run_process(["node", "--check", str(path)], check=False)
        assert result.returncode == 0, (path, result.stderr.decode())


def test_package_json_exports_every_face() -> None:
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["name"] == "cronium"
    assert not manifest.get("dependencies")
    root = manifest["exports"]["."]
    files = [
        root["import"]["default"], root["import"]["types"],
        root["require"]["default"], root["require"]["types"],
        manifest["exports"]["./global"]["default"], manifest["exports"]["./global"]["types"],
        manifest["main"], manifest["types"],
    ]  # fmt: skip
    for file in files:
        assert (PACKAGE / file).is_file(), file


async def test_require_and_import_are_one_module(tmp_path: Path) -> None:
    """``require`` through NODE_PATH, ``import`` through node_modules (ESM ignores NODE_PATH),
    and the global: the same functions and error classes, and nothing read at load time."""
    modules = tmp_path / "node_modules"
    modules.mkdir()
    (modules / "cronium").symlink_to(PACKAGE)
    code, out, err = await run_node(
        """
        import { createRequire } from 'node:module';
        import cronium, * as named from 'cronium';
        const require = createRequire(import.meta.url);
        const cjs = require('cronium');
        require('cronium/global');
        const names = ['input', 'output', 'getVariable', 'setVariable', 'setCondition',
          'getCondition', 'event', 'executeToolAction', 'sendEmail', 'sendSlackMessage',
          'sendDiscordMessage', 'Client', 'CroniumError', 'CroniumAPIError',
          'CroniumTimeoutError'];
        const same = names.every((n) => typeof cjs[n] === 'function' && named[n] === cjs[n]
          && cronium[n] === cjs[n] && globalThis.cronium[n] === cjs[n]);
        const hierarchy = new named.CroniumAPIError(404, 'x') instanceof cjs.CroniumError
          && new cjs.CroniumTimeoutError('t') instanceof named.CroniumError;
        let missing;
        try {
          await named.input();
        } catch (err) {
          missing = [err.constructor.name, err.message];
        }
        console.log(JSON.stringify({ same, hierarchy, missing }));
        """,
        tmp_path, url=None, token=None, execution_id=None, name="script.mjs",
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out) == {
        "same": True,
        "hierarchy": True,
        "missing": [
            "CroniumError",
            "CRONIUM_RUNTIME_API is not set: is this script running as a Cronium job?",
        ],
    }


# -- against the runtime API -----------------------------------------------------------------


async def test_script_round_trip(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job(input={"rows": [1, 2, 3]})
    code, out, err = await run_node(
        """
        const cronium = require('cronium');
        (async () => {
          const data = await cronium.input();
          await cronium.output({ count: data.rows.length, text: 'größe' });
          const before = await cronium.getCondition();
          await cronium.setCondition(true);
          const ctx = await cronium.event();
          console.log(JSON.stringify({ before, after: await cronium.getCondition(), ctx }));
        })();
        """,
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    result = last_json(out)
    assert result["before"] is False and result["after"] is True
    assert result["ctx"]["execution"] == {
        "id": job.id, "attempt": 1, "trigger": "manual",
        "started_at": rt.clock.now().isoformat(),
    }  # fmt: skip
    assert result["ctx"]["event"]["type"] == "python"
    stored = await rt.queue.get(job.id)
    assert stored.output == {"count": 3, "text": "größe"} and stored.condition is True
    assert token not in out + err


async def test_output_of_nothing_is_null(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job()
    code, out, err = await run_node(
        "require('cronium').output().then(() => console.log('done'));",
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0 and out.strip() == "done", err
    assert (await rt.queue.get(job.id)).output is None


async def test_revoked_token_is_an_api_error_without_the_token(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job()
    assert job.lease_id is not None
    await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
    code, out, err = await run_node(
        """
        const cronium = require('cronium');
        cronium.output(1).catch((err) => {
          console.log(err instanceof cronium.CroniumAPIError, err.statusCode, err.error,
            String(err), require('node:util').inspect(err));
        });
        """,
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("true 401 unauthorized CroniumAPIError: missing, invalid, expired")
    assert token not in out + err


async def test_uncaught_error_output_has_no_token(rt: Runtime, tmp_path: Path) -> None:
    _, token = await rt.running_job()
    other, _ = await rt.running_job()
    code, out, err = await run_node(
        "require('cronium').input();\n", tmp_path, url=rt.url, token=token, execution_id=other.id
    )
    assert code == 1 and "CroniumAPIError: 403: " in err and "statusCode: 403" in err
    assert token not in out + err


# -- under the local executor, through Cronium -----------------------------------------------


@pytest.fixture
async def cr(db_url: str) -> AsyncIterator[Cronium]:
    async with Cronium(db_url, executors=["local"], scheduler=False, poll_interval=0.2) as cr:
        yield cr


def node(code: str) -> Script:
    return Script(language="node", code=textwrap.dedent(code))


async def test_node_script_under_the_local_executor(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="node-sdk", action=node(
        """
        const cronium = require('cronium');
        (async () => {
          const data = await cronium.input();
          const ctx = await cronium.event();
          console.log('attempt', ctx.execution.attempt, 'of', ctx.event.name,
            ctx.execution.id === process.env.CRONIUM_EXECUTION_ID);
          await cronium.output({ double: data.x * 2, type: ctx.event.type });
          await cronium.setCondition((await cronium.getCondition()) === false);
        })();
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id, input={"x": 21})).id, timeout=30)
    logs = [(ln.stream, ln.text) for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {"double": 42, "type": "node"}
    assert done.condition is True
    assert (Stream.STDOUT, "attempt 1 of node-sdk true") in logs


async def test_variables_under_the_local_executor(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="node-variables", action=node(
        """
        const cronium = require('cronium');
        (async () => {
          const missing = await cronium.getVariable('sdk_node');
          await cronium.setVariable('sdk_node', { n: 1, tags: ['a'] });
          const set = await cronium.getVariable('sdk_node');
          await cronium.setVariable('sdk_node_null', null);
          const nulled = await cronium.getVariable('sdk_node_null');
          const refused = await cronium.setVariable('CRONIUM_X', 1).catch((e) => e.statusCode);
          await cronium.output({ missing, set, nulled, refused });
        })();
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    logs = [ln.text for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {
        "missing": None, "set": {"n": 1, "tags": ["a"]}, "nulled": None, "refused": 400,
    }  # fmt: skip
    stored = await cr.variables.get(ev.owner, "sdk_node")
    assert stored.value == {"n": 1, "tags": ["a"]}


async def test_import_under_the_local_executor(cr: Cronium) -> None:
    """What works today for an ES module import from a job: importing the file that
    ``require`` finds (the ``import`` face needs node_modules, see the next test)."""
    ev = await cr.events.add(Event(name="node-import", action=node(
        """
        import(require.resolve('cronium')).then(async (cronium) => {
          const data = await cronium.input();
          await cronium.output({ seen: data, same: cronium.input === require('cronium').input });
        });
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id, input={"k": "v"})).id, timeout=30)
    logs = [ln.text for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {"seen": {"k": "v"}, "same": True}


async def test_bare_import_under_the_local_executor(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="node-bare-import", action=node(
        "import('cronium').then((c) => c.output({ ok: true }));\n"
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    assert done.status is JobStatus.SUCCEEDED and done.output == {"ok": True}


async def test_global_without_require(cr: Cronium) -> None:
    """The local executor preloads ``cronium/global.js``: the helpers are a global."""
    ev = await cr.events.add(Event(
        name="node-global-default",
        action=node("cronium.input().then((data) => cronium.output({ global: data }));\n"),
    ))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id, input=[3])).id, timeout=30)
    assert done.status is JobStatus.SUCCEEDED and done.output == {"global": [3]}


async def test_global_when_preloaded(cr: Cronium) -> None:
    """``cronium/global.js`` preloaded (as the executor may do with ``--require``) makes the
    helpers a global: no require in the script."""
    ev = await cr.events.add(Event(
        name="node-global",
        action=node("cronium.input().then((data) => cronium.output({ global: data }));\n"),
        env={"NODE_OPTIONS": f"--require {PACKAGE / 'global.js'}"},
    ))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id, input=[1, 2])).id, timeout=30)
    logs = [ln.text for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {"global": [1, 2]}


async def test_workflow_passes_node_output_to_the_next_node(cr: Cronium) -> None:
    measure = await cr.events.add(Event(name="measure", action=node(
        """
        const cronium = require('cronium');
        (async () => {
          const { reading } = await cronium.input();
          await cronium.output({ reading, unit: 'C' });
          await cronium.setCondition(reading > 50);
        })();
        """
    )))  # fmt: skip
    alarm = await cr.events.add(Event(name="alarm", action=node(
        """
        const cronium = require('cronium');
        (async () => {
          const got = await cronium.input();
          const ctx = await cronium.event();
          await cronium.output({ alarm: got, node: ctx.workflow.node_id });
        })();
        """
    )))  # fmt: skip
    wf = await cr.workflows.add(Workflow(
        name="node-route",
        nodes=[Node(id="measure", event_id=measure.id), Node(id="alarm", event_id=alarm.id)],
        edges=[Edge(source="measure", target="alarm", kind=EdgeKind.ON_CONDITION)],
    ))  # fmt: skip
    hot = await cr.workflows.wait((await cr.workflows.run(wf.id, {"reading": 90})).id, 60)
    cold = await cr.workflows.wait((await cr.workflows.run(wf.id, {"reading": 10})).id, 60)
    assert hot.status == cold.status == "succeeded"
    assert hot.nodes["alarm"].status is NodeStatus.SUCCEEDED
    assert hot.nodes["alarm"].output == {"alarm": {"reading": 90, "unit": "C"}, "node": "alarm"}
    assert cold.nodes["alarm"].status is NodeStatus.SKIPPED


# -- retries, timeouts, failures ---------------------------------------------------------------


async def test_retries_5xx_then_succeeds(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [UNAVAILABLE, (502, b"<html>bad gateway</html>"), SUCCESS]
    code, out, err = await run_node(
        """
        const { Client } = require('cronium');
        new Client({ backoff: 10 }).input().then((data) => console.log(JSON.stringify(data)));
        """,
        tmp_path, url=stand_in.url + "/", token=FAKE_TOKEN, execution_id="exec/1 ü",
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out) == {"ok": 1}
    expected = ("GET", "/executions/exec%2F1%20%C3%BC/input", f"Bearer {FAKE_TOKEN}")
    assert stand_in.requests == [expected] * 3


async def test_gives_up_after_the_tries(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [UNAVAILABLE]
    code, out, err = await run_node(
        """
        const { Client, CroniumAPIError } = require('cronium');
        new Client({ backoff: 10 }).output({ a: 1 }).catch((err) => {
          console.log(err instanceof CroniumAPIError, err.statusCode, err.error, err.message);
        });
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "true 503 unavailable try later"
    assert len(stand_in.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429])
async def test_4xx_is_not_retried(stand_in: StandIn, tmp_path: Path, status: int) -> None:
    stand_in.answers = [(status, {"success": False, "error": "nope", "message": "refused"})]
    code, out, err = await run_node(
        """
        const { Client } = require('cronium');
        new Client({ backoff: 10 }).setCondition(true).catch((err) => {
          console.log(err.statusCode, err.error, err.message);
        });
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"{status} nope refused"
    assert len(stand_in.requests) == 1


async def test_get_variable_maps_404_to_null(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [(404, {"success": False, "error": "not_found", "message": "no such"})]
    code, out, err = await run_node(
        "require('cronium').getVariable('missing').then((v) => console.log(JSON.stringify(v)));",
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "null" and len(stand_in.requests) == 1
    assert stand_in.requests[0][:2] == ("GET", "/executions/e1/variables/missing")


async def test_success_false_is_an_error(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [(200, {"success": False, "error": "odd", "message": "said no"})]
    code, out, err = await run_node(
        "require('cronium').input().catch((e) => console.log(e.name, e.statusCode, e.message));",
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "CroniumAPIError 200 said no"


async def test_tool_actions_are_not_repeated_after_a_500(stand_in: StandIn, tmp_path: Path) -> None:
    # a 500 may come after the message went out; a 503 means it was not taken
    stand_in.answers = [(500, {"success": False, "error": "boom", "message": "boom"})]
    code, out, err = await run_node(
        """
        const { Client } = require('cronium');
        new Client({ backoff: 10 })
          .sendEmail({ to: 'a@example.invalid', subject: 's', body: 'b' })
          .catch((err) => console.log(err.statusCode));
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "500" and len(stand_in.requests) == 1
    stand_in.requests.clear()
    stand_in.answers = [UNAVAILABLE, SUCCESS]
    code, out, err = await run_node(
        """
        const { Client } = require('cronium');
        new Client({ backoff: 10 }).sendSlackMessage('hi', '#ops')
          .then((r) => console.log(JSON.stringify(r)));
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert len(stand_in.requests) == 2 and last_json(out) == {"ok": 1}
    assert stand_in.requests[0][:2] == ("POST", "/tool-actions/execute")


async def test_tool_action_bodies(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [SUCCESS]
    code, out, err = await run_node(
        """
        const c = require('cronium');
        (async () => {
          await c.executeToolAction('webhook', 'post', { url: 'http://127.0.0.1:9/x' });
          await c.sendEmail(['a@example.invalid'], 'subject', 'body', { cc: 'b@example.invalid' });
          await c.sendEmail({ to: 'c@example.invalid', subject: 's' });
          await c.sendSlackMessage('hi');
          await c.sendDiscordMessage({ message: 'yo', username: 'bot' });
          await c.executeToolAction('x', 'y');
          console.log('done');
        })();
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0 and out.strip() == "done", err
    assert stand_in.bodies == [
        {"tool": "webhook", "action": "post", "config": {"url": "http://127.0.0.1:9/x"}},
        {"tool": "email", "action": "send", "config": {"to": ["a@example.invalid"],
         "subject": "subject", "body": "body", "cc": "b@example.invalid"}},
        {"tool": "email", "action": "send", "config": {"to": "c@example.invalid", "subject": "s"}},
        {"tool": "slack", "action": "send", "config": {"message": "hi"}},
        {"tool": "discord", "action": "send", "config": {"message": "yo", "username": "bot"}},
        {"tool": "x", "action": "y", "config": {}},
    ]  # fmt: skip


async def test_timeout(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [SUCCESS]
    stand_in.delay = 1.0
    code, out, err = await run_node(
        """
        const { Client, CroniumTimeoutError, CroniumError } = require('cronium');
        new Client({ timeout: 200, attempts: 2, backoff: 10 }).input().catch((err) => {
          console.log('timeout', err instanceof CroniumTimeoutError, err instanceof CroniumError,
            err.message);
        });
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("timeout true true the Cronium runtime API at")
    assert "did not answer within 0.2 s (2 tries)" in out
    assert FAKE_TOKEN not in out + err
    assert len(stand_in.requests) == 2


async def test_connection_refused_after_retries(tmp_path: Path) -> None:
    code, out, err = await run_node(
        """
        const { Client, CroniumAPIError } = require('cronium');
        const start = performance.now();
        new Client({ backoff: 50 }).output(1).catch((err) => {
          const ms = performance.now() - start;
          console.log(JSON.stringify({ ms, api: err instanceof CroniumAPIError, code: err.code,
            message: err.message, inspected: require('node:util').inspect(err) }));
        });
        """,
        tmp_path, url=f"http://127.0.0.1:{free_port()}", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    result = last_json(out)
    assert result["api"] is False and result["code"] == "ECONNREFUSED"
    assert "cannot reach the Cronium runtime API" in result["message"]
    assert "(4 tries)" in result["message"]
    assert result["ms"] >= (50 + 100 + 200) / 2  # three backoffs, at least half each
    assert "s3cr3t" not in out + err


async def test_uncaught_connection_error_has_no_token(tmp_path: Path) -> None:
    code, out, err = await run_node(
        "new (require('cronium').Client)({ backoff: 1, attempts: 2 }).input();\n",
        tmp_path, url=f"http://127.0.0.1:{free_port()}", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 1 and "CroniumError: cannot reach" in err
    assert "s3cr3t" not in out + err


async def test_client_settings_and_bad_calls(tmp_path: Path) -> None:
    code, out, err = await run_node(
        """
        const util = require('node:util');
        const cronium = require('cronium');
        const c = new cronium.Client();
        const lines = [util.inspect(c), JSON.stringify(c), util.inspect(c, { showHidden: true })];
        for (const options of [{ token: 'bad token' }, { token: 'x\\ny' },
                               { baseUrl: 'ftp://x' }, { baseUrl: 'not a url' }]) {
          try {
            new cronium.Client(options);
            lines.push('accepted');
          } catch (err) {
            lines.push(err.message);
          }
        }
        (async () => {
          const calls = [() => c.setCondition('yes'), () => c.executeToolAction('t', 'a', [1])];
          for (const call of calls) {
            await call().catch((err) => lines.push(`${err.name}: ${err.message}`));
          }
          console.log(JSON.stringify(lines));
        })();
        """,
        tmp_path, url="http://127.0.0.1:9", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    shown, as_json, hidden, space, newline, ftp, garbage, not_bool, not_object = last_json(out)
    assert shown == 'Client { baseUrl: "http://127.0.0.1:9", executionId: "e1" }' == hidden
    assert json.loads(as_json) == {"baseUrl": "http://127.0.0.1:9", "executionId": "e1"}
    assert space == newline == "CRONIUM_EXECUTION_TOKEN is malformed"
    assert "not an http(s) URL" in ftp and "not an http(s) URL" in garbage
    assert not_bool == "TypeError: setCondition() takes true or false"
    assert not_object == "TypeError: executeToolAction() takes its config as an object"
    assert "s3cr3t" not in out + err
