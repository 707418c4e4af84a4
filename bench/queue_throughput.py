"""Queue throughput: Cronium's job queue against procrastinate and PgQueuer.

Each run puts N no-op jobs in an empty queue (the *enqueue* phase, one client, in chunks), then
starts workers that claim and complete them until the queue is empty (the *drain* phase). The two
phases are timed apart; *total* is their sum. Every run has a database of its own: a fresh
SQLite file, or a fresh database on the one PostgreSQL server started for the whole benchmark.

What each system does (see ``docs/benchmarks.md`` for the discussion):

- **Cronium** (``JobQueue``): enqueue = ``JobQueue.enqueue_many`` with one chunk per call (one
  statement per chunk on PostgreSQL, one executemany on SQLite). A worker loops
  ``claim(worker_id, limit=B)``, then records the claimed jobs' ends, and stops at the first empty
  claim. Recording is either ``finish_many`` over the whole claimed batch (one call; what a
  worker that drains a claim could do) or ``finish(job_id, lease_id, status=SUCCEEDED)`` per job
  ("finish each"). B = 10 with both, and B = 1 (necessarily one finish per job).
- **procrastinate** (PsycopgConnector, schema from its ``SchemaManager``): enqueue =
  ``Task.batch_defer_async`` with one chunk per call (one statement per chunk). Workers =
  ``App.run_worker_async(concurrency=C, wait=False)``, i.e. one procrastinate worker per process
  that runs C jobs at once; it fetches one job per query (procrastinate has no batch fetch) and
  stops when the queue is empty. Pool size C + 2 (fetcher, listener).
- **PgQueuer** (asyncpg, schema from ``Queries.install()``): enqueue = ``Queries.enqueue`` with
  lists (one statement per chunk). Workers = C ``QueueManager`` instances per process, each on its
  own asyncpg connection, ``run(batch_size=10, mode=drain)`` — the shape of PgQueuer's own
  benchmark tool. PgQueuer buffers completions and writes them in batches.

"Workers" in a layout ``PxC`` means P processes with C concurrent consumers each.

Run from the project root::

    /work/venv/bin/python -m bench.queue_throughput            # 3 rounds, medians; ~3 minutes
    /work/venv/bin/python -m bench.queue_throughput --quick    # smoke check, well under 30 s
    /work/venv/bin/python -m bench.queue_throughput --profile  # where Cronium's time goes
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
from tests.pg import PostgresServer

from bench._common import (
    describe_machine,
    format_table,
    machine_info,
    package_versions,
    percentiles,
    postgres_server,
    write_results,
)

#: jobs per run; 3,000 keeps three rounds of the full matrix within about four minutes on a
#: 2-core machine (procrastinate takes most of it)
DEFAULT_JOBS = 3000
ENQUEUE_CHUNK = 500  #: jobs per enqueue transaction / batch call, for every system
SINGLE_ENQUEUE_JOBS = 1000  #: jobs enqueued one per transaction, for the single-enqueue rate
CHILD_START_TIMEOUT = 120  #: seconds for worker processes to import, connect and report ready

CRONIUM_SQLITE = "cronium-sqlite"
CRONIUM_PG = "cronium-pg"
PROCRASTINATE = "procrastinate"
PGQUEUER = "pgqueuer"
BASELINES = (PROCRASTINATE, PGQUEUER)

LABELS = {
    CRONIUM_SQLITE: "Cronium · SQLite",
    CRONIUM_PG: "Cronium · PostgreSQL",
    PROCRASTINATE: "procrastinate",
    PGQUEUER: "PgQueuer",
}

WorkerRun = Callable[[], Awaitable[int]]


@attrs.frozen(kw_only=True)
class Layout:
    processes: int
    tasks: int  #: concurrent consumers per process

    @property
    def workers(self) -> int:
        return self.processes * self.tasks

    @property
    def label(self) -> str:
        return f"{self.processes}x{self.tasks}"


@attrs.frozen(kw_only=True)
class Setup:
    """One system as configured for a run; ``batch`` is how many jobs a consumer takes at once;
    ``finish_many``: Cronium records a claimed batch's ends with one ``finish_many`` call."""

    system: str
    batch: int
    finish_many: bool = False

    @property
    def label(self) -> str:
        if self.system == PROCRASTINATE:
            return f"{LABELS[self.system]} (fetch 1)"
        if self.system in (CRONIUM_SQLITE, CRONIUM_PG):
            if self.batch == 1:
                return f"{LABELS[self.system]} (claim 1)"
            how = "finish_many" if self.finish_many else "finish each"
            return f"{LABELS[self.system]} (claim {self.batch}, {how})"
        return f"{LABELS[self.system]} (batch {self.batch})"


