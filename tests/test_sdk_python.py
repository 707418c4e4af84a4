"""The Python SDK (``sdk/python``) as scripts use it: in a fresh interpreter, over a real
socket, against the runtime API served on loopback (and small stand-in servers for retries)."""

from __future__ import annotations

import json
import os
import socket
import sys
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

from cronium_core import FakeClock, JobStatus
from cronium_executors._sdk import PYTHON_WITH_SDK
from cronium_runtime import serve
from tests.test_runtime_api import Runtime, runtime

pytestmark = pytest.mark.anyio

SDK = Path(__file__).resolve().parents[1] / "sdk" / "python" / "src"
#: a token that would be easy to spot in any output
FAKE_TOKEN = "eyJfake.TOKEN-" + "s3cr3t" * 8 + ".sig"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as value:
        yield value


async def run_script(
    code: str, *, url: str | None, token: str | None, execution_id: str | None
) -> tuple[int, str, str]:
    """Run ``code`` in a fresh interpreter with the SDK importable and the job's env."""
    job_env = {
        "CRONIUM_RUNTIME_API": url,
        "CRONIUM_EXECUTION_TOKEN": token,
        "CRONIUM_EXECUTION_ID": execution_id,
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SDK)}
    env.update({name: value for name, value in job_env.items() if value is not None})
    result = await anyio.run_process(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, check=False
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


# -- against the runtime API -------------------------------------------------------------


async def test_script_round_trip(rt: Runtime) -> None:
    job, token = await rt.running_job(input={"rows": [1, 2, 3]})
    code, out, err = await run_script(
        """
        import json, cronium
        data = cronium.input()
        cronium.output({"count": len(data["rows"]), "text": "größe"})
        before = cronium.get_condition()
        cronium.set_condition(True)
        ctx = cronium.event()
        print(json.dumps({"before": before, "after": cronium.getCondition(), "ctx": ctx}))
        """,
        url=rt.url, token=token, execution_id=job.id,
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


async def test_async_client_and_camel_case(rt: Runtime) -> None:
    job, token = await rt.running_job(input={"x": 1})
    code, out, err = await run_script(
        """
        import asyncio, json, cronium

        async def main():
            client = cronium.AsyncClient()
            data = await client.input()
            await client.output({"seen": data})
            await client.setCondition(True)
            ctx = await client.event()
            return {"condition": await client.get_condition(), "id": ctx["execution"]["id"]}

        result = asyncio.run(main())
        cronium.setCondition(False)
        assert cronium.sendEmail is cronium.send_email
        assert cronium.executeToolAction is cronium.execute_tool_action
        print(json.dumps(result))
        """,
        url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out) == {"condition": True, "id": job.id}
    stored = await rt.queue.get(job.id)
    assert stored.output == {"seen": {"x": 1}} and stored.condition is False


async def test_not_yet_implemented_calls_raise_api_errors(rt: Runtime) -> None:
    job, token = await rt.running_job()
    code, out, err = await run_script(
        """
        import json, cronium
        seen = []
        for call in (lambda: cronium.get_variable("k"), lambda: cronium.setVariable("k", 1),
                     lambda: cronium.send_slack_message("hi", channel="#ops")):
            try:
                call()
            except cronium.CroniumAPIError as exc:
                seen.append([exc.status_code, exc.error])
        print(json.dumps(seen))
        """,
        url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    assert last_json(out) == [[501, "not_implemented"]] * 3


async def test_revoked_token_is_an_api_error_without_the_token(rt: Runtime) -> None:
    job, token = await rt.running_job()
    assert job.lease_id is not None
    await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
    code, out, err = await run_script(
        """
        import cronium
        try:
            cronium.output(1)
        except cronium.CroniumAPIError as exc:
            print(exc.status_code, exc.error, repr(exc), str(exc))
        """,
        url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("401 unauthorized")
    assert token not in out + err


async def test_uncaught_error_output_has_no_token(rt: Runtime) -> None:
    _, token = await rt.running_job()
    other, _ = await rt.running_job()
    code, out, err = await run_script(
        "import cronium\ncronium.input()\n", url=rt.url, token=token, execution_id=other.id
    )
    assert code == 1 and "CroniumAPIError: 403" in err
    assert token not in out + err


# -- retries, timeouts, failures -------------------------------------------------------------


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    """A small server that answers as told, counting requests."""
    server = StandIn()
    async with anyio.create_task_group() as tg:
        server.url = await tg.start(serve, server.app())
        yield server
        tg.cancel_scope.cancel()


class StandIn:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[tuple[str, str, str | None]] = []
        self.answers: list[tuple[int, Any]] = []  #: consumed in order; the last one repeats
        self.delay = 0.0

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            await request.body()
            self.requests.append(
                (
                    request.method,
                    request.scope["raw_path"].decode(),
                    request.headers.get("authorization"),
                )
            )
            await anyio.sleep(self.delay)
            status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            if isinstance(body, bytes):
                return Response(body, status_code=status)
            return JSONResponse(body, status_code=status)

        return Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST", "PUT"])])


SUCCESS = (200, {"success": True, "data": {"ok": 1}})
UNAVAILABLE = (503, {"success": False, "error": "unavailable", "message": "try later"})


async def test_retries_5xx_then_succeeds(stand_in: StandIn) -> None:
    stand_in.answers = [UNAVAILABLE, (502, b"<html>bad gateway</html>"), SUCCESS]
    code, out, err = await run_script(
        """
        import cronium
        print(cronium.Client(backoff=0.01).input())
        """,
        url=stand_in.url + "/", token=FAKE_TOKEN, execution_id="exec/1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "{'ok': 1}"
    assert stand_in.requests == [("GET", "/executions/exec%2F1/input", f"Bearer {FAKE_TOKEN}")] * 3


async def test_gives_up_after_the_tries(stand_in: StandIn) -> None:
    stand_in.answers = [UNAVAILABLE]
    code, out, err = await run_script(
        """
        import cronium
        try:
            cronium.Client(backoff=0.01, attempts=3).output({"a": 1})
        except cronium.CroniumAPIError as exc:
            print(exc.status_code, exc.message)
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "503 try later"
    assert len(stand_in.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 429])
async def test_4xx_is_not_retried(stand_in: StandIn, status: int) -> None:
    stand_in.answers = [(status, {"success": False, "error": "nope", "message": "refused"})]
    code, out, err = await run_script(
        """
        import cronium
        try:
            cronium.Client(backoff=0.01).set_condition(True)
        except cronium.CroniumAPIError as exc:
            print(exc.status_code, exc.error, exc.message)
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == f"{status} nope refused"
    assert len(stand_in.requests) == 1


async def test_get_variable_maps_404_to_none(stand_in: StandIn) -> None:
    stand_in.answers = [(404, {"success": False, "error": "not_found", "message": "no such"})]
    code, out, err = await run_script(
        "import cronium\nprint(cronium.get_variable('missing'))\n",
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "None" and len(stand_in.requests) == 1


async def test_success_false_is_an_error(stand_in: StandIn) -> None:
    stand_in.answers = [(200, {"success": False, "error": "odd", "message": "said no"})]
    code, out, err = await run_script(
        """
        import cronium
        try:
            cronium.input()
        except cronium.CroniumAPIError as exc:
            print(exc.status_code, exc.message)
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "200 said no"


async def test_tool_actions_are_not_repeated_after_a_500(stand_in: StandIn) -> None:
    # a 500 may come after the message went out; a 503 means it was not taken
    stand_in.answers = [(500, {"success": False, "error": "boom", "message": "boom"})]
    code, out, err = await run_script(
        """
        import cronium
        c = cronium.Client(backoff=0.01)
        try:
            c.send_email({"to": "a@example.invalid", "subject": "s", "body": "b"})
        except cronium.CroniumAPIError as exc:
            print(exc.status_code)
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "500" and len(stand_in.requests) == 1
    stand_in.requests.clear()
    stand_in.answers = [UNAVAILABLE, SUCCESS]
    code, out, err = await run_script(
        """
        import cronium
        print(cronium.Client(backoff=0.01).sendSlackMessage("hi", channel="#ops"))
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert len(stand_in.requests) == 2 and out.strip() == "{'ok': 1}"


async def test_timeout(stand_in: StandIn) -> None:
    stand_in.answers = [SUCCESS]
    stand_in.delay = 1.0
    code, out, err = await run_script(
        """
        import cronium
        try:
            cronium.Client(timeout=0.2, attempts=2, backoff=0.01).input()
        except cronium.CroniumTimeoutError as exc:
            print("timeout", isinstance(exc, TimeoutError), exc)
        """,
        url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("timeout True") and FAKE_TOKEN not in out + err
    assert len(stand_in.requests) == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connection_refused_after_retries() -> None:
    code, out, err = await run_script(
        """
        import time, cronium
        start = time.monotonic()
        try:
            cronium.Client(backoff=0.05).output(1)
        except cronium.CroniumAPIError:
            print("wrong error")
        except cronium.CroniumError as exc:
            print(f"{time.monotonic() - start:.3f}", exc, repr(exc))
        """,
        url=f"http://127.0.0.1:{free_port()}", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    elapsed, _, message = out.strip().partition(" ")
    assert "4 tries" in message and "ConnectionRefusedError" in message
    assert float(elapsed) >= (0.05 + 0.1 + 0.2) / 2  # three backoffs, at least half each
    assert FAKE_TOKEN not in out + err and "s3cr3t" not in out + err


async def test_uncaught_connection_error_traceback_has_no_token() -> None:
    code, out, err = await run_script(
        "import cronium\ncronium.Client(backoff=0.01, attempts=2).input()\n",
        url=f"http://127.0.0.1:{free_port()}", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 1 and "cronium._errors.CroniumError: cannot reach" in err
    assert "s3cr3t" not in out + err


# -- import and configuration --------------------------------------------------------------


async def test_import_is_cheap_and_reads_no_env() -> None:
    code, out, err = await run_script(
        """
        import sys
        import cronium
        heavy = [m for m in ("http.client", "json", "asyncio", "typing", "urllib.parse")
                 if m in sys.modules]
        print(heavy)
        try:
            cronium.input()
        except cronium.CroniumError as exc:
            print(exc)
        cronium.preload()
        print("http.client" in sys.modules)
        """,
        url=None, token=None, execution_id=None,
    )  # fmt: skip
    assert code == 0, err
    heavy, message, preloaded = out.strip().splitlines()
    assert heavy == "[]"
    assert "CRONIUM_RUNTIME_API is not set" in message
    assert preloaded == "True"


async def test_client_repr_and_bad_settings() -> None:
    code, out, err = await run_script(
        """
        import cronium
        c = cronium.Client()
        print(repr(c), repr(cronium.AsyncClient()))
        for kwargs in ({"token": "bad token\\nwith newline"}, {"base_url": "ftp://x"}):
            try:
                cronium.Client(**kwargs)
            except cronium.CroniumError as exc:
                print(exc)
        try:
            c.set_condition("yes")
        except TypeError as exc:
            print(exc)
        """,
        url="http://127.0.0.1:9", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    reprs, bad_token, bad_url, not_bool = out.strip().splitlines()
    assert reprs == (
        "Client(base_url='http://127.0.0.1:9', execution_id='e1') "
        "AsyncClient(base_url='http://127.0.0.1:9', execution_id='e1')"
    )
    assert bad_token == "CRONIUM_EXECUTION_TOKEN is malformed"
    assert "not an http(s) URL" in bad_url
    assert not_bool == "set_condition() takes True or False"
    assert "s3cr3t" not in out + err


@pytest.mark.parametrize(
    "launcher", [["-m", "cronium"], ["-c", PYTHON_WITH_SDK]], ids=["python -m cronium", "executors"]
)
async def test_a_script_runs_as_python_would_with_the_sdk_a_global(
    tmp_path: Path, launcher: list[str]
) -> None:
    """``python -m cronium SCRIPT ARG`` (for people) and ``python -c PYTHON_WITH_SDK SCRIPT
    ARG`` (what the executors run): ``cronium`` is a global; otherwise the script sees what
    ``python SCRIPT ARG`` gives it."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "helper.py").write_text("VALUE = 'from the script dir'\n")
    script = scripts / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, helper
            print(cronium.__name__, cronium is sys.modules["cronium"], "cronium" in globals())
            print(__name__, __file__ == sys.argv[0], sys.argv[1:], helper.VALUE)
            def fail():
                raise ValueError(sys.argv[1])
            if sys.argv[1] == "exit":
                sys.exit(7)
            fail()
            """
        )
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SDK)}

    async def run(*args: str) -> tuple[int, list[str], list[str]]:
        result = await anyio.run_process(
            [sys.executable, *launcher, *args], env=env, cwd=tmp_path, check=False
        )
        out, err = result.stdout.decode(), result.stderr.decode()
        return result.returncode, out.splitlines(), err.splitlines()

    code, out, err = await run(str(script), "exit")
    assert (code, err) == (7, [])
    assert out == ["cronium True True", "__main__ True ['exit'] from the script dir"]

    code, out, err = await run(str(script), "boom")
    assert code == 1
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1] == "ValueError: boom"
    # the script's own frames only, as `python script.py` shows them
    assert f'  File "{script}", line 9, in <module>' in err
    assert not any(
        machinery in line for line in err for machinery in ("runpy", "__main__.py", "_run.py")
    )
    assert sum(line.startswith("  File ") for line in err) == 2  # <module>, then fail()

    code, out, err = await run(str(tmp_path / "missing.py"))
    assert code == 2 and out == []
    assert "can't open file" in err[-1] and "missing.py" in err[-1]
    assert (await run())[0] == 2
