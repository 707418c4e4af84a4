"""The front door: ``Cronium(url)`` puts the store, queue, scheduler, worker and executors
together, and is what the CLI, the web app and the tests use (ARCHITECTURE §2)::

    async with Cronium("sqlite+aiosqlite:///cronium.db") as cr:
        ev = await cr.events.add(Event(name="hello", action=Script(language="python",
                                 code="print('hi')"), schedule=Cron("*/5 * * * *")))
        job = await cr.run(ev.id, input={"x": 1})
        done = await cr.jobs.wait(job.id, timeout=30)
"""

from __future__ import annotations

import builtins
import logging
import math
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import attrs

from .broker import EventBroker, LocalBroker, Notice, PostgresBroker
from .clock import Clock, SystemClock
from .crypto import Cipher
from .datastore import DataStore, EventRecord
from .engine import RunEngine, WorkflowRun, check_action_chain
from .errors import CroniumError, JobWaitTimeout
from .events import Event, EventStatus
from .executors import Executor
from .jobs import Job, JobStatus, LogLine, Trigger
from .plugins import load_executors, make_plugin_manager
from .queue import JobQueue
from .runtime import RuntimeService, parse_keys, runtime_env
from .scheduler import FireRecord, Scheduler
from .tokens import ExecutionTokens, generate_key
from .tools import ToolRegistry, load_tools
from .variables import ValkeyCache, VariableCache, VariableStore
from .worker import Worker
from .workflows import Workflow

__all__ = ["Cronium"]

log = logging.getLogger("cronium")