@attrs.frozen(kw_only=True)
class WorkerSpec:
    """What a worker process needs to know; crosses the process boundary (picklable)."""

    system: str
    url: str
    tasks: int
    batch: int
    finish_many: bool = False


@attrs.frozen(kw_only=True)
class RunResult:
    setup: Setup
    layout: Layout
    jobs: int
    enqueue_s: float
    drain_s: float
    completed: int

    @property
    def total_s(self) -> float:
        return self.enqueue_s + self.drain_s

    @property
    def enqueue_rate(self) -> float:
        return self.jobs / self.enqueue_s

    @property
    def drain_rate(self) -> float:
        return self.jobs / self.drain_s

    @property
    def total_rate(self) -> float:
        return self.jobs / self.total_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.setup.system,
            "setup": self.setup.label,
            "batch": self.setup.batch,
            "finish_many": self.setup.finish_many,
            "processes": self.layout.processes,
            "tasks_per_process": self.layout.tasks,
            "workers": self.layout.workers,
            "jobs": self.jobs,
            "completed": self.completed,
            "enqueue_s": self.enqueue_s,
            "drain_s": self.drain_s,
            "total_s": self.total_s,
            "enqueue_per_s": self.enqueue_rate,
            "drain_per_s": self.drain_rate,
            "total_per_s": self.total_rate,
        }


# -- Cronium ------------------------------------------------------------------------------------


