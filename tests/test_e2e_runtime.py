"""Issue 3's end-to-end check, in each language: a real script run by the local executor (and,
unchanged, by the docker and podman executors in hardened containers)
reads its input, reads and writes variables (a secret one too), reads its context, calls the
webhook tool (a local recording server stands in for the outside service), sets the
condition that routes its workflow, and writes an output that the next node receives. The
secret never appears in the stored log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cronium_core import (
    Cronium,
    Edge,
    EdgeKind,
    Event,
    JobStatus,
    Node,
    NodeStatus,
    Script,
    Workflow,
)
from cronium_runtime.server import serve
from tests.containers import container_cronium, engine_params, require

pytestmark = pytest.mark.anyio
SECRET = "hunter2-very-secret"

PYTHON = """
import cronium
data = cronium.input()
ctx = cronium.event()
token = cronium.get_variable("api_token")
print("token is", token)
count = (cronium.get_variable("runs") or 0) + 1
cronium.set_variable("runs", count)
hook = cronium.execute_tool_action("webhook", "send", {"url": data["hook"], "json": {"lang": "python"}})
cronium.set_condition(data["n"] > 5)
cronium.output({"lang": "python", "n": data["n"], "runs": count, "hook": hook["status"],
                "event": ctx["event"]["name"], "leak": token})
"""

NODE = """
const c = require('cronium');
(async () => {
  const data = await c.input();
  const ctx = await c.event();
  const token = await c.getVariable('api_token');
  console.log('token is', token);
  const count = ((await c.getVariable('runs')) || 0) + 1;
  await c.setVariable('runs', count);
  const hook = await c.executeToolAction('webhook', 'send', { url: data.hook, json: { lang: 'node' } });
  await c.setCondition(data.n > 5);
  await c.output({ lang: 'node', n: data.n, runs: count, hook: hook.status,
                   event: ctx.event.name, leak: token });
})().catch((e) => { console.error(e.message); process.exit(1); });
"""

BASH = """
set -euo pipefail
data=$(cronium_input)
n=$(jq -r .n <<<"$data")
hook_url=$(jq -r .hook <<<"$data")
token=$(cronium_get_variable api_token | jq -r .)
echo "token is $token"
runs=$(cronium_get_variable runs)
count=$(( $( [ "$runs" = null ] && echo 0 || echo "$runs" ) + 1 ))
cronium_set_variable runs "$count"
status=$(cronium_execute_tool_action webhook send "{\\"url\\": \\"$hook_url\\", \\"json\\": {\\"lang\\": \\"bash\\"}}" | jq .status)
if [ "$n" -gt 5 ]; then cronium_set_condition true; else cronium_set_condition false; fi
name=$(cronium_event_field .event.name)
cronium_output "$(jq -n --argjson n "$n" --argjson runs "$count" --argjson hook "$status" \\
  --arg name "$name" --arg leak "$token" \\
  '{lang: "bash", n: $n, runs: $runs, hook: $hook, event: $name, leak: $leak}')"
"""

SCRIPTS = {"python": PYTHON, "node": NODE, "bash": BASH}


class Hooks:
    def __init__(self) -> None:
        self.received: list[Any] = []
        self.url = ""

    async def endpoint(self, request: Request) -> JSONResponse:
        self.received.append(json.loads(await request.body()))
        return JSONResponse({"received": True}, status_code=202)


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    h = Hooks()
    app = Starlette(routes=[Route("/hook", h.endpoint, methods=["POST"])])
    async with anyio.create_task_group() as tg:
        h.url = await tg.start(partial(serve, app)) + "/hook"
        yield h
        tg.cancel_scope.cancel()


@pytest.fixture(params=["local", *engine_params])
def executor(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name != "local":
        require(name)
    return name


@pytest.fixture
async def cr(db_url: str, executor: str) -> AsyncIterator[Cronium]:
    if executor == "local":
        async with Cronium(db_url, executors=["local"], scheduler=False, poll_interval=0.2) as cr:
            yield cr
    else:
        async with container_cronium(db_url, executor) as cr:
            yield cr


@pytest.mark.parametrize("language", ["python", "node", "bash"])
async def test_script_uses_every_runtime_helper(
    cr: Cronium, hooks: Hooks, language: str, executor: str
) -> None:
    owner = f"user-{language}"
    await cr.variables.set(owner, "api_token", SECRET, secret=True)
    await cr.variables.set(owner, "runs", 41)
    step = await cr.events.add(
        Event(
            name=f"step-{language}",
            owner=owner,
            action=Script(language=language, code=SCRIPTS[language]),  # type: ignore[arg-type]
            executor=executor,
        )
    )
    downstream = await cr.events.add(
        Event(
            name=f"next-{language}",
            owner=owner,
            action=Script(
                language="python",
                # no import: the SDK is a global of Python scripts, in containers too
                code="cronium.output({'got': cronium.input()})\n",
            ),
            executor=executor,
        )
    )
    wf = await cr.workflows.add(
        Workflow(
            name=f"wf-{language}",
            owner=owner,
            nodes=[Node(id="step", event_id=step.id), Node(id="next", event_id=downstream.id)],
            edges=[Edge(source="step", target="next", kind=EdgeKind.ON_CONDITION)],
        )
    )
    hot = await cr.workflows.wait(
        (await cr.workflows.run(wf, {"n": 9, "hook": hooks.url})).id, timeout=60
    )
    cold = await cr.workflows.wait(
        (await cr.workflows.run(wf, {"n": 1, "hook": hooks.url})).id, timeout=60
    )
    step_job = await cr.jobs.get(hot.nodes["step"].job_id or "")
    logs = [ln.text for ln in await cr.jobs.logs(step_job.id)]
    assert step_job.status is JobStatus.SUCCEEDED, logs
    expected = {"lang": language, "n": 9, "runs": 42, "hook": 202, "event": f"step-{language}",
                "leak": "***"}  # fmt: skip
    assert step_job.output == expected
    assert step_job.condition is True
    # the condition routed the workflow, and the next node received the output
    assert hot.nodes["next"].status is NodeStatus.SUCCEEDED
    assert hot.nodes["next"].output == {"got": expected}
    assert cold.nodes["next"].status is NodeStatus.SKIPPED
    # variables written by the script, the webhook reached, the secret masked in the log
    assert (await cr.variables.get(owner, "runs")).value == 43
    assert hooks.received == [{"lang": language}, {"lang": language}]
    assert "token is ***" in logs
    for run in (hot, cold):
        for node in run.nodes.values():
            if node.job_id:
                stored = await cr.jobs.logs(node.job_id)
                assert all(SECRET not in ln.text for ln in stored)
