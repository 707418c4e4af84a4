"""The bash SDK (``sdk/bash/cronium.sh``) as scripts use it: sourced before the script as the
local executor does, against the runtime API served on loopback, by the real local executor
through Cronium, and against small stand-in servers for retries, timeouts and failures."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

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
from tests.test_sdk_node import StandIn
from tests.test_sdk_python import FAKE_TOKEN, SUCCESS, UNAVAILABLE, free_port

pytestmark = [
    pytest.mark.anyio,
    # CI installs them (scripts/services): there a missing tool fails the tests
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("bash", "curl", "jq"))
        and os.environ.get("CI") != "true",
        reason="the bash SDK needs bash, curl and jq",
    ),
]

SDK = Path(__file__).resolve().parents[1] / "sdk" / "bash" / "cronium.sh"
#: how the local executor runs a bash script with the SDK: $0 the script, $1 the SDK
WITH_SDK = '. "$1" || exit 1; shift; . "$0"'
#: quick retries for the stand-in tests
FAST = "CRONIUM_SDK_BACKOFF=0.01\n"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as value:
        yield value


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    async with anyio.create_task_group() as tg:
        server.url = await tg.start(serve, server.app())
        yield server
        tg.cancel_scope.cancel()


def job_env(url: str | None, token: str | None, execution_id: str | None) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    values = {
        "CRONIUM_RUNTIME_API": url,
        "CRONIUM_EXECUTION_TOKEN": token,
        "CRONIUM_EXECUTION_ID": execution_id,
    }
    env.update({key: value for key, value in values.items() if value is not None})
    return env


def write_script(tmp_path: Path, code: str) -> Path:
    script = tmp_path / "script.sh"
    script.write_text(textwrap.dedent(code))
    return script


async def run_bash(
    code: str, tmp_path: Path, *, url: str | None, token: str | None, execution_id: str | None
) -> tuple[int, str, str]:
    """Run ``code`` as the local executor runs a bash script: the SDK sourced first."""
    script = write_script(tmp_path, code)
    with anyio.fail_after(60):
        result = await anyio.run_process(
            ["bash", "-c", WITH_SDK, str(script), str(SDK)],
            env=job_env(url, token, execution_id), cwd=tmp_path, check=False,
        )  # fmt: skip
    return result.returncode, result.stdout.decode(), result.stderr.decode()


# -- the file ------------------------------------------------------------------------------


async def test_syntax_and_shellcheck() -> None:
    result = await anyio.run_process(["bash", "-n", str(SDK)], check=False)
    assert result.returncode == 0, result.stderr.decode()
    if shutil.which("shellcheck"):
        result = await anyio.run_process(["shellcheck", str(SDK)], check=False)
        assert result.returncode == 0, result.stdout.decode()


async def test_sourcing_only_defines_functions(tmp_path: Path) -> None:
    """A script's shell after sourcing: same options, same variables, nothing printed; every
    helper and its camelCase alias defined."""
    script = write_script(tmp_path, """
        set -euo pipefail
        options=$(set -o; shopt -p)
        variables=$(compgen -v | grep -v -e '^options$' -e '^PIPESTATUS$' -e '^BASH_' | sort)
        . "$1"
        [[ $(set -o; shopt -p) == "$options" ]] || { echo "options changed"; exit 1; }
        now=$(compgen -v | grep -v -e '^options$' -e '^variables$' -e '^PIPESTATUS$' -e '^BASH_' \\
            | sort)
        [[ $now == "$variables" ]] || { diff <(echo "$variables") <(echo "$now"); exit 1; }
        compgen -A function | sort | tr '\\n' ' '
    """)  # fmt: skip
    result = await anyio.run_process(
        ["bash", str(script), str(SDK)], env=job_env(None, None, None), check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    defined = set(result.stdout.decode().split())
    helpers = {
        "input", "output", "get_variable", "set_variable", "set_condition", "get_condition",
        "event", "event_field", "execute_tool_action", "variable_exists", "delete_variable",
        "increment_variable", "append_variable",
    }  # fmt: skip
    camel = {"cronium" + "".join(part.title() for part in name.split("_")) for name in helpers}
    public = {f for f in defined if not f.startswith("_cronium_")}
    assert public == {f"cronium_{name}" for name in helpers} | camel
    assert result.stderr == b""


async def test_outside_a_job(tmp_path: Path) -> None:
    code, out, err = await run_bash(
        """
        cronium_input; echo "input $?"
        CRONIUM_EXECUTION_ID=e1 cronium_get_condition; echo "condition $?"
        cronium_output '{"a":' ; echo "output $?"
        cronium_set_condition maybe; echo "set_condition $?"
        cronium_get_variable; echo "get_variable $?"
        """,
        tmp_path, url=None, token=None, execution_id=None,
    )  # fmt: skip
    assert code == 0, err
    assert out.split("\n") == [
        "input 2", "condition 2", "output 2", "set_condition 2", "get_variable 2", "",
    ]  # fmt: skip
    assert err.splitlines() == [
        "cronium: cronium_input: CRONIUM_EXECUTION_ID is not set: is this script running as a "
        "Cronium job?",
        "cronium: cronium_get_condition: CRONIUM_RUNTIME_API is not set: is this script running "
        "as a Cronium job?",
        'cronium: cronium_output: not one JSON value (a string needs quotes: "\\"text\\"")',
        "cronium: usage: cronium_set_condition true|false",
        "cronium: usage: cronium_get_variable KEY",
    ]


# -- against the runtime API -----------------------------------------------------------------


async def test_script_round_trip(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job(input={"rows": [1, 2, 3]})
    code, out, err = await run_bash(
        """
        set -euo pipefail
        shopt -s inherit_errexit
        data=$(cronium_input)
        cronium_output "$(jq -c '{count: (.rows | length), text: "größe \\"q\\" \\\\ \\n"}' \\
            <<<"$data")"
        before=$(cronium_get_condition)
        cronium_set_condition true
        after=$(croniumGetCondition)
        jq -cn --arg b "$before" --arg a "$after" --argjson ctx "$(cronium_event)" \\
            --arg name "$(cronium_event_field .event.name)" \\
            --arg attempt "$(croniumEventField execution.attempt)" \\
            --arg missing "$(cronium_event_field .no.such)" \\
            '{before: $b, after: $a, ctx: $ctx, name: $name, attempt: $attempt, missing: $missing}'
        """,
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["before"] == "false" and result["after"] == "true"
    assert result["ctx"]["execution"] == {
        "id": job.id, "attempt": 1, "trigger": "manual",
        "started_at": rt.clock.now().isoformat(),
    }  # fmt: skip
    assert result["name"] == result["ctx"]["event"]["name"] == "ev1"
    assert result["attempt"] == "1" and result["missing"] == "null"
    stored = await rt.queue.get(job.id)
    assert stored.output == {"count": 3, "text": 'größe "q" \\ \n'}
    assert stored.condition is True
    assert err == "" and token not in out


async def test_output_from_stdin_and_odd_values(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job()
    code, out, err = await run_bash(
        """
        set -euo pipefail
        printf '%s' '"just a string"' | cronium_output
        cronium_output '  [1, 2.5, null, {"@": "x"}] '
        cronium_output '1 2' || echo "two values: $?"
        croniumSetCondition 0
        """,
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == "two values: 2"
    stored = await rt.queue.get(job.id)
    assert stored.output == [1, 2.5, None, {"@": "x"}] and stored.condition is False


async def test_revoked_token_is_an_error_without_the_token(rt: Runtime, tmp_path: Path) -> None:
    job, token = await rt.running_job()
    assert job.lease_id is not None
    await rt.engine.finish_job(job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0)
    code, out, err = await run_bash(
        """
        set -euo pipefail
        cronium_output '{"a": 1}'
        echo "not reached"
        """,
        tmp_path, url=rt.url, token=token, execution_id=job.id,
    )  # fmt: skip
    assert code == 3 and out == ""
    assert err == (
        "cronium: cronium_output: HTTP 401 unauthorized: "
        "missing, invalid, expired or revoked execution token\n"
    )
    assert token not in err


# -- under the local executor, through Cronium -----------------------------------------------


@pytest.fixture
async def cr(db_url: str) -> AsyncIterator[Cronium]:
    async with Cronium(db_url, executors=["local"], scheduler=False, poll_interval=0.2) as cr:
        yield cr


def bash(code: str) -> Script:
    return Script(language="bash", code=textwrap.dedent(code))


async def test_bash_script_under_the_local_executor(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="bash-sdk", action=bash(
        """
        set -euo pipefail
        data=$(cronium_input)
        name=$(cronium_event_field .event.name)
        attempt=$(cronium_event_field .execution.attempt)
        id=$(cronium_event_field .execution.id)
        same=no
        [[ $id == "$CRONIUM_EXECUTION_ID" ]] && same=yes
        echo "attempt $attempt of $name, same id: $same"
        cronium_output "$(jq -c --arg n "$name" '{double: (.x * 2), name: $n}' <<<"$data")"
        before=$(cronium_get_condition)
        cronium_set_condition true
        echo "condition $before -> $(cronium_get_condition)"
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id, input={"x": 21})).id, timeout=30)
    logs = [(ln.stream, ln.text) for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {"double": 42, "name": "bash-sdk"}
    assert done.condition is True
    assert logs == [
        (Stream.STDOUT, "attempt 1 of bash-sdk, same id: yes"),
        (Stream.STDOUT, "condition false -> true"),
    ]


async def test_variables_under_the_local_executor(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="bash-variables", action=bash(
        """
        set -euo pipefail
        k=sdk_bash_counter
        echo "missing $(cronium_get_variable $k)"
        cronium_variable_exists $k || echo "exists $?"
        echo "incremented $(cronium_increment_variable $k) $(croniumIncrementVariable $k 2.5)"
        cronium_variable_exists $k && echo "exists 0"
        cronium_set_variable list '["a"]'
        cronium_append_variable list '{"b": 1}'
        echo "list $(cronium_get_variable list)"
        cronium_delete_variable $k
        echo "deleted $(cronium_get_variable $k)"
        cronium_variable_exists $k || echo "exists $?"
        cronium_set_variable CRONIUM_X 1 2>/dev/null || echo "reserved $?"
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    logs = [ln.text for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert logs == [
        "missing null", "exists 1", "incremented 1 3.5", "exists 0",
        'list ["a",{"b":1}]', "deleted null", "exists 1", "reserved 3",
    ]  # fmt: skip
    assert (await cr.variables.get(ev.owner, "list")).value == ["a", {"b": 1}]
    assert (await cr.variables.get(ev.owner, "sdk_bash_counter")).value is None


async def test_failed_call_fails_the_job(cr: Cronium) -> None:
    ev = await cr.events.add(Event(name="bash-bad", action=bash(
        """
        set -e
        cronium_output 'not json'
        echo "not reached"
        """
    )))  # fmt: skip
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    logs = [(ln.stream, ln.text) for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.FAILED and done.exit_code == 2, logs
    assert (Stream.STDERR, 'cronium: cronium_output: not one JSON value (a string needs quotes: '
            '"\\"text\\"")') in logs  # fmt: skip
    assert (Stream.STDOUT, "not reached") not in logs


async def test_workflow_passes_output_between_bash_and_node(cr: Cronium) -> None:
    produce = await cr.events.add(Event(name="produce", action=bash(
        """
        set -euo pipefail
        n=$(cronium_input | jq .n)
        cronium_output "$(jq -cn --argjson n "$n" '{items: [range($n)]}')"
        cronium_set_condition "$( ((n > 2)) && echo true || echo false)"
        """
    )))  # fmt: skip
    count = await cr.events.add(Event(name="count", action=Script(language="node", code=(
        "const c = require('cronium');\n"
        "c.input().then((d) => c.output({\n"
        "  count: d.items.length, sum: d.items.reduce((a, b) => a + b, 0) }));\n"
    ))))  # fmt: skip
    report = await cr.events.add(Event(name="report", action=bash(
        """
        set -euo pipefail
        input=$(cronium_input)
        echo "node $(cronium_event_field .workflow.node_id) got $input"
        cronium_output "$input"
        """
    )))  # fmt: skip
    wf = await cr.workflows.add(Workflow(
        name="bash-node",
        nodes=[Node(id="produce", event_id=produce.id), Node(id="count", event_id=count.id),
               Node(id="report", event_id=report.id)],
        edges=[Edge(source="produce", target="count", kind=EdgeKind.ON_CONDITION),
               Edge(source="count", target="report", kind=EdgeKind.ON_SUCCESS)],
    ))  # fmt: skip
    big = await cr.workflows.wait((await cr.workflows.run(wf.id, {"n": 4})).id, 60)
    small = await cr.workflows.wait((await cr.workflows.run(wf.id, {"n": 1})).id, 60)
    assert big.status == small.status == "succeeded"
    assert big.nodes["produce"].output == {"items": [0, 1, 2, 3]}
    assert big.nodes["count"].output == {"count": 4, "sum": 6}
    assert big.nodes["report"].output == {"count": 4, "sum": 6}
    report_job = big.nodes["report"].job_id
    assert report_job is not None
    logs = [ln.text for ln in await cr.jobs.logs(report_job)]
    [line] = logs
    prefix, _, seen = line.partition(" got ")
    assert prefix == "node report" and json.loads(seen) == {"count": 4, "sum": 6}
    assert small.nodes["count"].status is NodeStatus.SKIPPED


# -- retries, timeouts, failures ---------------------------------------------------------------


async def test_retries_5xx_then_succeeds(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [UNAVAILABLE, UNAVAILABLE, SUCCESS]
    code, out, err = await run_bash(
        FAST + "cronium_input\n",
        tmp_path, url=stand_in.url + "/", token=FAKE_TOKEN, execution_id="exec/1 ü",
    )  # fmt: skip
    assert code == 0, err
    assert out == '{"ok":1}\n' and err == ""
    expected = ("GET", "/executions/exec%2F1%20%C3%BC/input", f"Bearer {FAKE_TOKEN}")
    assert stand_in.requests == [expected] * 3


async def test_gives_up_after_the_tries(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [(502, b"<html>bad gateway</html>"), UNAVAILABLE]
    code, out, err = await run_bash(
        FAST + "CRONIUM_SDK_ATTEMPTS=3\ncronium_output '{\"a\": 1}' || echo $?\n",
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out == "3\n"
    assert err == "cronium: cronium_output: HTTP 503 unavailable: try later\n"
    assert stand_in.bodies == [{"data": {"a": 1}}] * 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 429])
async def test_4xx_is_not_retried(stand_in: StandIn, tmp_path: Path, status: int) -> None:
    stand_in.answers = [(status, {"success": False, "error": "nope", "message": "refused"})]
    code, out, err = await run_bash(
        FAST + "cronium_set_condition true || echo $?\n",
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out == "3\n"
    assert err == f"cronium: cronium_set_condition: HTTP {status} nope: refused\n"
    assert len(stand_in.requests) == 1
    assert stand_in.bodies == [{"condition": True}]


async def test_success_false_is_an_error(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [(200, {"success": False, "error": "odd", "message": "said no"})]
    code, out, err = await run_bash(
        "cronium_event || echo $?\n", tmp_path, url=stand_in.url, token=FAKE_TOKEN,
        execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out == "3\n" and err == "cronium: cronium_event: HTTP 200 odd: said no\n"


async def test_variable_helpers(stand_in: StandIn, tmp_path: Path) -> None:
    """What the variable helpers send and make of the answers (the real endpoint: see
    test_variables_under_the_local_executor)."""
    missing = (404, {"success": False, "error": "not_found", "message": "no such variable"})

    def value(v: Any) -> tuple[int, Any]:
        return 200, {"success": True, "data": {"key": "k", "value": v}}

    done = (200, {"success": True, "data": None})
    stand_in.answers = [
        missing,  # get_variable
        missing, value(None), value(0),  # variable_exists x3
        missing, done, value(41), done,  # increment_variable x2
        value("x"),  # increment a string
        value(["a"]), done, missing, done,  # append_variable x2
        value({}),  # append to an object
        done,  # delete_variable
        done,
    ]  # fmt: skip
    code, out, err = await run_bash(
        """
        set -u
        echo "get $(cronium_get_variable 'my key/ü')"
        for i in 1 2 3; do cronium_variable_exists k; echo "exists $?"; done
        echo "inc $(cronium_increment_variable k)"
        echo "inc $(cronium_increment_variable k -2.5)"
        cronium_increment_variable k; echo "inc string $?"
        cronium_increment_variable k two; echo "inc by two $?"
        cronium_append_variable k '{"b":[1]}'; cronium_append_variable k 7; echo "append $?"
        cronium_append_variable k 1; echo "append to object $?"
        cronium_delete_variable k; echo "delete $?"
        croniumSetVariable k '"text"'; echo "set $?"
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "get null", "exists 1", "exists 1", "exists 0", "inc 1", "inc 38.5",
        "inc string 2", "inc by two 2", "append 0", "append to object 2", "delete 0", "set 0",
    ]  # fmt: skip
    assert err.splitlines() == [
        'cronium: cronium_increment_variable: k is not a number: "x"',
        "cronium: cronium_increment_variable: BY is not a number: two",
        "cronium: cronium_append_variable: k is not an array: {}",
    ]
    paths = [(method, path) for method, path, _ in stand_in.requests]
    assert paths[0] == ("GET", "/executions/e1/variables/my%20key%2F%C3%BC")
    sent = zip(paths, stand_in.bodies, strict=True)
    puts = [body for (method, _), body in sent if method == "PUT"]
    assert puts == [
        {"value": 1}, {"value": 38.5}, {"value": ["a", {"b": [1]}]}, {"value": [7]},
        {"value": None}, {"value": "text"},
    ]  # fmt: skip


async def test_tool_actions(stand_in: StandIn, tmp_path: Path) -> None:
    # a 500 may come after the action ran; a 503 means it was not taken
    stand_in.answers = [
        (500, {"success": False, "error": "boom", "message": "boom"}),
        UNAVAILABLE, SUCCESS, SUCCESS,
    ]  # fmt: skip
    code, out, err = await run_bash(
        FAST + """
        cronium_execute_tool_action email send '{"to": "a@example.invalid"}'; echo "500 $?"
        cronium_execute_tool_action slack send '{"message": "hi"}'; echo "503 $?"
        croniumExecuteToolAction x y; echo "no config $?"
        cronium_execute_tool_action x y '[1]'; echo "array config $?"
        """,
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        "500 3", '{"ok":1}', "503 0", '{"ok":1}', "no config 0", "array config 2",
    ]  # fmt: skip
    assert err.splitlines() == [
        "cronium: cronium_execute_tool_action: HTTP 500 boom",
        "cronium: cronium_execute_tool_action: CONFIG_JSON is not a JSON object",
    ]
    email = {"tool": "email", "action": "send", "config": {"to": "a@example.invalid"}}
    slack = {"tool": "slack", "action": "send", "config": {"message": "hi"}}
    assert stand_in.bodies == [email, slack, slack, {"tool": "x", "action": "y", "config": {}}]
    assert {path for _, path, _ in stand_in.requests} == {"/tool-actions/execute"}


async def test_timeout(stand_in: StandIn, tmp_path: Path) -> None:
    stand_in.answers = [SUCCESS]
    stand_in.delay = 1.0
    code, out, err = await run_bash(
        FAST + "CRONIUM_SDK_TIMEOUT=0.2 CRONIUM_SDK_ATTEMPTS=2 cronium_input || echo $?\n",
        tmp_path, url=stand_in.url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out == "5\n"
    assert err == (
        f"cronium: cronium_input: the Cronium runtime API at {stand_in.url} did not answer "
        "within 0.2 s (2 tries)\n"
    )
    assert len(stand_in.requests) == 2


async def test_connection_refused_after_retries(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    code, out, err = await run_bash(
        "CRONIUM_SDK_BACKOFF=0.05 cronium_get_condition || echo $?\n",
        tmp_path, url=url, token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    elapsed = time.monotonic() - start
    assert out == "4\n"
    assert err == (
        f"cronium: cronium_get_condition: cannot reach the Cronium runtime API at {url} "
        "(4 tries): curl error 7 (could not connect)\n"
    )
    assert elapsed >= (0.05 + 0.1 + 0.2) / 2  # three backoffs, at least half each


async def test_bad_settings(tmp_path: Path) -> None:
    code, out, err = await run_bash(
        """
        CRONIUM_EXECUTION_TOKEN='bad"token' cronium_input; echo $?
        CRONIUM_RUNTIME_API=ftp://x cronium_input; echo $?
        CRONIUM_SDK_ATTEMPTS=0 cronium_input; echo $?
        """,
        tmp_path, url="http://127.0.0.1:9", token=FAKE_TOKEN, execution_id="e1",
    )  # fmt: skip
    assert code == 0, err
    assert out.split() == ["2", "2", "2"]
    lines = err.splitlines()
    assert lines[0] == "cronium: cronium_input: CRONIUM_EXECUTION_TOKEN is malformed"
    assert lines[1] == "cronium: cronium_input: CRONIUM_RUNTIME_API is not an http(s) URL: ftp://x"
    assert lines[2].startswith("cronium: cronium_input: CRONIUM_SDK_ATTEMPTS must be")


def command_lines() -> dict[int, bytes]:
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone, or not ours to read
                lines[int(entry.name)] = (entry / "cmdline").read_bytes()
    return lines


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_token_is_on_no_command_line(stand_in: StandIn, tmp_path: Path) -> None:
    """While curl waits for a slow answer, no process shows the token in its command line
    (which ``ps`` shows to every user); nor does any output, on success or on error."""
    stand_in.answers = [SUCCESS, (403, {"success": False, "error": "forbidden", "message": "no"})]
    stand_in.delay = 1.0
    script = write_script(tmp_path, "cronium_output '{\"big\": true}'; cronium_input\n")
    env = job_env(stand_in.url, FAKE_TOKEN, "e1")
    async with await anyio.open_process(
        ["bash", "-c", WITH_SDK, str(script), str(SDK)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        with anyio.fail_after(10):
            while not stand_in.requests:
                await anyio.sleep(0.01)
        seen = command_lines()
        stand_in.delay = 0
        assert process.stdout is not None and process.stderr is not None
        with anyio.fail_after(30):
            await process.wait()
            out = b"".join([chunk async for chunk in process.stdout])
            err = b"".join([chunk async for chunk in process.stderr])
    ours = f"{stand_in.url}/executions/e1/output".encode()
    curl = [line for line in seen.values() if ours in line]
    assert len(curl) == 1 and curl[0].startswith(b"curl\0")  # the request was in flight
    assert [pid for pid, line in seen.items() if b"s3cr3t" in line] == []
    assert process.returncode == 3
    assert err == b"cronium: cronium_input: HTTP 403 forbidden: no\n" and out == b""
    assert stand_in.requests[0][2] == f"Bearer {FAKE_TOKEN}"