class CroniumTarget:
    """Cronium's ``JobQueue`` on a SQLite file or a PostgreSQL database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> CroniumTarget:
        from cronium_core import Event, Script
        from cronium_core.datastore import DataStore
        from cronium_core.queue import JobQueue

        self.store = DataStore(url=self.url)
        await self.store.start(self._stack, upgrade=True)
        self.queue = JobQueue(store=self.store)
        self.event = await self.store.add_event(
            Event(name="noop", action=Script(language="bash", code="true"))
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def enqueue(self, n: int, chunk: int) -> None:
        for start in range(0, n, chunk):
            await self.queue.enqueue_many([(self.event, {})] * min(chunk, n - start))

    async def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            await self.queue.enqueue(self.event)

    async def outcome(self) -> tuple[int, int]:
        """(completed, left in the queue or running)."""
        from cronium_core import JobStatus

        done = await self.queue.count(JobStatus.SUCCEEDED)
        left = await self.queue.count(JobStatus.QUEUED) + await self.queue.count(JobStatus.RUNNING)
        return done, left


@asynccontextmanager
async def cronium_workers(spec: WorkerSpec) -> AsyncIterator[WorkerRun]:
    from cronium_core import JobStatus
    from cronium_core.datastore import DataStore
    from cronium_core.queue import JobQueue

    async with AsyncExitStack() as stack:
        store = DataStore(url=spec.url)
        await store.start(stack)
        queue = JobQueue(store=store)
        # open the pool's connections now, so that the drain does not pay for connecting
        async with anyio.create_task_group() as tg:
            for _ in range(spec.tasks):
                tg.start_soon(_touch, store)

        async def worker(worker_id: str, counts: list[int]) -> None:
            while True:
                jobs = await queue.claim(worker_id, limit=spec.batch)
                if not jobs:
                    return
                if spec.finish_many:
                    ends = [(j.id, j.lease_id, JobStatus.SUCCEEDED, 0) for j in jobs]
                    results = await queue.finish_many(ends)
                    counts[0] += sum(r is not None for r in results)
                    continue
                for job in jobs:
                    assert job.lease_id is not None
                    result = await queue.finish(
                        job.id, job.lease_id, status=JobStatus.SUCCEEDED, exit_code=0
                    )
                    counts[0] += result is not None

        async def run() -> int:
            counts = [0]
            async with anyio.create_task_group() as tg:
                for i in range(spec.tasks):
                    tg.start_soon(worker, f"bench-{os.getpid()}-{i}", counts, name=f"worker-{i}")
            return counts[0]

        yield run


async def _touch(store: Any) -> None:
    import sqlalchemy as sa

    async with store.read() as conn:
        await conn.execute(sa.text("SELECT 1"))
        await anyio.sleep(0.05)  # hold it, so that the next task opens another connection


# -- procrastinate ------------------------------------------------------------------------------


def _procrastinate_app(conninfo: str, pool_size: int, counts: list[int]) -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=conninfo, min_size=pool_size, max_size=pool_size
        )
    )

    @app.task(name="noop")
    async def noop() -> None:
        counts[0] += 1

    return app


class ProcrastinateTarget:
    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self.counts = [0]

    async def __aenter__(self) -> ProcrastinateTarget:
        self.app = _procrastinate_app(self.conninfo, 2, self.counts)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        self.task = self.app.tasks["noop"]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.app.close_async()

    async def enqueue(self, n: int, chunk: int) -> None:
        for start in range(0, n, chunk):
            await self.task.batch_defer_async(*({} for _ in range(min(chunk, n - start))))

    async def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            await self.task.defer_async()

    async def outcome(self) -> tuple[int, int]:
        rows = await _pg_fetch(
            self.conninfo, "SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1"
        )
        by_status = dict(rows)
        left = by_status.get("todo", 0) + by_status.get("doing", 0)
        return by_status.get("succeeded", 0), left


@asynccontextmanager
async def procrastinate_workers(spec: WorkerSpec) -> AsyncIterator[WorkerRun]:
    counts = [0]
    # C job slots + the fetch loop + the LISTEN connection
    app = _procrastinate_app(spec.url, spec.tasks + 2, counts)
    await app.open_async()
    try:

        async def run() -> int:
            await app.run_worker_async(
                concurrency=spec.tasks,
                wait=False,
                install_signal_handlers=False,
                name=f"bench-{os.getpid()}",
            )
            return counts[0]

        yield run
    finally:
        await app.close_async()


# -- PgQueuer -----------------------------------------------------------------------------------


class PgQueuerTarget:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def __aenter__(self) -> PgQueuerTarget:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.conn = await asyncpg.connect(self.dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))
        await self.queries.install()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.conn.close()

    async def enqueue(self, n: int, chunk: int) -> None:
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            await self.queries.enqueue(["noop"] * k, [None] * k, [0] * k)

    async def enqueue_single(self, n: int) -> None:
        for _ in range(n):
            await self.queries.enqueue("noop", None)

    async def outcome(self) -> tuple[int, int]:
        left = await self.conn.fetchval("SELECT count(*) FROM pgqueuer")
        # completions are moved to pgqueuer_log (and may be folded into statistics later)
        done = await self.conn.fetchval(
            "SELECT count(DISTINCT job_id) FROM pgqueuer_log WHERE status = 'successful'"
        )
        return int(done), int(left)


@asynccontextmanager
async def pgqueuer_workers(spec: WorkerSpec) -> AsyncIterator[WorkerRun]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode

    counts = [0]
    connections = [await asyncpg.connect(spec.url) for _ in range(spec.tasks)]
    try:
        managers = []
        for conn in connections:
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            async def noop(job: Job) -> None:
                counts[0] += 1

            qm.entrypoint("noop")(noop)
            managers.append(qm)

        async def run() -> int:
            async with anyio.create_task_group() as tg:
                for qm in managers:
                    tg.start_soon(_pgqueuer_drain, qm, spec.batch, QueueExecutionMode.drain)
            return counts[0]

        yield run
    finally:
        for conn in connections:
            await conn.close()


async def _pgqueuer_drain(qm: Any, batch: int, mode: Any) -> None:
    await qm.run(batch_size=batch, mode=mode)


async def _pg_fetch(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


WORKERS: dict[str, Callable[[WorkerSpec], Any]] = {
    CRONIUM_SQLITE: cronium_workers,
    CRONIUM_PG: cronium_workers,
    PROCRASTINATE: procrastinate_workers,
    PGQUEUER: pgqueuer_workers,
}


# -- running workers in this process or in several ----------------------------------------------


async def drain_in_process(spec: WorkerSpec) -> tuple[float, int]:
    """Run ``spec.tasks`` consumers here until the queue is empty; (seconds, jobs processed)."""
    async with WORKERS[spec.system](spec) as run:
        start = time.monotonic()
        processed = await run()
        return time.monotonic() - start, processed


def _child_main(spec: WorkerSpec, messages: Any, go: Any) -> None:
    """Entry point of a worker process: get ready, report, wait for the start signal, drain,
    report the time the last job of this process was done."""
    try:
        anyio.run(_child_async, spec, messages, go)
    except BaseException:
        messages.put(("error", os.getpid(), traceback.format_exc()))
        raise


async def _child_async(spec: WorkerSpec, messages: Any, go: Any) -> None:
    async with WORKERS[spec.system](spec) as run:
        messages.put(("ready", os.getpid(), None))
        await anyio.to_thread.run_sync(go.wait)
        processed = await run()
        messages.put(("done", os.getpid(), (time.monotonic(), processed)))


async def drain_in_processes(spec: WorkerSpec, processes: int) -> tuple[float, int]:
    """Run ``processes`` worker processes with ``spec.tasks`` consumers each; the drain starts
    when all of them are connected and ends when the last one has finished its last job."""
    ctx = multiprocessing.get_context("spawn")
    messages = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(target=_child_main, args=(spec, messages, go), name=f"bench-worker-{i}")
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    try:

        def collect(kind: str, deadline: float) -> list[Any]:
            got: list[Any] = []
            while len(got) < processes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"worker processes did not report {kind!r} in time")
                msg_kind, pid, payload = messages.get(timeout=remaining)
                if msg_kind == "error":
                    raise RuntimeError(f"worker process {pid} failed:\n{payload}")
                got.append(payload)
            return got

        await anyio.to_thread.run_sync(collect, "ready", time.monotonic() + CHILD_START_TIMEOUT)
        start = time.monotonic()
        go.set()
        done = await anyio.to_thread.run_sync(collect, "done", time.monotonic() + 600)
        return max(end for end, _ in done) - start, sum(n for _, n in done)
    finally:
        for p in procs:
            await anyio.to_thread.run_sync(p.join, 30)
            if p.is_alive():
                p.kill()


# -- one run ------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class Bench:
    server: PostgresServer
    workdir: Path
    _names: int = 0

    def _fresh_name(self, system: str) -> str:
        self._names += 1
        return f"bench_{system.replace('-', '_')}_{self._names}"

    @asynccontextmanager
    async def target(self, system: str) -> AsyncIterator[tuple[Any, str]]:
        """A fresh, empty queue of ``system``: (the enqueueing client, the workers' URL)."""
        if system == CRONIUM_SQLITE:
            path = self.workdir / f"{self._fresh_name(system)}.db"
            url = f"sqlite+aiosqlite:///{path}"
            async with CroniumTarget(url) as t:
                yield t, url
            for suffix in ("", "-wal", "-shm"):
                await anyio.Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        name = self._fresh_name(system)
        self.server.create_database(name)
        try:
            if system == CRONIUM_PG:
                url = self.server.url_for(name)
                async with CroniumTarget(url) as t:
                    yield t, url
            elif system == PROCRASTINATE:
                url = self.server.url_for(name, driver=None)
                async with ProcrastinateTarget(url) as t:
                    yield t, url
            else:
                url = self.server.url_for(name, driver=None)
                async with PgQueuerTarget(url) as t:
                    yield t, url
        finally:
            self.server.drop_database(name)

    async def run(self, setup: Setup, layout: Layout, jobs: int) -> RunResult:
        async with self.target(setup.system) as (target, url):
            start = time.monotonic()
            await target.enqueue(jobs, ENQUEUE_CHUNK)
            enqueue_s = time.monotonic() - start
            spec = WorkerSpec(
                system=setup.system,
                url=url,
                tasks=layout.tasks,
                batch=setup.batch,
                finish_many=setup.finish_many,
            )
            if layout.processes == 1:
                drain_s, processed = await drain_in_process(spec)
            else:
                drain_s, processed = await drain_in_processes(spec, layout.processes)
            completed, left = await target.outcome()
        if completed != jobs or left or processed != jobs:
            raise RuntimeError(
                f"{setup.label} {layout.label}: {completed} of {jobs} jobs recorded as done, "
                f"{processed} processed, {left} left"
            )
        return RunResult(
            setup=setup,
            layout=layout,
            jobs=jobs,
            enqueue_s=enqueue_s,
            drain_s=drain_s,
            completed=completed,
        )

    async def single_enqueue_rate(self, system: str, jobs: int) -> float:
        async with self.target(system) as (target, _url):
            start = time.monotonic()
            await target.enqueue_single(jobs)
            return jobs / (time.monotonic() - start)


# -- the matrix, the report ---------------------------------------------------------------------


def plan(quick: bool) -> tuple[list[Layout], list[Setup], set[tuple[Setup, Layout]]]:
    """Layouts, setups, and the (setup, layout) pairs to skip to keep the run short."""
    setups = [
        Setup(system=CRONIUM_SQLITE, batch=10, finish_many=True),
        Setup(system=CRONIUM_SQLITE, batch=10),
        Setup(system=CRONIUM_SQLITE, batch=1),
        Setup(system=CRONIUM_PG, batch=10, finish_many=True),
        Setup(system=CRONIUM_PG, batch=10),
        Setup(system=CRONIUM_PG, batch=1),
        Setup(system=PROCRASTINATE, batch=1),
        Setup(system=PGQUEUER, batch=10),
    ]

    def comparison_only(s: Setup) -> bool:
        # Cronium's finish-each and claim-1 rows show what batching is worth; they say the
        # same at every layout, so once (at the first layout) is enough and keeps the run short
        return s.system in (CRONIUM_SQLITE, CRONIUM_PG) and not s.finish_many

    if quick:
        layouts = [Layout(processes=1, tasks=4), Layout(processes=2, tasks=2)]
    else:
        layouts = [
            Layout(processes=1, tasks=4),
            Layout(processes=1, tasks=8),
            Layout(processes=2, tasks=4),
            Layout(processes=4, tasks=2),
        ]
    skip = {(s, lay) for s in setups for lay in layouts[1:] if comparison_only(s)}
    if quick:
        skip |= {(s, layouts[0]) for s in setups if comparison_only(s) and s.batch == 1}
    return layouts, setups, skip


def ratios(results: list[RunResult]) -> dict[int, tuple[float, float]]:
    """Per result (by index): (total-time ratio, drain ratio) against the fastest baseline with
    the same layout; above 1 means faster than the best of procrastinate and PgQueuer."""
    best_total: dict[Layout, float] = {}
    best_drain: dict[Layout, float] = {}
    for r in results:
        if r.setup.system in BASELINES:
            best_total[r.layout] = min(best_total.get(r.layout, float("inf")), r.total_s)
            best_drain[r.layout] = min(best_drain.get(r.layout, float("inf")), r.drain_s)
    return {
        i: (best_total[r.layout] / r.total_s, best_drain[r.layout] / r.drain_s)
        for i, r in enumerate(results)
        if r.layout in best_total
    }


def results_table(results: list[RunResult]) -> str:
    rel = ratios(results)
    rows = []
    for i, r in sorted(
        enumerate(results), key=lambda ir: (ir[1].layout.processes, ir[1].layout.tasks)
    ):
        total_ratio, drain_ratio = rel.get(i, (float("nan"), float("nan")))
        rows.append(
            [
                r.setup.label,
                r.layout.label,
                r.enqueue_rate,
                r.drain_rate,
                r.total_s,
                r.total_rate,
                f"{total_ratio:.2f}x",
                f"{drain_ratio:.2f}x",
            ]
        )
    return format_table(
        [
            "system",
            "workers (PxC)",
            "enqueue/s",
            "drain/s",
            "total s",
            "total jobs/s",
            "vs best baseline (total)",
            "vs best baseline (drain)",
        ],
        rows,
        align="llrrrrrr",
    )


def enqueue_table(results: list[RunResult], single: dict[str, float]) -> str:
    """Per system: the median batched enqueue rate over all its runs (the runs differ only in
    their workers, so every run is one more sample), and the (median) single-job enqueue
    rate."""
    batched: dict[str, list[float]] = defaultdict(list)
    for r in results:
        batched[r.setup.system].append(r.enqueue_rate)
    return format_table(
        [
            "system",
            f"batched enqueue/s (median of runs, {ENQUEUE_CHUNK}/call)",
            "runs",
            "single-job enqueue/s",
        ],
        [[LABELS[s], statistics.median(batched[s]), len(batched[s]), single[s]] for s in single],
    )


def median_run(runs: list[RunResult]) -> RunResult:
    """One figure for repeated runs of a setup and layout: the median enqueue time and the
    median drain time (each on its own)."""
    return attrs.evolve(
        runs[0],
        enqueue_s=statistics.median(r.enqueue_s for r in runs),
        drain_s=statistics.median(r.drain_s for r in runs),
    )


async def benchmark(jobs: int, quick: bool, repeat: int) -> None:
    versions = package_versions(
        [
            "cronium",
            "sqlalchemy",
            "asyncpg",
            "aiosqlite",
            "procrastinate",
            "psycopg",
            "psycopg-pool",
            "pgqueuer",
            "anyio",
        ]
    )
    layouts, setups, skip = plan(quick)
    single_jobs = min(SINGLE_ENQUEUE_JOBS, jobs)
    started = time.monotonic()
    load_before = os.getloadavg()
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="cronium-bench-") as tmp:
        info = machine_info(server)
        print(f"machine: {describe_machine(info)}")
        print(f"jobs per run: {jobs}, enqueue chunk: {ENQUEUE_CHUNK}, rounds: {repeat}")
        bench = Bench(server=server, workdir=Path(tmp))
        # whole rounds, one after the other: a slow spell of the machine then hits every
        # system in some round instead of all the runs of one system
        runs: dict[tuple[Setup, Layout], list[RunResult]] = defaultdict(list)
        singles: dict[str, list[float]] = defaultdict(list)
        for round_ in range(1, repeat + 1):
            for layout in layouts:
                for setup in setups:
                    if (setup, layout) in skip:
                        continue
                    r = await bench.run(setup, layout, jobs)
                    print(
                        f"  [{round_}] {setup.label:<46} {layout.label:>4}"
                        f"  enqueue {r.enqueue_rate:8.0f}/s  drain {r.drain_rate:8.0f}/s"
                        f"  total {r.total_s:6.2f} s",
                        flush=True,
                    )
                    runs[setup, layout].append(r)
            for system in (CRONIUM_SQLITE, CRONIUM_PG, PROCRASTINATE, PGQUEUER):
                singles[system].append(await bench.single_enqueue_rate(system, single_jobs))
        results = [median_run(rs) for rs in runs.values()]
        single = {system: statistics.median(rates) for system, rates in singles.items()}
    elapsed = time.monotonic() - started
    # above ~0.5 the machine was busy with something else (another benchmark) at the start
    info["loadavg_1m_at_start"] = load_before[0]
    print()
    if repeat > 1:
        print(f"(medians of {repeat} rounds)")
    print(results_table(results))
    print()
    print(f"Enqueue (one client; single-job = {single_jobs} jobs, one per call/transaction):")
    print(enqueue_table([r for rs in runs.values() for r in rs], single))
    rel = ratios(results)
    path = write_results(
        "queue_throughput",
        {
            "command": " ".join(["python -m bench.queue_throughput", *sys.argv[1:]]),
            "jobs": jobs,
            "quick": quick,
            "rounds": repeat,
            "enqueue_chunk": ENQUEUE_CHUNK,
            "machine": info,
            "versions": versions,
            "elapsed_s": elapsed,
            "runs": [
                {
                    **r.as_dict(),
                    "ratio_total_vs_best_baseline": rel.get(i, (None, None))[0],
                    "ratio_drain_vs_best_baseline": rel.get(i, (None, None))[1],
                }
                for i, r in enumerate(results)
            ],
            "samples": [r.as_dict() for rs in runs.values() for r in rs],
            "single_enqueue": {"jobs": single_jobs, "per_s": single, "samples": singles},
        },
    )
    print(f"\nwall time {elapsed:.0f} s; results written to {path}")


