"""The ``cronium`` command line.

::

    cronium serve [--demo]           everything in one process (SQLite + local executor)
    cronium worker [--executors local,docker] [--executor-config JSON]
                                     claim and run jobs (many may run, on many machines)
    cronium scheduler                turn schedules into jobs (several may run)
    cronium runtime [--host H --port P]
                                     the runtime API on its own (workers: --runtime-url)
    cronium db upgrade|check         schema migrations
    cronium event add|list|show|remove|pause|resume
    cronium run EVENT [--input JSON] [--follow]
    cronium job show|cancel|logs JOB [--follow]
    cronium workflow list|run NAME [--input JSON] [--wait]

The database comes from ``--db`` or ``CRONIUM_DATABASE_URL`` (default: ``sqlite:///cronium.db``).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from cronium_core import (
    Cron,
    Cronium,
    CroniumError,
    Event,
    HttpRequest,
    Interval,
    Job,
    JobStatus,
    Manual,
    RetryPolicy,
    Script,
    WorkflowRun,
)
from cronium_core.marshal import event_to_dict
from cronium_core.schedules import Schedule
from cronium_runtime.server import freeze_heap

DEFAULT_DB = "sqlite:///cronium.db"
log = logging.getLogger("cronium.cli")


def _db(args: argparse.Namespace) -> str:
    import os

    url = str(args.db or os.environ.get("CRONIUM_DATABASE_URL") or DEFAULT_DB)
    if not url.startswith(("sqlite", "postgresql", "postgres:")):
        scheme = url.partition(":")[0] if ":" in url else url
        raise SystemExit(
            f"cronium: database {scheme!r}: give a sqlite:///FILE or postgresql://... URL"
        )
    return url


def _executor_config(args: argparse.Namespace) -> dict[str, Any]:
    """``--executor-config`` (JSON, or @FILE) or ``$CRONIUM_EXECUTOR_CONFIG``: settings per
    executor, e.g. ``{"docker": {"images": {"python": "cronium-python:1.0"}}}``."""
    import os

    raw = args.executor_config or os.environ.get("CRONIUM_EXECUTOR_CONFIG")
    if not raw:
        return {}
    config = _json_arg(raw, "--executor-config")
    if not isinstance(config, dict) or not all(isinstance(v, dict) for v in config.values()):
        raise SystemExit(
            "--executor-config must be a JSON object of objects: {name: {setting: value}}"
        )
    return config


def _executors(args: argparse.Namespace) -> list[str] | None:
    return args.executors.split(",") if args.executors else None


def _text_arg(value: str, what: str) -> str:
    """``value``, or the text of the file it names as ``@FILE``."""
    if not value.startswith("@"):
        return value
    try:
        return Path(value[1:]).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SystemExit(f"{what} {value}: cannot read it: {why}") from None


def _json_arg(value: str | None, what: str = "--input") -> Any:
    if value is None:
        return None
    try:
        return json.loads(_text_arg(value, what))
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{what} is not valid JSON: {exc}") from None


def _positive(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number above zero."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _runtime_keys_or_exit(who: str) -> None:
    """A runtime API and its workers in different processes must share their token keys."""
    import os

    if not os.environ.get("CRONIUM_RUNTIME_KEYS"):
        raise SystemExit(
            f"cronium {who}: set CRONIUM_RUNTIME_KEYS (kid:secret[,...]) to the same value in "
            "the runtime API and in every worker: the workers sign the jobs' tokens, the "
            "runtime API checks them"
        )


def _status_mark(status: JobStatus | str) -> str:
    return {"succeeded": "ok ", "failed": "ERR", "timed_out": "TMO", "cancelled": "CNL"}.get(
        str(status), "..."
    )


def print_job(job: Job, name: str = "") -> None:
    dur = f"{job.duration:.2f}s" if job.duration is not None else "-"
    out = "" if job.output in (None, {}) else f"  output={json.dumps(job.output)}"
    err = f"  error={job.error}" if job.error and job.status is not JobStatus.SUCCEEDED else ""
    print(
        f"[{_status_mark(job.status)}] {name or job.event_id}  {job.status}  {dur}{out}{err}",
        flush=True,
    )


def print_run(run: WorkflowRun, names: dict[str, str] | None = None) -> None:
    dur = f"{run.duration:.2f}s" if run.duration is not None else "-"
    print(f"workflow run {run.id}: {run.status} in {dur}", flush=True)
    far = datetime.max.replace(tzinfo=UTC)
    for node_id, node in sorted(run.nodes.items(), key=lambda kv: kv[1].started_at or far):
        ndur = f"{node.duration:.2f}s" if node.duration is not None else ""
        out = f"  output={json.dumps(node.output)}" if node.output not in (None, {}) else ""
        print(f"  {node_id:<12} {node.status:<10} {ndur:>7}{out}", flush=True)


# -- serve ---------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from . import demo

    async with Cronium(
        _db(args),
        max_jobs=args.max_jobs,
        executors=_executors(args),
        executor_config=_executor_config(args),
    ) as cr:
        freeze_heap()
        names = {r.event.id: r.event.name for r in await cr.events.list()}
        print(
            f"cronium: serving {_db(args)} with executors {', '.join(cr.executors)}; Ctrl-C stops",
            flush=True,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_report_finished, cr, names)
            if args.demo:
                workflow = await demo.install(cr)
                names.update({r.event.id: r.event.name for r in await cr.events.list()})
                clock_job = await cr.run("demo-clock")
                runs = [
                    await cr.workflows.run(workflow, input={"reading": 72}),
                    await cr.workflows.run(workflow, input={"reading": 17}),
                    await cr.workflows.run(workflow, input={"reading": -1}),
                ]
                await cr.jobs.wait(clock_job.id, timeout=60)
                for run in runs:
                    print_run(await cr.workflows.wait(run.id, timeout=60))
                if args.exit_after_demo:
                    tg.cancel_scope.cancel()
                    return 0
                print("demo installed: demo-clock runs every minute (Ctrl-C stops)", flush=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    print("cronium: stopping", flush=True)
                    tg.cancel_scope.cancel()
                    break
    return 0


async def _report_finished(cr: Cronium, names: dict[str, str]) -> None:
    async with cr.broker.subscribe() as notices:
        async for notice in notices:
            if notice.topic == "job.finished":
                job = await cr.jobs.get(str(notice.data["id"]))
                if job.event_id not in names:
                    names.update({r.event.id: r.event.name for r in await cr.events.list()})
                label = names.get(job.event_id, job.event_id)
                if job.node_id:
                    label += f" (workflow node {job.node_id})"
                print_job(job, label)


# -- worker, scheduler ---------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> int:
    if args.runtime_url:
        _runtime_keys_or_exit("worker --runtime-url")
    async with Cronium(
        _db(args),
        scheduler=False,
        max_jobs=args.max_jobs,
        lease_seconds=args.lease,
        executors=_executors(args),
        executor_config=_executor_config(args),
        runtime_url=args.runtime_url,
        runtime_host=args.runtime_host,
        upgrade=False,
        worker_id=args.id,
        reap_interval=args.reap_interval,
        poll_interval=args.poll_interval,
    ) as cr:
        freeze_heap()
        worker = cr.worker
        assert worker is not None
        print(
            f"cronium worker {worker.id}: running (executors: {', '.join(cr.executors)})",
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:

                async def on_signals() -> None:
                    count = 0
                    async for _ in signals:
                        count += 1
                        if count == 1:
                            print(
                                "cronium worker: finishing running jobs, claiming no more "
                                "(send again to stop them now)",
                                flush=True,
                            )
                            worker.stop(graceful=True)
                        else:
                            print("cronium worker: stopping running jobs", flush=True)
                            worker.stop(graceful=False)

                tg.start_soon(on_signals)
                await worker.wait_stopped()
                tg.cancel_scope.cancel()
    print("cronium worker: stopped", flush=True)
    return 0


async def _runtime(args: argparse.Namespace) -> int:
    """The runtime API on its own, for workers started with ``--runtime-url`` (container and
    SSH jobs elsewhere reach it). Tokens are checked with ``$CRONIUM_RUNTIME_KEYS``, which
    must be the workers' keys; a job's attempt is checked against its row in the database."""
    from cronium_runtime.app import create_app
    from cronium_runtime.server import serve

    _runtime_keys_or_exit("runtime")
    cronium = Cronium(_db(args), worker=False, scheduler=False, upgrade=False)
    async with cronium as cr, anyio.create_task_group() as tg:
        url = await tg.start(partial(serve, create_app(cr.runtime), host=args.host, port=args.port))
        freeze_heap()
        print(f"cronium runtime: serving the runtime API on {url}", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    return 0


async def _scheduler(args: argparse.Namespace) -> int:
    async with Cronium(_db(args), worker=False, upgrade=False):
        freeze_heap()
        print("cronium scheduler: running", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
    return 0


# -- db ------------------------------------------------------------------------------------


async def _db_cmd(args: argparse.Namespace) -> int:
    from contextlib import AsyncExitStack

    from cronium_core import schema
    from cronium_core.datastore import DataStore

    url = _db(args)
    path = _sqlite_file(url)
    if args.action == "check" and path is not None and not path.exists():
        raise SystemExit(f"cronium: no database at {path}")
    store = DataStore(url=url)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(store.engine.dispose)
        if args.action == "upgrade":
            applied = await schema.upgrade(store.engine)
            print(f"applied migrations: {applied}" if applied else "schema is up to date")
        else:
            await schema.check_schema(store.engine)
            print(f"schema version {schema.SCHEMA_VERSION}: ok")
    return 0


# -- events, jobs, workflows ---------------------------------------------------------------


def _client(args: argparse.Namespace, *, creates: bool = False) -> Cronium:
    """A Cronium for one command. Only a command that ``creates`` something may start a new
    SQLite database; the others, pointed at a file that is not there (another directory?),
    say so instead of showing an empty one."""
    url = _db(args)
    path = _sqlite_file(url)
    if path is not None and not creates and not path.exists():
        raise SystemExit(
            f"cronium: no database at {path} (`cronium serve`, `cronium db upgrade` or "
            "`cronium event add` makes one; or give --db)"
        )
    # these commands encrypt and decrypt nothing: the warning about a key made up for this
    # process is for those that do (serve, worker, runtime)
    logging.getLogger("cronium.crypto").setLevel(logging.ERROR)
    return Cronium(url, worker=False, scheduler=False)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database, or SQLite in memory."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _schedule(args: argparse.Namespace) -> Schedule:
    if args.cron and args.interval is not None:
        raise SystemExit("give --cron or --interval, not both")
    if args.cron:
        return Cron(expression=args.cron, timezone=args.timezone)
    if args.interval is not None:
        return Interval(seconds=args.interval)
    return Manual()


async def _event_cmd(args: argparse.Namespace) -> int:
    async with _client(args, creates=args.action == "add") as cr:
        if args.action == "add":
            action: Script | HttpRequest
            if args.url:
                action = HttpRequest(url=args.url, method=args.method)
            else:
                code = args.code
                if code is None:
                    raise SystemExit("give the script with --code TEXT or --code @FILE")
                action = Script(language=args.language, code=_text_arg(code, "--code"))
            env = dict(_pair(item, "--env") for item in args.env or [])
            executor = "http" if args.url else args.executor
            known = _installed_executors()
            if executor not in known:
                raise SystemExit(
                    f"--executor {executor!r}: no such executor here "
                    f"(installed: {', '.join(known)})"
                )
            options = dict(_option(item) for item in args.option or [])
            event = await cr.events.add(
                Event(
                    name=args.name,
                    action=action,
                    schedule=_schedule(args),
                    executor=executor,
                    executor_options=options,
                    timeout=args.timeout,
                    retry=RetryPolicy(max_attempts=args.attempts),
                    env=env,
                )
            )
            print(event.id)
        elif args.action == "list":
            for rec in await cr.events.list():
                nxt = (
                    rec.next_fire_time.isoformat(timespec="seconds") if rec.next_fire_time else "-"
                )
                print(
                    f"{rec.event.id}  {rec.event.name:<24} {rec.event.status:<8} next={nxt}  "
                    f"runs={rec.runs_total} ok={rec.runs_succeeded} "
                    f"failed={rec.runs_failed}"
                )
        elif args.action == "show":
            print(json.dumps(event_to_dict(await cr.events.get(args.name)), indent=2))
        elif args.action == "remove":
            await cr.events.remove(args.name)
        elif args.action == "pause":
            await cr.events.pause(args.name)
        elif args.action == "resume":
            await cr.events.resume(args.name)
    return 0


def _pair(item: str, what: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise SystemExit(f"{what} {item!r}: give NAME=VALUE")
    return name, value


def _installed_executors() -> list[str]:
    """The executors of this installation (its plugins), started here or not."""
    from cronium_core.plugins import load_executors, make_plugin_manager

    return load_executors(make_plugin_manager()).names()


def _option(item: str) -> tuple[str, Any]:
    name, value = _pair(item, "--option")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


async def _run_cmd(args: argparse.Namespace) -> int:
    async with _client(args) as cr:
        job = await cr.run(args.event, _json_arg(args.input), idempotency_key=args.key)
        print(job.id, flush=True)
        if args.follow:
            return await _follow(cr, job.id)
    return 0


#: seconds a followed job may wait in the queue before the CLI says so
UNCLAIMED_HINT_SECONDS = 5.0


async def _follow(cr: Cronium, job_id: str) -> int:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_hint_if_unclaimed, cr, job_id)
        async for line in cr.jobs.follow(job_id):
            tg.cancel_scope.cancel()  # it runs: nothing to hint
            stream = "" if line.stream == "stdout" else f"[{line.stream}] "
            print(f"{stream}{line.text}", flush=True)
        tg.cancel_scope.cancel()
    job = await cr.jobs.get(job_id)
    print_job(job)
    return 0 if job.status is JobStatus.SUCCEEDED else 1


async def _job_cmd(args: argparse.Namespace) -> int:
    async with _client(args) as cr:
        if args.action == "show":
            print_job(await cr.jobs.get(args.job))
        elif args.action == "cancel":
            print_job(await cr.jobs.cancel(args.job))
        elif args.action == "logs":
            if args.follow:
                return await _follow(cr, args.job)
            await cr.jobs.get(args.job)  # JobNotFound: said, not an empty log
            for line in await cr.jobs.logs(args.job):
                print(f"{line.seq:>5} {line.stream:<6} {line.text}")
        elif args.action == "list":
            for job in await cr.jobs.list(limit=args.limit):
                print(f"{job.id}  {job.status:<10} {job.trigger:<9} attempt={job.attempt}")
    return 0


async def _workflow_cmd(args: argparse.Namespace) -> int:
    async with _client(args) as cr:
        if args.action == "list":
            for wf in await cr.workflows.list():
                print(f"{wf.id}  {wf.name}  nodes={len(wf.nodes)}")
        else:
            if not args.name:
                raise SystemExit("cronium workflow run: give the workflow name")
            run = await cr.workflows.run(args.name, _json_arg(args.input))
            print(run.id, flush=True)
            if args.wait is not None:
                # each node's status, duration and output: a run can succeed with a node failed
                # (a failure branch taken) or skipped
                run = await cr.workflows.wait(run.id, timeout=args.wait)
                print_run(run)
                return 0 if run.status == "succeeded" else 1
    return 0


async def _hint_if_unclaimed(cr: Cronium, job_id: str) -> None:
    await anyio.sleep(UNCLAIMED_HINT_SECONDS)
    job = await cr.jobs.get(job_id)
    if job.status is JobStatus.QUEUED and job.run_after <= _now():
        print(
            f"cronium: job {job_id} is still queued after {UNCLAIMED_HINT_SECONDS:g} s: no "
            f"worker has claimed it. Is a `cronium worker` (or `cronium serve`) running with "
            f"the {job.executor!r} executor on this database?",
            file=sys.stderr,
            flush=True,
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _user_error(exc: BaseException) -> str | None:
    """One line for an error the user can act on (a core error, a database or network
    problem), None for anything else: a bug, whose traceback is shown."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, BaseExceptionGroup):
        found = [_user_error(inner) for inner in exc.exceptions]
        return "; ".join(m for m in found if m) if all(found) else None
    if isinstance(exc, CroniumError):
        return str(exc)
    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        return f"the database: {str(cause).strip().splitlines()[0]}"
    if isinstance(exc, OSError | ImportError):
        return str(exc)
    return None


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--executors",
        help="comma-separated executor names (default: those needing no engine: local, http); "
        "add docker or podman to run container jobs",
    )
    p.add_argument(
        "--executor-config",
        metavar="JSON",
        help="settings per executor as JSON or @FILE (default: $CRONIUM_EXECUTOR_CONFIG)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cronium", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db", help=f"database URL (default: $CRONIUM_DATABASE_URL or {DEFAULT_DB})"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run everything in one process")
    p.add_argument("--demo", action="store_true", help="install and run the demo")
    p.add_argument("--exit-after-demo", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--max-jobs", type=_positive(int), default=4)
    _executor_args(p)
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="claim and run jobs")
    p.add_argument("--max-jobs", type=_positive(int), default=4)
    _executor_args(p)
    p.add_argument("--id", help="worker id (default: host:pid:random)")
    p.add_argument("--lease", type=_positive(float), default=30.0, help="lease seconds")
    p.add_argument("--reap-interval", type=_positive(float), default=5.0)
    p.add_argument("--poll-interval", type=_positive(float), default=1.0)
    p.add_argument(
        "--runtime-url",
        help="the runtime API jobs call (a `cronium runtime` service); default: this worker "
        "serves it itself",
    )
    p.add_argument(
        "--runtime-host", default="127.0.0.1", help="where this worker serves the runtime API"
    )
    p.set_defaults(func=_worker)

    p = sub.add_parser("runtime", help="serve the runtime API on its own")
    p.add_argument("--host", default="127.0.0.1", help="listen address(es), comma-separated")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_runtime)

    p = sub.add_parser("scheduler", help="turn schedules into jobs")
    p.set_defaults(func=_scheduler)

    p = sub.add_parser("db", help="schema migrations")
    p.add_argument("action", choices=["upgrade", "check"])
    p.set_defaults(func=_db_cmd)

    p = sub.add_parser("event", help="manage events")
    p.add_argument("action", choices=["add", "list", "show", "remove", "pause", "resume"])
    p.add_argument("name", nargs="?")
    p.add_argument("--language", choices=["python", "bash", "node"], default="python")
    p.add_argument("--code", help="script text, or @FILE")
    p.add_argument("--url", help="an HTTP request event instead of a script")
    p.add_argument("--method", default="GET")
    p.add_argument("--cron", help="cron expression, e.g. '*/5 * * * *'")
    p.add_argument("--timezone", default="UTC", help="IANA zone for --cron")
    p.add_argument("--interval", type=_positive(float), help="run every N seconds")
    p.add_argument("--executor", default="local")
    p.add_argument(
        "--option",
        action="append",
        metavar="NAME=VALUE",
        help="an executor option (docker/podman: image, memory, cpus, pids, network, tmp_size); "
        "VALUE is JSON or a plain string",
    )
    p.add_argument("--timeout", type=_positive(float), default=3600.0)
    p.add_argument("--attempts", type=_positive(int), default=1)
    p.add_argument("--env", action="append", metavar="NAME=VALUE")
    p.set_defaults(func=_event_cmd)

    p = sub.add_parser("run", help="run an event now")
    p.add_argument("event")
    p.add_argument("--input", help="JSON input, or @FILE")
    p.add_argument("--key", help="idempotency key")
    p.add_argument("--follow", "-f", action="store_true", help="stream the log until it ends")
    p.set_defaults(func=_run_cmd)

    p = sub.add_parser("job", help="inspect and cancel jobs")
    p.add_argument("action", choices=["show", "cancel", "logs", "list"])
    p.add_argument("job", nargs="?")
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--limit", type=_positive(int), default=50)
    p.set_defaults(func=_job_cmd)

    p = sub.add_parser("workflow", help="list and run workflows")
    p.add_argument("action", choices=["list", "run"])
    p.add_argument("name", nargs="?")
    p.add_argument("--input", help="JSON input, or @FILE")
    p.add_argument(
        "--wait",
        type=_positive(float),
        nargs="?",
        const=600.0,
        metavar="SECONDS",
        help="wait for the run to end (at most SECONDS, 600 by default) and show its nodes",
    )
    p.set_defaults(func=_workflow_cmd)
    return parser


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    needs_name = {"show", "remove", "pause", "resume", "add"}
    if args.command == "event" and args.action in needs_name and not args.name:
        raise SystemExit(f"cronium event {args.action}: give the event name")
    if args.command == "job" and args.action != "list" and not args.job:
        raise SystemExit(f"cronium job {args.action}: give the job id")
    try:
        return int(anyio.run(args.func, args, backend_options=_backend_options()))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _user_error(exc)
        if message is None:
            raise
        print(f"cronium: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
