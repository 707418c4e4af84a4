"""A throwaway PostgreSQL server for the test session.

``PostgresServer`` runs ``initdb`` on a temporary data directory and starts a private cluster on
127.0.0.1 and a free port, tuned for speed over durability (``fsync``, ``synchronous_commit`` and
``full_page_writes`` off). When ``CRONIUM_TEST_POSTGRES_URL`` is set
(``postgresql://user[:password]@host[:port][/db]``), that server is used instead and nothing is
started or stopped.

Per-test databases are made by copying a template database (``CREATE DATABASE x TEMPLATE t``),
which costs milliseconds: build the schema once into a template with :meth:`create_database`,
mark it with :meth:`mark_template`, then call :meth:`fresh_database` for each test.

The admin methods are synchronous and safe to call from inside a running event loop: each runs
its own short asyncpg session on a worker thread.

Never skips: when PostgreSQL cannot be started, :class:`PostgresUnavailable` says why, so that a
machine without PostgreSQL fails its test run instead of silently passing it.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

import anyio
import asyncpg

__all__ = ["ENV_URL", "PostgresServer", "PostgresUnavailable"]

#: Name of the environment variable that points the tests at an existing server.
ENV_URL = "CRONIUM_TEST_POSTGRES_URL"

_T = TypeVar("_T")

_SUPERUSER = "postgres"
_ADMIN_DB = "postgres"
_START_TIMEOUT = 60  # seconds; pg_ctl -w waits this long for "ready to accept connections"

# Durability traded for speed: the cluster is thrown away after the session, so losing it in a
# machine crash costs nothing.
_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",  # TCP on loopback only
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "jit": "off",  # JIT compiling short test queries only costs time
    "max_wal_size": "'1GB'",  # fewer checkpoints while tests churn databases
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "log_min_messages": "warning",
}

_HBA = """\
# Written by tests/pg.py: trust everything that reaches this throwaway cluster on loopback.
local   all   all                  trust
host    all   all   127.0.0.1/32   trust
"""

_names = itertools.count(1)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found, started or reached; the message says why and what to do."""