# -- profiling Cronium ------------------------------------------------------------------------


class CallTimer:
    """Wall time of every statement an engine executes, by kind of statement, and how many pool
    checkouts and transactions there were (SQLAlchemy engine and pool events)."""

    def __init__(self, store: Any) -> None:
        from sqlalchemy import event

        self.times: dict[str, list[float]] = defaultdict(list)
        self.events: dict[str, int] = defaultdict(int)
        # the async engine, and on SQLite the engine of the queue's one-hop transactions
        engines = [store.engine.sync_engine]
        if store.thread_engine is not None:
            engines.append(store.thread_engine)
        for sync in engines:
            event.listen(sync, "before_cursor_execute", self._before)
            event.listen(sync, "after_cursor_execute", self._after)
            for target, name in ((sync, "begin"), (sync, "commit"), (sync.pool, "checkout")):
                event.listen(target, name, self._counter(name))

    @staticmethod
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        elapsed = time.perf_counter() - conn.info["bench_t0"].pop()
        self.times[_statement_kind(statement)].append(elapsed)

    def _counter(self, name: str) -> Callable[..., None]:
        def hook(*args: Any) -> None:
            self.events[name] += 1

        return hook


def _statement_kind(sql: str) -> str:
    words = " ".join(sql.split())
    if words.startswith("WITH cand AS"):
        return "claim: WITH cand … UPDATE … RETURNING jobs.*"
    if words.startswith("SELECT jobs.id, jobs.concurrency_key"):
        return "claim, careful path: SELECT candidates"
    if words.startswith("UPDATE jobs SET status") and "attempt=(jobs.attempt" in words:
        return "claim, careful path: UPDATE … RETURNING jobs.*"
    if words.startswith("UPDATE jobs SET") and "unnest(" in words:
        return "finish_many: UPDATE … FROM unnest(…) RETURNING jobs.*"
    if words.startswith("UPDATE jobs SET") and "json_each(" in words:
        return "finish_many: UPDATE … FROM json_each(…) RETURNING jobs.*"
    if words.startswith("UPDATE jobs SET"):
        return "finish: UPDATE … RETURNING jobs.*"
    if words.startswith("INSERT INTO jobs"):
        return "enqueue_many: INSERT"
    return words[:50]


