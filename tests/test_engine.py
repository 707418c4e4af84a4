"""The front door end to end with a scripted executor: runs, retries, timeouts, cancellation,
workflows (branches, joins, conditions), conditional actions — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import attrs
import pytest

from cronium_core import (
    ConditionalAction,
    Cronium,
    Edge,
    EdgeKind,
    Event,
    EventStatus,
    JobStatus,
    Node,
    NodeStatus,
    RetryPolicy,
    Stream,
    ValidationError,
    Workflow,
)
from cronium_core.testing import ScriptedPlugin, scripted

pytestmark = pytest.mark.anyio


@pytest.fixture
async def cr(db_url: str) -> AsyncIterator[Cronium]:
    async with Cronium(
        db_url,
        plugins=[ScriptedPlugin()],
        executors=["scripted"],
        max_jobs=8,
        poll_interval=0.2,
        scheduler=False,
    ) as cr:
        yield cr


async def ev(cr: Cronium, name: str, **spec: object) -> Event:
    extra = spec.pop("event", {})
    assert isinstance(extra, dict)
    return await cr.events.add(
        Event(name=name, action=scripted(**spec), executor="scripted", **extra)
    )


async def test_run_wait_output_and_logs(cr: Cronium) -> None:
    e = await ev(cr, "hello", lines=["one", "two"], echo_input=True, output={"n": 1})
    job = await cr.run(e.id, input={"x": 1})
    done = await cr.jobs.wait(job.id, timeout=10)
    assert done.status is JobStatus.SUCCEEDED and done.output == {"n": 1} and done.exit_code == 0
    assert [(ln.stream, ln.text) for ln in await cr.jobs.logs(job.id)] == [
        (Stream.STDOUT, "one"),
        (Stream.STDOUT, "two"),
        (Stream.STDOUT, '{"x": 1}'),
    ]
    followed = [ln.text async for ln in cr.jobs.follow(job.id)]
    assert followed == ["one", "two", '{"x": 1}']
    rec = await cr.events.record(e.id)
    assert (rec.runs_total, rec.runs_succeeded, rec.runs_failed) == (1, 1, 0)


async def test_retries_then_success(cr: Cronium) -> None:
    e = await ev(
        cr,
        "flaky",
        fail_attempts=2,
        event={"retry": RetryPolicy(max_attempts=3, backoff_base=0.05)},
    )
    job = await cr.run(e.id)
    done = await cr.jobs.wait(job.id, timeout=15)
    assert done.status is JobStatus.SUCCEEDED and done.attempt == 3


async def test_failure_after_attempts(cr: Cronium) -> None:
    e = await ev(cr, "broken", exit=3, event={"retry": RetryPolicy(max_attempts=2, backoff_base=0)})
    done = await cr.jobs.wait((await cr.run(e.id)).id, timeout=15)
    assert done.status is JobStatus.FAILED and done.attempt == 2 and done.exit_code == 3
    assert done.error == "exit code 3"


async def test_timeout_enforced_by_worker(cr: Cronium) -> None:
    e = await ev(cr, "slow", sleep=30, event={"timeout": 0.3})
    with anyio.fail_after(10):
        done = await cr.jobs.wait((await cr.run(e.id)).id, timeout=10)
    assert done.status is JobStatus.TIMED_OUT and "timed out" in (done.error or "")
    logs = await cr.jobs.logs(done.id)
    assert logs[-1].stream is Stream.SYSTEM and "timed out" in logs[-1].text


async def test_cancel_reaches_running_job(cr: Cronium) -> None:
    e = await ev(cr, "long", sleep=30)
    job = await cr.run(e.id)
    with anyio.fail_after(10):
        while (await cr.jobs.get(job.id)).status is not JobStatus.RUNNING:
            await anyio.sleep(0.02)
        await cr.jobs.cancel(job.id)
        done = await cr.jobs.wait(job.id, timeout=10)
    assert done.status is JobStatus.CANCELLED


async def test_cancel_queued_job(db_url: str) -> None:
    async with Cronium(db_url, worker=False, scheduler=False) as cr:
        e = await cr.events.add(Event(name="never", action=scripted(), executor="scripted"))
        job = await cr.run(e.id)
        assert (await cr.jobs.cancel(job.id)).status is JobStatus.CANCELLED


async def branch_workflow(cr: Cronium, **measure: object) -> Workflow:
    m = await ev(cr, "measure", **measure)
    ok = await ev(cr, "ok", output_input=True)
    bad = await ev(cr, "bad", output={"alerted": True})
    cond = await ev(cr, "cond", output_input=True)
    always = await ev(cr, "always", output={"cleanup": True})
    return await cr.workflows.add(
        Workflow(
            name="branches",
            nodes=[
                Node(id="measure", event_id=m.id),
                Node(id="ok", event_id=ok.id),
                Node(id="bad", event_id=bad.id),
                Node(id="cond", event_id=cond.id),
                Node(id="always", event_id=always.id),
            ],
            edges=[
                Edge(source="measure", target="ok", kind=EdgeKind.ON_SUCCESS),
                Edge(source="measure", target="bad", kind=EdgeKind.ON_FAILURE),
                Edge(source="measure", target="cond", kind=EdgeKind.ON_CONDITION),
                Edge(source="measure", target="always", kind=EdgeKind.ALWAYS),
            ],
        )
    )


async def test_workflow_success_and_condition_branches(cr: Cronium) -> None:
    wf = await branch_workflow(cr, output={"reading": 72}, condition=True)
    run = await cr.workflows.wait((await cr.workflows.run(wf.id)).id, timeout=20)
    assert run.status == "succeeded"
    status = {n: r.status for n, r in run.nodes.items()}
    assert status == {
        "measure": NodeStatus.SUCCEEDED,
        "ok": NodeStatus.SUCCEEDED,
        "bad": NodeStatus.SKIPPED,
        "cond": NodeStatus.SUCCEEDED,
        "always": NodeStatus.SUCCEEDED,
    }
    assert run.nodes["ok"].output == {"reading": 72}  # the parent's output became its input
    assert run.nodes["cond"].output == {"reading": 72}
    assert all(run.nodes[n].duration is not None for n in ("measure", "ok", "cond"))


async def test_workflow_failure_branch_handles_failure(cr: Cronium) -> None:
    wf = await branch_workflow(cr, exit=1)
    run = await cr.workflows.wait((await cr.workflows.run(wf.id)).id, timeout=20)
    status = {n: r.status for n, r in run.nodes.items()}
    assert status["measure"] is NodeStatus.FAILED and status["bad"] is NodeStatus.SUCCEEDED
    assert status["ok"] is NodeStatus.SKIPPED and status["cond"] is NodeStatus.SKIPPED
    assert run.status == "succeeded"  # the failure had an ON_FAILURE edge


async def test_unhandled_failure_fails_the_run(cr: Cronium) -> None:
    a = await ev(cr, "a", exit=2)
    b = await ev(cr, "b")
    wf = await cr.workflows.add(
        Workflow(
            name="chain",
            nodes=[Node(id="a", event_id=a.id), Node(id="b", event_id=b.id)],
            edges=[Edge(source="a", target="b")],
        )
    )
    run = await cr.workflows.wait((await cr.workflows.run(wf.id)).id, timeout=20)
    assert run.status == "failed" and "a" in (run.error or "")
    assert run.nodes["b"].status is NodeStatus.SKIPPED


async def test_parallel_branches_join_once(cr: Cronium) -> None:
    root = await ev(cr, "root", output={"seed": 1})
    left = await ev(cr, "left", sleep=0.3, output={"side": "left"})
    right = await ev(cr, "right", sleep=0.3, output={"side": "right"})
    join = await ev(cr, "join", output_input=True)
    wf = await cr.workflows.add(
        Workflow(
            name="diamond",
            nodes=[
                Node(id="root", event_id=root.id),
                Node(id="left", event_id=left.id),
                Node(id="right", event_id=right.id),
                Node(id="join", event_id=join.id),
            ],
            edges=[
                Edge(source="root", target="left"),
                Edge(source="root", target="right"),
                Edge(source="left", target="join"),
                Edge(source="right", target="join"),
            ],
        )
    )
    run = await cr.workflows.wait((await cr.workflows.run(wf.id, {"go": 1})).id, timeout=20)
    assert run.status == "succeeded"
    assert run.nodes["join"].output == {"left": {"side": "left"}, "right": {"side": "right"}}
    left_run, right_run = run.nodes["left"], run.nodes["right"]
    assert left_run.started_at and right_run.started_at and left_run.finished_at
    # the branches overlapped in time: both started before either finished
    assert max(left_run.started_at, right_run.started_at) < min(
        left_run.finished_at, right_run.finished_at or left_run.finished_at
    )
    jobs = await cr.jobs.list(workflow_run_id=run.id)
    assert sorted(j.node_id or "" for j in jobs) == ["join", "left", "right", "root"]


async def test_conditional_actions_and_loop_refusal(cr: Cronium) -> None:
    target = await ev(cr, "notify", output_input=True)
    source = await cr.events.add(
        Event(
            name="source",
            action=scripted(output={"msg": "hi"}),
            executor="scripted",
            conditional_actions=[
                ConditionalAction(when="on_success", run_event=target.id),
                ConditionalAction(when="on_failure", run_event="nonexistent"),
            ],
        )
    )
    done = await cr.jobs.wait((await cr.run(source.id)).id, timeout=10)
    assert done.status is JobStatus.SUCCEEDED
    with anyio.fail_after(10):
        while not (jobs := await cr.jobs.list(event_id=target.id)) or not jobs[0].status.finished:
            await anyio.sleep(0.05)
    assert jobs[0].output == {"msg": "hi"} and jobs[0].trigger == "action"
    assert len(jobs) == 1
    looping = attrs.evolve(
        target, conditional_actions=[ConditionalAction(when="always", run_event=source.id)]
    )
    with pytest.raises(ValidationError, match="would loop: notify -> source -> notify"):
        await cr.events.update(looping)


async def test_max_runs_pauses_event(cr: Cronium) -> None:
    e = await ev(cr, "twice", event={"max_runs": 2})
    for _ in range(2):
        await cr.jobs.wait((await cr.run(e.id)).id, timeout=10)
    assert (await cr.events.get(e.id)).status is EventStatus.PAUSED