class Cronium:
    """Everything in one object. ``worker``/``scheduler`` False make a client-only instance
    (the CLI's ``event add``, a web process that only enqueues)."""

    def __init__(
        self,
        url: str = "sqlite+aiosqlite:///cronium.db",
        *,
        clock: Clock | None = None,
        worker: bool = True,
        scheduler: bool = True,
        max_jobs: int = 4,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        reap_interval: float = 5.0,
        executors: Iterable[str] | None = None,
        executor_config: Mapping[str, Mapping[str, Any]] | None = None,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        upgrade: bool = True,
        distributed_broker: bool = True,
        worker_id: str | None = None,
        runtime: bool = True,
        runtime_host: str = "127.0.0.1",
        runtime_port: int = 0,
        runtime_keys: str | None = None,
        runtime_url: str | None = None,
        secret_keys: str | None = None,
        valkey_url: str | None = None,
    ) -> None:
        self.store = DataStore(url=url, clock=clock or SystemClock())
        self.queue = JobQueue(store=self.store, lease_seconds=lease_seconds)
        self.broker: EventBroker = (
            PostgresBroker(dsn=self.store.url)
            if self.store.is_postgres and distributed_broker
            else LocalBroker()
        )
        self.engine = RunEngine(store=self.store, queue=self.queue, broker=self.broker)
        self._want_worker = worker
        self._want_scheduler = scheduler
        self._max_jobs = max_jobs
        self._poll_interval = poll_interval
        self._reap_interval = reap_interval
        self._executor_names = list(executors) if executors is not None else None
        self._executor_config = dict(executor_config or {})
        self._plugins = list(plugins)
        self._load_entry_points = load_entry_points
        self._upgrade = upgrade
        self._worker_id = worker_id
        self._want_runtime = runtime
        self._runtime_host = runtime_host
        self._runtime_port = runtime_port
        keys, kid = parse_keys(
            runtime_keys or os.environ.get("CRONIUM_RUNTIME_KEYS") or "k0:" + generate_key()
        )
        self.tokens = ExecutionTokens(keys, kid, clock=self.store.clock)
        self.cipher = Cipher.from_env(secret_keys)
        cache_url = valkey_url or os.environ.get("CRONIUM_VALKEY_URL")
        self.variables = VariableStore(
            store=self.store,
            cipher=self.cipher,
            cache=VariableCache(shared=ValkeyCache(url=cache_url) if cache_url else None),
        )
        self.tools = ToolRegistry()
        self.runtime = RuntimeService(
            self.queue, self.store, self.tokens, variables=self.variables, tools=self.tools
        )
        #: the runtime API's base URL: a runtime service elsewhere (``runtime_url``), or the
        #: one this worker serves (with a runtime server plugin) once it is served
        self.runtime_url: str | None = runtime_url
        self._external_runtime = runtime_url is not None
        self._stack: AsyncExitStack | None = None
        self.executors: dict[str, Executor] = {}
        self.worker: Worker | None = None
        self.scheduler: Scheduler | None = None
        self.events = EventsAPI(self)
        self.workflows = WorkflowsAPI(self)
        self.jobs = JobsAPI(self)

    @property
    def clock(self) -> Clock:
        return self.store.clock

    async def __aenter__(self) -> Cronium:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self.store.start(stack, upgrade=self._upgrade)
            await self.broker.start(stack)
            pm = make_plugin_manager(
                extra_plugins=self._plugins, load_entry_points=self._load_entry_points
            )
            await self.variables.start(stack)
            load_tools(pm, into=self.tools)
            registry = load_executors(pm)
            names = (
                self._executor_names
                if self._executor_names is not None
                else registry.default_names()
            )
            if self._want_worker:
                for name in names:
                    self.executors[name] = registry.create(name, self._executor_config.get(name))
                    await self.executors[name].start(stack)
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._stop_background, tg)
            want_server = self._want_runtime and not self._external_runtime
            server = pm.hook.cronium_runtime_server() if want_server else None
            if self._want_worker and self.runtime_url is not None:
                for executor in self.executors.values():
                    await executor.runtime_started(self.runtime_url)
            elif self._want_worker and server is not None:
                hosts = [self._runtime_host]
                for executor in self.executors.values():
                    hosts += [h for h in executor.runtime_hosts() if h not in hosts]
                self.runtime_url = await tg.start(
                    partial(server, self.runtime, host=",".join(hosts), port=self._runtime_port),
                    name="cronium runtime API",
                )
                for executor in self.executors.values():
                    await executor.runtime_started(self.runtime_url)
            served_here = self.runtime_url is not None and not self._external_runtime
            if self._want_worker:
                worker_kwargs: dict[str, Any] = {}
                if self._worker_id:
                    worker_kwargs["id"] = self._worker_id
                self.worker = Worker(
                    engine=self.engine,
                    executors=self.executors,
                    max_jobs=self._max_jobs,
                    poll_interval=self._poll_interval,
                    reap_interval=self._reap_interval,
                    secrets=self.variables.secret_values,
                    live=self.runtime.live if served_here else None,
                    runtime_env=runtime_env(self.runtime_url, self.tokens)
                    if self.runtime_url
                    else None,
                    **worker_kwargs,
                )
                await tg.start(self.worker.run, name="cronium worker")
            if self._want_scheduler:
                self.scheduler = Scheduler(engine=self.engine)
                await tg.start(self.scheduler.run, name="cronium scheduler")
        except BaseException:
            await stack.__aexit__(None, None, None)
            raise
        self._stack = stack
        return self

    async def _stop_background(self, tg: anyio.abc.TaskGroup) -> None:
        with anyio.CancelScope(shield=True):
            if self.worker is not None:
                self.worker.stop(graceful=False)
                with anyio.move_on_after(15):
                    await self.worker.wait_stopped()
        tg.cancel_scope.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        try:
            return await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # the background task group wraps an error of the caller's own block; give the
            # caller back the error it raised, not a group around it
            if exc is not None and _leaves(group) == [exc]:
                raise exc from None
            raise

    async def run(
        self,
        event: str | Event,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        priority: int | None = None,
        run_after: datetime | None = None,
        trigger: Trigger = Trigger.MANUAL,
    ) -> Job:
        """Queue a run of an event (by id, name or value) now or at ``run_after``."""
        if not isinstance(event, Event):
            event = await self.store.find_event(event)
        return await self.engine.enqueue(
            event,
            input=input,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            trigger=trigger,
        )


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves += _leaves(error)
        else:
            leaves.append(error)
    return leaves


@attrs.define(eq=False)
class EventsAPI:
    cr: Cronium

    async def add(self, event: Event) -> Event:
        existing = {r.event.id: r.event for r in await self.cr.store.list_events()}
        if event.conditional_actions:
            check_action_chain(existing, event if event.id else attrs.evolve(event, id="(new)"))
        stored = await self.cr.store.add_event(event)
        await self.cr.broker.publish(Notice("schedule.changed"))
        return stored

    async def update(self, event: Event) -> Event:
        existing = {r.event.id: r.event for r in await self.cr.store.list_events()}
        check_action_chain(existing, event)
        stored = await self.cr.store.update_event(event)
        await self.cr.broker.publish(Notice("schedule.changed"))
        return stored

    async def get(self, name_or_id: str) -> Event:
        return await self.cr.store.find_event(name_or_id)

    async def record(self, event_id: str) -> EventRecord:
        return await self.cr.store.get_event_record(event_id)

    async def list(self, *, owner: str | None = None) -> builtins.list[EventRecord]:
        return await self.cr.store.list_events(owner=owner)

    async def remove(self, name_or_id: str) -> None:
        event = await self.get(name_or_id)
        await self.cr.store.remove_event(event.id)

    async def pause(self, name_or_id: str) -> Event:
        event = await self.get(name_or_id)
        return await self.update(attrs.evolve(event, status=EventStatus.PAUSED))

    async def resume(self, name_or_id: str) -> Event:
        event = await self.get(name_or_id)
        return await self.update(attrs.evolve(event, status=EventStatus.ACTIVE))

    async def fires(self, name_or_id: str) -> builtins.list[FireRecord]:
        event = await self.get(name_or_id)
        return await Scheduler(engine=self.cr.engine).fires(event.id)