async def profile_cronium(jobs: int) -> None:
    """Where Cronium's drain time goes: the statements PostgreSQL receives per job, the latency
    of each queue call and statement, a cProfile of the drain (4 in-process workers, claim 10
    then finish_many, on PostgreSQL and on SQLite; on SQLite the statements run in a worker
    thread, which cProfile does not see), and the plan of the claim at this queue depth."""
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="cronium-bench-") as tmp:
        bench = Bench(server=server, workdir=Path(tmp))
        for system in (CRONIUM_PG, CRONIUM_SQLITE):
            async with bench.target(system) as (target, url):
                await target.enqueue(jobs, ENQUEUE_CHUNK)
                if system == CRONIUM_PG:
                    # log every statement of the sessions the drain opens (new sessions only)
                    dbname = url.rsplit("/", 1)[1]
                    server.execute(f"ALTER DATABASE {dbname} SET log_statement = 'all'")
                    assert server.log_file is not None
                    log_start = server.log_file.stat().st_size
                report = await _profiled_drain(url, jobs)
                if system == CRONIUM_PG:
                    server.execute(f"ALTER DATABASE {dbname} RESET log_statement")
                    assert server.log_file is not None
                    with server.log_file.open("rb") as f:
                        f.seek(log_start)
                        server_log = f.read().decode("utf-8", "replace")
                    report["server statements"] = _server_statements(server_log, jobs)
            print(
                f"\n=== {LABELS[system]}: {jobs} jobs, 4 workers, claim 10 + finish_many "
                f"(drain under cProfile: {report['rate']:.0f} jobs/s) ==="
            )
            for title in ("server statements", "calls", "statements", "profile"):
                if title in report:
                    print(f"\n{title}:\n{report[title]}")
        print("\n=== the claim statement, EXPLAIN ANALYZE at this queue depth ===")
        print(await _explain_claim(bench, jobs))