class PostgresServer:
    """A PostgreSQL server for tests: a private throwaway cluster, or the one named by ``ENV_URL``.

    Usage::

        server = PostgresServer()
        server.start()
        server.create_database("tmpl")
        ...  # build the schema through server.url_for("tmpl"), then close every connection
        server.mark_template("tmpl")
        name = server.fresh_database("tmpl")  # per test
        engine = create_async_engine(server.url_for(name))
        ...
        server.drop_database(name)
        server.stop()

    ``with PostgresServer() as server:`` starts and stops it too.
    """

    def __init__(
        self,
        *,
        external_url: str | None = None,
        use_env: bool = True,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Describe a server; nothing starts before :meth:`start`.

        ``external_url`` (or, with ``use_env``, the ``CRONIUM_TEST_POSTGRES_URL`` variable) selects
        an existing server. ``bin_dir`` forces the directory that holds ``initdb`` and ``pg_ctl``.
        """
        if external_url is None and use_env:
            external_url = os.environ.get(ENV_URL) or None
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._base_dir: Path | None = None
        self._running = False
        self._initialized = False
        self._atexit_registered = False
        self._tools: dict[str, str] = {}
        self._run_as: pwd.struct_passwd | None = None
        self.external = external_url is not None
        if external_url is not None:
            parts = urlsplit(external_url)
            if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
                raise PostgresUnavailable(
                    f"{ENV_URL} must look like postgresql://user@host:port/db, got {external_url!r}"
                )
            self.host = parts.hostname
            self.port = parts.port or 5432
            self.user = unquote(parts.username or _SUPERUSER)
            self._password = unquote(parts.password) if parts.password is not None else None
            self.admin_database = parts.path.lstrip("/") or _ADMIN_DB
        else:
            self.host = "127.0.0.1"
            self.port = 0  # chosen by start()
            self.user = _SUPERUSER
            self._password = None
            self.admin_database = _ADMIN_DB

    # -- addresses ------------------------------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """A ``postgresql://`` URL of the maintenance database (for asyncpg or psql)."""
        return self.url_for(self.admin_database, driver=None)

    @property
    def data_dir(self) -> Path | None:
        """The private cluster's data directory; ``None`` for an external server or before start."""
        return self._base_dir / "data" if self._base_dir is not None else None

    @property
    def log_file(self) -> Path | None:
        """The private cluster's server log; ``None`` for an external server or before start."""
        return self._base_dir / "server.log" if self._base_dir is not None else None

    @property
    def running(self) -> bool:
        return self._running

    def url_for(self, dbname: str, driver: str | None = "asyncpg") -> str:
        """A URL of database ``dbname``: ``postgresql+asyncpg://…`` for SQLAlchemy by default,
        plain ``postgresql://…`` (asyncpg, psql) with ``driver=None``."""
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        credentials = quote(self.user, safe="")
        if self._password is not None:
            credentials += ":" + quote(self._password, safe="")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{credentials}@{host}:{self.port}/{quote(dbname, safe='')}"

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Make the server reachable.

        A private cluster is created on first call; after :meth:`shutdown` the same data
        directory and port are started again. An external server is only checked.
        """
        if self._running:
            return
        if self.external:
            try:
                version = self._run_async(
                    lambda: self._fetchval(self.admin_database, "SHOW server_version")
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise PostgresUnavailable(
                    f"cannot reach the server named by {ENV_URL} ({self._redacted_url()}): {exc}"
                ) from exc
            self._running = bool(version)
            return
        if not self._initialized:
            self._init_cluster()
        self._pg_ctl_start()
        self._running = True

    def shutdown(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the private server but keep its data directory and port, for outage tests.

        ``fast`` disconnects clients and checkpoints; ``immediate`` is a crash: on the next
        :meth:`start` the server runs recovery, and commits made with ``synchronous_commit = off``
        (the default here) in the last fraction of a second may be lost.
        """
        self._require_private("shut down")
        if not self._running:
            return
        self._pg_ctl("stop", "-m", mode, "-w", "-t", str(_START_TIMEOUT))
        self._running = False

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """:meth:`shutdown` then :meth:`start`: same data directory, same port."""
        self.shutdown(mode)
        self.start()

    def stop(self) -> None:
        """Stop the private server at once and delete its data; a no-op for an external server.

        Safe to call more than once and after a failed start.
        """
        if self.external:
            self._running = False
            return
        data = self.data_dir
        if data is not None and (data / "postmaster.pid").exists():
            # Immediate: the data is deleted next, so there is nothing to checkpoint for.
            self._pg_ctl("stop", "-m", "immediate", "-w", "-t", str(_START_TIMEOUT), check=False)
        self._running = False
        self._initialized = False
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- databases ------------------------------------------------------------------------------

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database ``name``, empty or as a copy of ``template``.

        Copying needs the template to have no open connections: dispose engines and pools that
        used it first. A connection still closing is waited for up to a few seconds.
        """
        sql = f"CREATE DATABASE {_ident(name)}"
        if template is not None:
            # FILE_COPY copies the directory in one go; with fsync off its checkpoint is cheap,
            # and for small databases it beats WAL_LOG's page-by-page copy.
            sql += f" TEMPLATE {_ident(template)} STRATEGY FILE_COPY"
        self._run_async(lambda: self._create(sql))

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting whoever is still connected."""
        if self._run_async(
            lambda: self._fetchval(
                self.admin_database,
                "SELECT datistemplate FROM pg_database WHERE datname = $1",
                name,
            )
        ):
            self.execute(f"ALTER DATABASE {_ident(name)} WITH IS_TEMPLATE false")
        self.execute(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def mark_template(self, name: str) -> None:
        """Flag ``name`` as a template, so that it is only ever copied, never dropped by mistake."""
        self.execute(f"ALTER DATABASE {_ident(name)} WITH IS_TEMPLATE true")

    def fresh_database(self, template: str, prefix: str = "test") -> str:
        """Create a uniquely named copy of ``template`` and return its name (for a single test)."""
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        self.create_database(name, template=template)
        return name

    def database_exists(self, name: str) -> bool:
        found = self._run_async(
            lambda: self._fetchval(
                self.admin_database, "SELECT 1 FROM pg_database WHERE datname = $1", name
            )
        )
        return found is not None

    def execute(self, sql: str, *args: object, dbname: str | None = None) -> str:
        """Run one statement in ``dbname`` (default: the maintenance db); return its status."""
        database = dbname or self.admin_database

        async def run() -> str:
            conn = await self._connect(database)
            try:
                status: str = await conn.execute(sql, *args)
                return status
            finally:
                await conn.close()

        return self._run_async(run)

    def fetchval(self, sql: str, *args: object, dbname: str | None = None) -> Any:
        """The first column of the first row of ``sql`` in ``dbname`` (default: maintenance db)."""
        database = dbname or self.admin_database
        return self._run_async(lambda: self._fetchval(database, sql, *args))

    # -- internals ------------------------------------------------------------------------------

    async def _connect(self, dbname: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self._password,
            database=dbname,
            timeout=10,
        )

    async def _fetchval(self, dbname: str, sql: str, *args: object) -> Any:
        conn = await self._connect(dbname)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    async def _create(self, sql: str) -> None:
        conn = await self._connect(self.admin_database)
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    await conn.execute(sql)
                except asyncpg.ObjectInUseError:
                    # The template still has a session that is on its way out (a pool closing).
                    if time.monotonic() > deadline:
                        raise
                    await anyio.sleep(0.05)
                else:
                    return
        finally:
            await conn.close()

    @staticmethod
    def _run_async(fn: Callable[[], Awaitable[_T]]) -> _T:
        # A thread of its own gives the coroutine its own event loop, so that the caller may be
        # plain synchronous code or code already running inside an event loop.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-admin") as pool:
            return pool.submit(anyio.run, fn).result()

    def _require_private(self, action: str) -> None:
        if self.external:
            raise PostgresUnavailable(
                f"cannot {action} the external server named by {ENV_URL}; "
                "use PostgresServer(use_env=False) for tests that stop or restart the server"
            )

    def _redacted_url(self) -> str:
        return self.url_for(self.admin_database, driver=None).replace(
            f":{quote(self._password or '', safe='')}@", ":***@"
        )

    def _init_cluster(self) -> None:
        tools = _find_tools(self._bin_dir)
        run_as = _run_as_user()
        base = Path(tempfile.mkdtemp(prefix="cronium-pg-"))
        self._base_dir = base
        self._tools = tools
        self._run_as = run_as
        if not self._atexit_registered:
            # A test run that dies without its fixtures' teardown still leaves no postmaster.
            atexit.register(self.stop)
            self._atexit_registered = True
        if run_as is not None:
            shutil.chown(base, user=run_as.pw_uid, group=run_as.pw_gid)
        data = base / "data"
        try:
            self._run(
                [
                    tools["initdb"],
                    "-D",
                    str(data),
                    "-U",
                    _SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                "initdb",
            )
            with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\n# Added by tests/pg.py\n")
                for key, value in _SETTINGS.items():
                    conf.write(f"{key} = {value}\n")
            (data / "pg_hba.conf").write_text(_HBA, encoding="utf-8")
        except BaseException:
            self.stop()
            raise
        self._initialized = True

    def _pg_ctl_start(self) -> None:
        assert self.data_dir is not None
        fixed_port = self.port != 0
        attempts = 1 if fixed_port else 3
        for attempt in range(1, attempts + 1):
            if not fixed_port:
                self.port = _free_port()
            result = self._pg_ctl(
                "start",
                "-w",
                "-t",
                str(_START_TIMEOUT),
                "-l",
                str(self.log_file),
                "-o",
                f"-p {self.port}",
                check=False,
            )
            if result.returncode == 0:
                return
            # Another process may have taken the port between choosing and binding it.
            if attempt == attempts:
                log_tail = _tail(self.log_file)
                self.stop()
                raise PostgresUnavailable(
                    f"pg_ctl start failed (exit {result.returncode}) on port {self.port}:\n"
                    f"{result.stdout}{result.stderr}\n--- server log ---\n{log_tail}"
                )

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.data_dir is not None
        return self._run([self._tools["pg_ctl"], "-D", str(self.data_dir), *args], "pg_ctl", check)

    def _run(
        self, argv: Sequence[str], what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        if self._run_as is not None:
            argv = _as_user(self._run_as.pw_name, argv)
        try:
            result = subprocess.run(
                argv,
                cwd=self._base_dir,  # the postgres user may not enter the caller's cwd
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=_START_TIMEOUT + 30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{what} could not run ({shlex.join(argv)}): {exc}") from exc
        if check and result.returncode != 0:
            raise PostgresUnavailable(
                f"{what} failed (exit {result.returncode}): {shlex.join(argv)}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


def _ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _find_tools(bin_dir: Path | None) -> dict[str, str]:
    if bin_dir is not None:
        candidates = [bin_dir]
    else:
        # Newest major version first among the Debian-style directories.
        versioned = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(v) if (v := Path(p).parent.name).isdigit() else 0,
            reverse=True,
        )
        candidates = [Path("/usr/local/bin"), *map(Path, versioned)]
    for directory in candidates:
        tools = {name: directory / name for name in ("initdb", "pg_ctl")}
        if all(os.access(path, os.X_OK) for path in tools.values()):
            return {name: str(path) for name, path in tools.items()}
    if bin_dir is None:
        found = {name: shutil.which(name) for name in ("initdb", "pg_ctl")}
        if all(found.values()):
            return {name: str(path) for name, path in found.items()}
    searched = ", ".join(str(c) for c in candidates) + ("" if bin_dir else ", PATH")
    raise PostgresUnavailable(
        f"PostgreSQL's initdb/pg_ctl not found (searched {searched}). "
        f"Run `bash scripts/services` (installs the Debian package `postgresql`), "
        f"or set {ENV_URL}=postgresql://user@host:port/db to use a running server."
    )


def _run_as_user() -> pwd.struct_passwd | None:
    """The account that runs the server when we are root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run the server"
    )


def _as_user(user: str, argv: Sequence[str]) -> list[str]:
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", user, "--", *argv]
    su = shutil.which("su") or "su"
    return [su, "-s", "/bin/sh", user, "-c", shlex.join(argv)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"
