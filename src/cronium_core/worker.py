"""The worker: claims jobs, runs them through executors, streams their logs, records results.

Per job it runs three things side by side: the executor, a heartbeat that extends the lease
(and notices cancel requests and a lost lease), and a log flusher that writes lines to the
store in batches and announces them on the broker. Timeouts are enforced here: the executor
is cancelled, and must kill what it started (see :mod:`cronium_core.executors`).

Stopping: :meth:`Worker.stop` (first SIGTERM) stops claiming and lets running jobs finish;
:meth:`Worker.stop` with ``graceful=False`` (second SIGTERM) stops running jobs and gives them
back to the queue without counting the attempt.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import attrs
from anyio.abc import TaskStatus

from .attempts import LiveAttempts
from .broker import Notice
from .engine import RunEngine
from .errors import EventNotFound
from .events import Event
from .executors import TOKEN_VARIABLE, UNSET, ExecutionRequest, Executor, Outcome
from .jobs import Job, JobStatus, Stream
from .masking import LineMasker, SecretMasker
from .queue import JobQueue

__all__ = ["Worker"]

log = logging.getLogger("cronium.worker")

#: lines are written to the store at least this often while a job runs
LOG_FLUSH_SECONDS = 0.05
LOG_FLUSH_LINES = 500


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@attrs.define(eq=False)
class _Masking:
    """What one job's logs, output and error are masked with: the job's own runtime token and
    every secret of the owner's seen while it runs. The secrets are read again before each
    batch of lines: one the script sets is masked from that batch on, and a value it changes
    stays masked (its lines may wait in the same batch). The masker is built when first
    needed (its pattern costs ~0.3 ms; a job that prints nothing never needs one)."""

    secrets: Callable[[str], Awaitable[list[str]]] | None
    owner: str | None
    token: str | None
    _known: set[str] | None = attrs.field(default=None, init=False)
    _masker: SecretMasker | None = attrs.field(default=None, init=False)
    #: keeps what it saw of earlier batches across rebuilds of the masker
    _lines: LineMasker = attrs.field(factory=lambda: LineMasker(SecretMasker(())), init=False)

    @property
    def masker(self) -> SecretMasker:
        if self._masker is None:
            token = [self.token] if self.token else []
            self._masker = SecretMasker(sorted(self._known or ()), exact=token)
        return self._masker

    @property
    def lines(self) -> LineMasker:
        self._lines.masker = self.masker
        return self._lines

    async def refresh(self) -> None:
        """The owner's secrets now; the masker rebuilt when they changed. Only the first
        refresh raises: later, the secrets last seen stay in use while the store is away."""
        try:
            secrets = await self.secrets(self.owner) if self.secrets and self.owner else []
        except Exception:
            if self._known is None:
                raise
            log.warning("the secrets of %r could not be read again", self.owner, exc_info=True)
            return
        if self._known is None or not self._known.issuperset(secrets):
            self._known = (self._known or set()).union(secrets)
            self._masker = None  # built again when next needed


@attrs.define(eq=False)
class _Running:
    job: Job
    scope: anyio.CancelScope
    reason: str | None = None  #: why the scope was cancelled: cancelled | lost | shutdown
    #: ``time.monotonic()`` before which the claimed lease is surely ours: when the claim was
    #: *asked* for, plus the lease's length (the database set the lease's end at least that
    #: late); heartbeats extend it in ``LiveAttempts``
    leased_until: float = 0.0


@attrs.define(kw_only=True, eq=False)
class Worker:
    engine: RunEngine
    executors: Mapping[str, Executor]
    id: str = attrs.field(factory=default_worker_id)
    max_jobs: int = 4
    poll_interval: float = 1.0
    reap_interval: float = 5.0
    #: extra env per job (the runtime API URL and the job's token); set by the runtime layer
    runtime_env: Callable[[Job], Mapping[str, str]] | None = None
    #: the secret values of a user (owner -> values), masked out of logs, outputs and errors
    secrets: Callable[[str], Awaitable[list[str]]] | None = None
    #: the runtime API's view of the attempts running here (answered from memory)
    live: LiveAttempts | None = None
    _running: dict[str, _Running] = attrs.field(init=False, factory=dict)
    _wake: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    _stopping: bool = attrs.field(init=False, default=False)
    _stopped: anyio.Event = attrs.field(init=False, factory=anyio.Event)

    @property
    def queue(self) -> JobQueue:
        return self.engine.queue

    @property
    def heartbeat_interval(self) -> float:
        return max(0.05, self.queue.lease_seconds / 3)

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def stop(self, *, graceful: bool = True) -> None:
        """Stop claiming. ``graceful=False`` also stops the running jobs (they are released)."""
        self._stopping = True
        self._wake.set()
        if not graceful:
            for running in self._running.values():
                running.reason = running.reason or "shutdown"
                running.scope.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Work until :meth:`stop`; returns when the last running job has been recorded."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._listen, name=f"worker {self.id} notices")
            tg.start_soon(self._reap_loop, name=f"worker {self.id} reaper")
            task_status.started()
            try:
                async with anyio.create_task_group() as jobs_tg:
                    await self._claim_loop(jobs_tg)
            finally:
                tg.cancel_scope.cancel()
        self._stopped.set()

    async def _claim_loop(self, jobs_tg: anyio.abc.TaskGroup) -> None:
        names = list(self.executors)
        while not self._stopping:
            free = self.max_jobs - len(self._running)
            claimed: list[Job] = []
            if free > 0:
                self._wake = anyio.Event()
                asked = time.monotonic()
                try:
                    claimed = await self.queue.claim(self.id, free, executors=names)
                except Exception:
                    log.exception("claiming failed; retrying")
                    await anyio.sleep(self.poll_interval)
                    continue
                for job in claimed:
                    scope = anyio.CancelScope()
                    leased_until = asked + self.queue.lease_seconds
                    self._running[job.id] = _Running(job, scope, leased_until=leased_until)
                    jobs_tg.start_soon(self._run_job, job, scope, name=f"job {job.id}")
            if claimed and len(claimed) == free:
                await anyio.lowlevel.checkpoint()
                if len(self._running) < self.max_jobs:
                    continue
            with anyio.move_on_after(self.poll_interval):
                await self._wake.wait()

    async def _listen(self, *, task_status: TaskStatus[None]) -> None:
        async with self.engine.broker.subscribe() as notices:
            task_status.started()
            async for notice in notices:
                if notice.topic == "job.queued":
                    self._wake.set()
                elif notice.topic == "job.cancel":
                    running = self._running.get(str(notice.data.get("id")))
                    if running is not None:
                        running.reason = running.reason or "cancelled"
                        running.scope.cancel()

    async def _reap_loop(self) -> None:
        while True:
            try:
                result = await self.engine.reap()
                if result.requeued or result.failed:
                    log.warning(
                        "reaper: %d job(s) of lost workers requeued, %d failed",
                        len(result.requeued),
                        len(result.failed),
                    )
            except Exception:
                log.exception("reaper failed")
            await anyio.sleep(self.reap_interval)

    # -- one job ------------------------------------------------------------------------

    async def _run_job(self, job: Job, scope: anyio.CancelScope) -> None:
        running = self._running[job.id]
        assert job.lease_id is not None
        lines: list[tuple[Stream, Any, str]] = []
        flush_lock = anyio.Lock()
        try:
            try:
                event: Event | None = await self.engine.store.get_event(job.event_id)
            except EventNotFound:
                event = None
            # built first: its token is one more secret of this job's logs and output
            request = self._request(job, event) if event is not None else None
            token = request.env.get(TOKEN_VARIABLE) if request is not None else None
            masking = _Masking(self.secrets, event.owner if event else None, token)
            await masking.refresh()
        except Exception:
            log.exception("job %s: could not be set up; its lease will expire", job.id)
            self._running.pop(job.id, None)
            self._wake.set()
            return
        if self.live is not None:
            self.live.open(job, event.owner if event else "", leased_until=running.leased_until)

        async def flush() -> None:
            # shielded: a batch taken from `lines` must reach the store even when the
            # flusher is cancelled mid-write at the job's end; one writer per job keeps
            # sequence numbers in order (which the split-secret masking relies on too)
            with anyio.CancelScope(shield=True):
                async with flush_lock:
                    if lines:
                        await masking.refresh()  # a secret the script set meanwhile
                        await self._flush(job, lines, masking.lines)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, running, name=f"job {job.id} heartbeat")

                async def emit(stream: Stream, text: str) -> None:
                    lines.append((stream, self.engine.clock.now(), text))
                    if len(lines) >= LOG_FLUSH_LINES:
                        await flush()

                async def flusher() -> None:
                    while True:
                        await anyio.sleep(LOG_FLUSH_SECONDS)
                        await flush()

                tg.start_soon(flusher, name=f"job {job.id} logs")
                status, exit_code, error, output, condition = await self._execute(
                    job, event, request, scope, emit
                )
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await flush()
                attempt = self.live.close(job.id) if self.live is not None else None
                if attempt is not None:
                    # what the script reported through the runtime API (already masked)
                    if attempt.output is not UNSET:
                        output = attempt.output
                    if attempt.condition is not None:
                        condition = attempt.condition
                if error is not None:
                    error = masking.masker.mask(error)
                if output is not UNSET:
                    output = masking.masker.mask_value(output)
                await self._record(running, status, exit_code, error, output, condition)
        except Exception:
            # one job's bookkeeping failing (the database went away, ...) must not take the
            # worker down; the job's lease runs out and the reaper gives it another attempt
            log.exception("job %s: recording its run failed; its lease will expire", job.id)
        finally:
            if self.live is not None:
                self.live.close(job.id)
            self._running.pop(job.id, None)
            self._wake.set()

    async def _execute(
        self,
        job: Job,
        event: Event | None,
        request: ExecutionRequest | None,
        scope: anyio.CancelScope,
        emit: Any,
    ) -> tuple[JobStatus, int | None, str | None, Any, bool | None]:
        running = self._running[job.id]
        if event is None or request is None:
            return JobStatus.FAILED, None, "the event was deleted", UNSET, None
        executor = self.executors.get(job.executor)
        if executor is None or not executor.can_run(event.action):
            return JobStatus.FAILED, None, f"executor {job.executor!r} cannot run it", UNSET, None
        outcome: Outcome | None = None
        with scope:
            with anyio.move_on_after(job.timeout) as timeout_scope:
                try:
                    outcome = await executor.execute(request, emit)
                except Exception as exc:
                    log.exception("executor %s failed on job %s", job.executor, job.id)
                    await emit(
                        Stream.SYSTEM,
                        "executor error: " + "".join(traceback.format_exception_only(exc)).strip(),
                    )
                    return JobStatus.FAILED, None, f"executor error: {exc}", UNSET, None
        if timeout_scope.cancelled_caught:
            await emit(Stream.SYSTEM, f"timed out after {job.timeout:g} s; stopped")
            return JobStatus.TIMED_OUT, None, f"timed out after {job.timeout:g} s", UNSET, None
        if scope.cancelled_caught or outcome is None:
            reason = running.reason or "cancelled"
            if reason == "cancelled":
                await emit(Stream.SYSTEM, "cancelled; stopped")
                return JobStatus.CANCELLED, None, "cancelled", UNSET, None
            return JobStatus.RUNNING, None, reason, UNSET, None  # lost / shutdown: not a result
        status = JobStatus.SUCCEEDED if outcome.succeeded else JobStatus.FAILED
        error = outcome.error
        if error is None and status is JobStatus.FAILED:
            error = f"exit code {outcome.exit_code}"
        return status, outcome.exit_code, error, outcome.output, outcome.condition

    def _request(self, job: Job, event: Event) -> ExecutionRequest:
        env = dict(event.env)
        env.update(
            CRONIUM_EXECUTION_ID=job.id,
            CRONIUM_JOB_ATTEMPT=str(job.attempt),
            CRONIUM_EVENT_ID=event.id,
            CRONIUM_EVENT_NAME=event.name,
        )
        if self.runtime_env is not None:
            env.update(self.runtime_env(job))
        return ExecutionRequest(
            job_id=job.id,
            attempt=job.attempt,
            event_id=event.id,
            event_name=event.name,
            action=event.action,
            input=job.input,
            env=env,
            timeout=job.timeout,
            kill_grace=event.kill_grace,
            options=event.executor_options,
        )

    async def _heartbeat(self, running: _Running) -> None:
        job = running.job
        assert job.lease_id is not None
        while True:
            await anyio.sleep(self.heartbeat_interval)
            asked = time.monotonic()
            try:
                beat = await self.queue.heartbeat(job.id, job.lease_id)
            except Exception:
                log.exception("heartbeat of job %s failed", job.id)
                continue
            if not beat.alive:
                log.warning("job %s: lease lost; stopping this attempt", job.id)
                running.reason = "lost"
                running.scope.cancel()
                return
            if self.live is not None:
                self.live.renew(job.id, job.lease_id, asked + self.queue.lease_seconds)
            if beat.cancel_requested:
                running.reason = running.reason or "cancelled"
                running.scope.cancel()
                return

    async def _flush(
        self, job: Job, lines: list[tuple[Stream, Any, str]], line_masker: LineMasker
    ) -> None:
        if not lines:
            return
        batch = lines[:]
        del lines[: len(batch)]
        texts = line_masker.mask_batch([(stream, text) for stream, _, text in batch])
        batch = [(s, t, text) for (s, t, _), text in zip(batch, texts, strict=True)]
        try:
            stored = await self.queue.append_logs(job.id, job.attempt, batch)
        except Exception:
            log.exception("storing %d log lines of job %s failed", len(batch), job.id)
            return
        if stored:
            await self.engine.broker.publish(
                Notice("job.logs", {"id": job.id, "seq": stored[-1].seq})
            )

    async def _record(
        self,
        running: _Running,
        status: JobStatus,
        exit_code: int | None,
        error: str | None,
        output: Any,
        condition: bool | None,
    ) -> None:
        job = running.job
        assert job.lease_id is not None
        if status is JobStatus.RUNNING:
            if running.reason == "shutdown":
                await self.queue.release(job.id, job.lease_id)
                log.info("job %s released to the queue (worker shutting down)", job.id)
            return
        result = await self.engine.finish_job(
            job.id,
            job.lease_id,
            status=status,
            exit_code=exit_code,
            error=error,
            output=output,
            condition=condition,
        )
        if result is None:
            log.warning("job %s attempt %d: result fenced (lease taken over)", job.id, job.attempt)

    async def start_executors(self, exit_stack: AsyncExitStack) -> None:
        for executor in self.executors.values():
            await executor.start(exit_stack)