async def _profiled_drain(url: str, jobs: int) -> dict[str, Any]:
    from cronium_core import JobStatus
    from cronium_core.datastore import DataStore
    from cronium_core.queue import JobQueue

    async with AsyncExitStack() as stack:
        store = DataStore(url=url)
        await store.start(stack)
        queue = JobQueue(store=store)
        timer = CallTimer(store)
        calls: dict[str, list[float]] = defaultdict(list)

        async def worker(worker_id: str) -> None:
            while True:
                t0 = time.perf_counter()
                claimed = await queue.claim(worker_id, limit=10)
                calls["claim(limit=10)"].append(time.perf_counter() - t0)
                if not claimed:
                    return
                t0 = time.perf_counter()
                await queue.finish_many([(j.id, j.lease_id, JobStatus.SUCCEEDED) for j in claimed])
                calls["finish_many(10 jobs)"].append(time.perf_counter() - t0)

        profiler = cProfile.Profile()
        start = time.monotonic()
        profiler.enable()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(worker, f"prof-{i}")
        profiler.disable()
        drain_s = time.monotonic() - start

    def ms_row(name: str, values: list[float]) -> list[Any]:
        return [name, len(values) / jobs, *(v * 1000 for v in percentiles(values).values())]

    headers = ["", "per job", "p50 ms", "p90 ms", "p99 ms"]
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    profile_lines = out.getvalue().strip().splitlines()
    events = ", ".join(f"{k} {v / jobs:.2f}" for k, v in sorted(timer.events.items()))
    return {
        "rate": jobs / drain_s,
        "calls": format_table(headers, [ms_row(k, v) for k, v in calls.items()]),
        "statements": format_table(headers, [ms_row(k, v) for k, v in sorted(timer.times.items())])
        + f"\nper job: {events}",
        "profile": "\n".join(line for line in profile_lines[-20:] if line.strip()),
    }


