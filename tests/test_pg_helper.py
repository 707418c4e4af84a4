"""The PostgreSQL test server helper (tests/pg.py) that the Postgres fixtures are built on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy
from sqlalchemy.ext.asyncio import create_async_engine

from tests.pg import ENV_URL, PostgresServer, PostgresUnavailable

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    # A private cluster even when CRONIUM_TEST_POSTGRES_URL is set: these tests stop and
    # restart it.
    pg = PostgresServer(use_env=False)
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def template(server: PostgresServer) -> str:
    server.create_database("helper_template")
    server.execute(
        "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL);"
        "INSERT INTO item VALUES (1, 'seed')",
        dbname="helper_template",
    )
    server.mark_template("helper_template")
    return "helper_template"


@pytest.mark.anyio
async def test_private_server_is_tuned_for_tests(server: PostgresServer) -> None:
    conn = await asyncpg.connect(server.admin_url)
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "fsync",
                "synchronous_commit",
                "full_page_writes",
                "max_connections",
                "listen_addresses",
                "port",
            )
        }
        version = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()
    assert settings == {
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "200",
        "listen_addresses": "127.0.0.1",
        "port": str(server.port),
    }
    assert int(version) >= 150000
    assert server.admin_url == f"postgresql://postgres@127.0.0.1:{server.port}/postgres"


@pytest.mark.anyio
async def test_fresh_databases_are_independent_copies_of_the_template(
    server: PostgresServer, template: str
) -> None:
    first = server.fresh_database(template)
    second = server.fresh_database(template)
    assert first != second

    conn = await asyncpg.connect(server.url_for(first, driver=None))
    try:
        assert await conn.fetch("SELECT id, name FROM item") == [(1, "seed")]
        await conn.execute("INSERT INTO item VALUES (2, 'only in first')")
    finally:
        await conn.close()

    assert server.fetchval("SELECT count(*) FROM item", dbname=second) == 1
    assert server.fetchval("SELECT count(*) FROM item", dbname=template) == 1

    server.drop_database(first)
    server.drop_database(second)
    assert not server.database_exists(first)
    assert not server.database_exists(second)
    assert server.database_exists(template)


@pytest.mark.anyio
async def test_url_for_gives_sqlalchemy_an_asyncpg_url(
    server: PostgresServer, template: str
) -> None:
    name = server.fresh_database(template)
    url = server.url_for(name)
    assert url.startswith("postgresql+asyncpg://")

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = (await conn.execute(sqlalchemy.text("SELECT name FROM item"))).scalars()
            assert list(names) == ["seed"]
    finally:
        await engine.dispose()
    server.drop_database(name)


def test_create_database_without_template_is_empty(server: PostgresServer) -> None:
    server.create_database("helper_empty")
    tables = server.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname="helper_empty"
    )
    assert tables == 0
    server.drop_database("helper_empty")
    server.drop_database("helper_empty")  # dropping what is gone is fine
    assert not server.database_exists("helper_empty")


@pytest.mark.anyio
async def test_drop_database_disconnects_open_sessions(
    server: PostgresServer, template: str
) -> None:
    name = server.fresh_database(template)
    conn = await asyncpg.connect(server.url_for(name, driver=None))
    try:
        server.drop_database(name)
        assert not server.database_exists(name)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_data_and_port(server: PostgresServer, template: str, mode: str) -> None:
    name = server.fresh_database(template)
    # A synchronous commit, so that even an immediate (crash) stop must not lose it.
    server.execute(
        "SET synchronous_commit = on; INSERT INTO item VALUES (42, 'before restart')",
        dbname=name,
    )
    port = server.port

    server.restart(mode)  # type: ignore[arg-type]

    assert server.port == port
    assert server.running
    assert server.fetchval("SELECT name FROM item WHERE id = 42", dbname=name) == "before restart"
    server.drop_database(name)


def test_shutdown_refuses_connections_until_started_again(server: PostgresServer) -> None:
    server.shutdown()
    try:
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            server.fetchval("SELECT 1")
    finally:
        server.start()
    assert server.fetchval("SELECT 1") == 1


def test_external_url_uses_that_server_and_refuses_to_restart_it(
    server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_URL, server.admin_url)
    external = PostgresServer()
    external.start()
    assert external.external
    assert external.data_dir is None
    assert (external.host, external.port) == ("127.0.0.1", server.port)
    assert external.url_for("x") == f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/x"

    external.create_database("helper_external")
    assert server.database_exists("helper_external")
    external.drop_database("helper_external")

    with pytest.raises(PostgresUnavailable, match="use_env=False"):
        external.restart()
    external.stop()  # leaves the server it does not own running
    assert server.fetchval("SELECT 1") == 1


def test_unreachable_external_url_is_a_clear_error() -> None:
    with PostgresServer(use_env=False) as probe:
        port = probe.port
    # The probe server is gone: nothing listens on its port any more.
    external = PostgresServer(external_url=f"postgresql://postgres@127.0.0.1:{port}/postgres")
    with pytest.raises(PostgresUnavailable, match="cannot reach"):
        external.start()


def test_stop_deletes_the_cluster() -> None:
    pg = PostgresServer(use_env=False)
    pg.start()
    data_dir = pg.data_dir
    assert data_dir is not None
    assert data_dir.is_dir()
    pg.stop()
    assert not data_dir.exists()
    assert not pg.running
    pg.stop()  # twice is fine


def test_missing_binaries_raise_instead_of_skipping(tmp_path: Path) -> None:
    pg = PostgresServer(use_env=False, bin_dir=tmp_path)
    with pytest.raises(PostgresUnavailable, match="initdb/pg_ctl not found"):
        pg.start()
    assert not pg.running