@attrs.define(eq=False)
class WorkflowsAPI:
    cr: Cronium

    async def add(self, workflow: Workflow) -> Workflow:
        stored = await self.cr.store.add_workflow(workflow)
        await self.cr.broker.publish(Notice("schedule.changed"))
        return stored

    async def get(self, name_or_id: str) -> Workflow:
        return await self.cr.store.get_workflow(name_or_id)

    async def list(self) -> builtins.list[Workflow]:
        return await self.cr.store.list_workflows()

    async def run(
        self, workflow: str | Workflow, input: Any = None, *, trigger: Trigger = Trigger.MANUAL
    ) -> WorkflowRun:
        if not isinstance(workflow, Workflow):
            workflow = await self.get(workflow)
        return await self.cr.engine.start_workflow_run(workflow, input=input, trigger=trigger)

    async def get_run(self, run_id: str) -> WorkflowRun:
        return await self.cr.engine.get_run(run_id)

    async def runs(
        self, workflow: str | None = None, limit: int = 50
    ) -> builtins.list[WorkflowRun]:
        workflow_id = (await self.get(workflow)).id if workflow else None
        return await self.cr.engine.list_runs(workflow_id, limit)

    async def wait(self, run_id: str, timeout: float = 60.0) -> WorkflowRun:
        """Until the run ends; raises :class:`JobWaitTimeout` after ``timeout`` seconds."""
        async with self.cr.broker.subscribe() as notices:
            with anyio.move_on_after(timeout):
                while True:
                    run = await self.get_run(run_id)
                    if run.finished:
                        return run
                    with anyio.move_on_after(0.5):
                        async for notice in notices:
                            if notice.topic == "run.finished" and notice.data.get("id") == run_id:
                                break
        raise JobWaitTimeout(run_id, timeout)


@attrs.define(eq=False)
class JobsAPI:
    cr: Cronium

    async def get(self, job_id: str) -> Job:
        return await self.cr.queue.get(job_id)

    async def list(self, **filters: Any) -> builtins.list[Job]:
        return await self.cr.queue.list(**filters)

    async def cancel(self, job_id: str) -> Job:
        return await self.cr.engine.cancel(job_id)

    async def logs(
        self, job_id: str, *, after: int = 0, limit: int = 10_000
    ) -> builtins.list[LogLine]:
        return await self.cr.queue.read_logs(job_id, after=after, limit=limit)

    async def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Until the job reaches a final status (retries included); raises
        :class:`JobWaitTimeout` after ``timeout`` seconds."""
        async with self.cr.broker.subscribe() as notices:
            with anyio.move_on_after(timeout):
                while True:
                    job = await self.get(job_id)
                    if job.status.finished:
                        return job
                    with anyio.move_on_after(0.5):
                        async for notice in notices:
                            if notice.topic == "job.finished" and notice.data.get("id") == job_id:
                                break
        raise JobWaitTimeout(job_id, timeout)

    async def follow(self, job_id: str, *, poll: float = 0.5) -> AsyncIterator[LogLine]:
        """Every log line of the job, the backlog then live lines, until the job ends:
        no gap, no duplicate (lines are read from the store by sequence number)."""
        seen = 0
        async with self.cr.broker.subscribe(buffer=0 if math.isinf(poll) else 1024) as notices:
            while True:
                job = await self.get(job_id)
                while True:
                    lines = await self.logs(job_id, after=seen, limit=1000)
                    for line in lines:
                        seen = line.seq
                        yield line
                    if len(lines) < 1000:
                        break
                if job.status.finished:
                    return
                with anyio.move_on_after(poll):
                    async for notice in notices:
                        if notice.data.get("id") == job_id and notice.topic in (
                            "job.logs",
                            "job.finished",
                        ):
                            break


__all__ += ["CroniumError", "EventsAPI", "JobStatus", "JobsAPI", "WorkflowsAPI"]