def _server_statements(log: str, jobs: int) -> str:
    """Count the statements in a PostgreSQL log written with ``log_statement = 'all'``."""
    import re

    kinds: dict[str, int] = defaultdict(int)
    for match in re.finditer(r"LOG:  (?:statement|execute [^:]*): (.*)", log):
        kinds[" ".join(match.group(1).split())[:60]] += 1
    rows = [
        [stmt, n / jobs]
        for stmt, n in sorted(kinds.items(), key=lambda kv: -kv[1])
        if n / jobs >= 0.01
    ]
    rows.append(["total logged", sum(kinds.values()) / jobs])
    return format_table(["statement (as logged)", "per job"], rows)


async def _explain_claim(bench: Bench, depth: int) -> str:
    """EXPLAIN ANALYZE of the claim statement (PostgreSQL) with ``depth`` queued jobs; it runs
    in a transaction that is rolled back, so it claims nothing."""
    from sqlalchemy import event

    async with bench.target(CRONIUM_PG) as (target, _url):
        await target.enqueue(depth, ENQUEUE_CHUNK)
        captured: list[tuple[str, Any]] = []

        def grab(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
            if statement.lstrip().startswith("WITH cand AS"):
                captured.append((statement, params))

        event.listen(target.store.engine.sync_engine, "before_cursor_execute", grab)
        await target.queue.claim("explain", limit=10)
        statement, params = captured[0]
        async with target.store.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            transaction = driver.transaction()
            await transaction.start()
            try:
                rows = await driver.fetch("EXPLAIN (ANALYZE, BUFFERS) " + statement, *params)
            finally:
                await transaction.rollback()
        return "\n".join("  " + r[0] for r in rows)


# -- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.queue_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"jobs per run (default {DEFAULT_JOBS}; 500 with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run, < 30 s")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds of the whole matrix; the tables show medians (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile Cronium's queue instead of comparing"
    )
    args = parser.parse_args(argv)
    jobs = args.jobs or (500 if args.quick else DEFAULT_JOBS)
    if args.profile:
        anyio.run(profile_cronium, jobs)
    else:
        anyio.run(benchmark, jobs, args.quick, args.repeat or (1 if args.quick else 3))


if __name__ == "__main__":
    # run as the module's own name, not __main__: procrastinate warns about apps made in
    # __main__, and the worker processes unpickle their entry point by module name
    from bench.queue_throughput import main as _main

    _main()
