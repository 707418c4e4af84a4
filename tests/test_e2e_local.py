"""End to end with real parts: Cronium with the local executor and the runtime API; Python
scripts read their input, write output and set the condition that routes a workflow."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from cronium_core import (
    Cronium,
    Edge,
    EdgeKind,
    Event,
    JobStatus,
    Node,
    NodeStatus,
    Script,
    Stream,
    Workflow,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def cr(db_url: str) -> AsyncIterator[Cronium]:
    async with Cronium(db_url, executors=["local"], scheduler=False, poll_interval=0.2) as cr:
        yield cr


def py(code: str) -> Script:
    return Script(language="python", code=code)


async def test_python_script_uses_the_runtime_api(cr: Cronium) -> None:
    assert cr.runtime_url is not None and cr.runtime_url.startswith("http://127.0.0.1:")
    ev = await cr.events.add(
        Event(
            name="sdk",
            action=py(
                # no `import cronium`: the SDK is a global of every Python script
                "import os\n"
                "data = cronium.input()\n"
                "ctx = cronium.event()\n"
                "print('attempt', ctx['execution']['attempt'], 'of', ctx['event']['name'])\n"
                "cronium.output({'double': data['x'] * 2, 'global': 'cronium' in globals()})\n"
                "cronium.set_condition(cronium.get_condition() is False)\n"
                "print('token hidden:', 'CRONIUM_EXECUTION_TOKEN' in os.environ)\n"
            ),
        )
    )
    done = await cr.jobs.wait((await cr.run(ev.id, input={"x": 21})).id, timeout=30)
    logs = [(ln.stream, ln.text) for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, logs
    assert done.output == {"double": 42, "global": True}
    assert done.condition is True
    assert (Stream.STDOUT, "attempt 1 of sdk") in logs


async def test_token_dies_with_the_job(cr: Cronium, tmp_path: Path) -> None:
    """A2 (b): the token a script saw is refused as soon as its job has ended."""
    leak = tmp_path / "token"
    ev = await cr.events.add(
        Event(
            name="leak",
            action=py(
                "import os, pathlib\n"
                "e = os.environ\n"
                f"pathlib.Path({str(leak)!r}).write_text(e['CRONIUM_EXECUTION_TOKEN'] + ' '"
                " + e['CRONIUM_RUNTIME_API'] + ' ' + e['CRONIUM_EXECUTION_ID'])\n"
            ),
        )
    )
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    assert done.status is JobStatus.SUCCEEDED
    token, url, job_id = leak.read_text().split()
    env = {
        **os.environ,
        "CRONIUM_EXECUTION_TOKEN": token,
        "CRONIUM_RUNTIME_API": url,
        "CRONIUM_EXECUTION_ID": job_id,
        "PYTHONPATH": str(Path(__file__).parents[1] / "sdk" / "python" / "src"),
    }
    # the API is served by this test's event loop: the probe must not block it
    with anyio.fail_after(60):
        probe = await anyio.run_process(
            [
                sys.executable,
                "-c",
                "import cronium\ntry:\n cronium.input()\nexcept "
                "cronium.CroniumAPIError as e:\n print(e.status_code)",
            ],
            env=env,
            check=False,
        )
    out = probe.stdout.decode() + probe.stderr.decode()
    assert probe.stdout.decode().strip() == "401", out
    assert token not in out
    assert all(token not in ln.text for ln in await cr.jobs.logs(done.id))


async def test_workflow_routed_by_condition_passes_output(cr: Cronium) -> None:
    measure = await cr.events.add(
        Event(
            name="measure",
            action=py(
                "import cronium\nr = cronium.input()['reading']\n"
                "cronium.output({'reading': r})\ncronium.set_condition(r > 50)\n"
            ),
        )
    )
    high = await cr.events.add(
        Event(
            name="high",
            action=py("import cronium\ncronium.output({'alarm': cronium.input()['reading']})\n"),
        )
    )
    report = await cr.events.add(
        Event(
            name="report",
            action=Script(language="bash", code='echo "report for $CRONIUM_EVENT_NAME"'),
        )
    )
    wf = await cr.workflows.add(
        Workflow(
            name="route",
            nodes=[
                Node(id="measure", event_id=measure.id),
                Node(id="high", event_id=high.id),
                Node(id="report", event_id=report.id),
            ],
            edges=[
                Edge(source="measure", target="high", kind=EdgeKind.ON_CONDITION),
                Edge(source="measure", target="report", kind=EdgeKind.ALWAYS),
            ],
        )
    )
    hot = await cr.workflows.wait((await cr.workflows.run(wf.id, {"reading": 90})).id, 60)
    cold = await cr.workflows.wait((await cr.workflows.run(wf.id, {"reading": 10})).id, 60)
    assert hot.status == cold.status == "succeeded"
    assert hot.nodes["high"].status is NodeStatus.SUCCEEDED
    assert hot.nodes["high"].output == {"alarm": 90}
    assert cold.nodes["high"].status is NodeStatus.SKIPPED
    assert hot.nodes["report"].status is cold.nodes["report"].status is NodeStatus.SUCCEEDED
    report_job = hot.nodes["report"].job_id
    assert report_job is not None
    assert [ln.text for ln in await cr.jobs.logs(report_job)] == ["report for report"]


async def test_the_token_and_a_secret_set_while_running_are_masked(cr: Cronium) -> None:
    """A2: the job's own token never reaches its stored logs (printed, or traced by `set -x`
    inside the SDK); K4: a secret the script itself creates or changes while it runs is
    masked from then on, in its logs and in its output, as are the secrets it started with."""
    owner = "masking-user"
    await cr.variables.set(owner, "old", "an-old-secret-value", secret=True)
    ev = await cr.events.add(
        Event(
            name="masks",
            owner=owner,
            action=Script(
                language="bash",
                code=(
                    'echo "token: $CRONIUM_EXECUTION_TOKEN"\n'
                    'echo "old: $(cronium_get_variable old)"\n'
                    # the SDKs set no secret flag: the API does (docs/runtime-api.md)
                    'curl -sf -X PUT -H "Authorization: Bearer $CRONIUM_EXECUTION_TOKEN" '
                    '-d \'{"value": "a-fresh-secret-value", "secret": true}\' '
                    '"$CRONIUM_RUNTIME_API/executions/$CRONIUM_EXECUTION_ID/variables/fresh"'
                    " >/dev/null\n"
                    "cronium_set_variable old '\"the-old-one-changed\"'\n"
                    'echo "fresh: $(cronium_get_variable fresh)"\n'
                    'echo "changed: $(cronium_get_variable old)"\n'
                    "set -x\n"
                    "cronium_get_variable fresh >/dev/null\n"
                    "set +x\n"
                    'cronium_output "{\\"fresh\\": $(cronium_get_variable fresh), '
                    '\\"changed\\": $(cronium_get_variable old)}"\n'
                ),
            ),
        )
    )
    done = await cr.jobs.wait((await cr.run(ev.id)).id, timeout=30)
    lines = [ln.text for ln in await cr.jobs.logs(done.id)]
    assert done.status is JobStatus.SUCCEEDED, lines
    # (the values are printed as JSON)
    assert lines[:4] == ["token: ***", 'old: "***"', 'fresh: "***"', 'changed: "***"']
    assert any("cronium_get_variable fresh" in line for line in lines), "set -x traced it"
    text = "\n".join(lines)
    for leaked in ("eyJ", "an-old-secret-value", "a-fresh-secret-value", "the-old-one-changed"):
        assert leaked not in text
    assert done.output == {"fresh": "***", "changed": "***"}
