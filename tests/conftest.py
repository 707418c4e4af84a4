"""Fixtures shared by every test module: the anyio backend, a real PostgreSQL server for the
session, and ``db_url``, which runs a test once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from cronium_core import schema
from tests.pg import PostgresServer

TEMPLATE_DB = "cronium_template"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session, with the schema built once into a
    template database that each test copies (procrastinate's trick)."""
    server = PostgresServer()
    server.start()
    try:
        server.create_database(TEMPLATE_DB)

        async def build() -> None:
            engine = create_async_engine(server.url_for(TEMPLATE_DB))
            try:
                await schema.upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(build())
        server.mark_template(TEMPLATE_DB)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    name = pg_server.fresh_database(TEMPLATE_DB)
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cronium.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL with Cronium's schema: a SQLite file, or a fresh PostgreSQL database.
    SQLite starts empty (Cronium upgrades it on start); PostgreSQL copies the template."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cronium.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def pytest_report_header() -> list[str]:
    return [f"postgres: {os.environ.get('CRONIUM_TEST_POSTGRES_URL') or 'private test cluster'}"]
