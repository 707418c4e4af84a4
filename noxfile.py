"""Nox sessions. `nox` runs lint, typing and tests; `nox -s tests_sqlite` or `nox -s tests_postgres`
runs one half of the suite.

Every session installs the project with its dev extras into its own venv under .nox/. Extra
arguments after `--` go to the tool, e.g. `nox -s tests -- -k queue -x`.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typing", "tests"]

# The Postgres fixtures fail instead of skipping when PostgreSQL is missing.
POSTGRES_ENV = {"CRONIUM_REQUIRE_POSTGRES": "1"}


def install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    install(session)
    session.run("ruff", "check", "src", "tests", "noxfile.py", *session.posargs)
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy in strict mode over the packages named in pyproject.toml."""
    install(session)
    session.run("mypy", *session.posargs)


@nox.session
def tests_sqlite(session: nox.Session) -> None:
    """The tests that need no PostgreSQL server and no container engine."""
    install(session)
    session.run("pytest", "-m", "not postgres and not containers", *session.posargs)


@nox.session
def tests_containers(session: nox.Session) -> None:
    """The docker and podman tests (engines started by scripts/services, images built by
    scripts/images --tag test; as root)."""
    install(session)
    session.run("pytest", "-m", "containers", *session.posargs, env={"CI": "true"})


@nox.session
def tests_postgres(session: nox.Session) -> None:
    """The tests that run against PostgreSQL (a throwaway cluster started by the fixtures)."""
    install(session)
    session.run("pytest", "-m", "postgres", *session.posargs, env=POSTGRES_ENV)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite."""
    install(session)
    session.run("pytest", *session.posargs, env=POSTGRES_ENV)
