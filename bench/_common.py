"""What every benchmark shares: a throwaway PostgreSQL server, percentiles, a table printer,
a description of the machine and the versions, and a place for the results.

Benchmarks are run from the project root, e.g. ``/work/venv/bin/python -m bench.queue_throughput``;
each writes a JSON file to ``bench/results/`` (not committed) and prints a Markdown table that can
be pasted into ``docs/benchmarks.md`` as it is.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.pg import PostgresServer

__all__ = [
    "RESULTS_DIR",
    "describe_machine",
    "format_table",
    "machine_info",
    "package_versions",
    "percentiles",
    "postgres_server",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster on 127.0.0.1 for one benchmark run, deleted afterwards.

    Always a private one (``use_env=False``): a benchmark must not depend on, or write to, a
    server that happens to be named in the environment. The cluster is tuned like the test
    cluster (``fsync``, ``synchronous_commit`` and ``full_page_writes`` off), which favours every
    system under test alike: commits cost no disk flush.
    """
    server = PostgresServer(use_env=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def percentiles(
    values: Sequence[float], points: Sequence[float] = (50, 90, 99)
) -> dict[str, float]:
    """``{"p50": …, "p90": …, …}`` by linear interpolation between the closest ranks; NaN when
    ``values`` is empty."""
    ordered = sorted(values)
    result: dict[str, float] = {}
    for p in points:
        key = f"p{p:g}"
        if not ordered:
            result[key] = math.nan
            continue
        rank = (len(ordered) - 1) * p / 100
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        result[key] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return result


def format_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str | None = None
) -> str:
    """A Markdown table whose columns are padded, so that it reads in a terminal too.

    ``align`` has one letter per column, ``l`` or ``r``; by default the first column is left-aligned
    and the others right-aligned (numbers).
    """
    align = align or "l" + "r" * (len(headers) - 1)
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if a == "l" else c.rjust(w)
            for c, w, a in zip(row, widths, align, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if a == "r" else ":" + "-" * (w + 1)
            for w, a in zip(widths, align, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names); ``"missing"`` when not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def machine_info(server: PostgresServer | None = None) -> dict[str, Any]:
    """CPU, cores, RAM, OS, Python, SQLite and (given a running server) PostgreSQL versions."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }
    if server is not None:
        info["postgresql"] = server.fetchval("SHOW server_version")
        settings = {}
        for name in ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers"):
            settings[name] = server.fetchval(f"SHOW {name}")
        info["postgresql_settings"] = settings
    return info


def describe_machine(info: dict[str, Any]) -> str:
    """One line for a report: ``Intel Xeon, 2 cores, 23.4 GiB RAM, Linux …, Python …``."""
    parts = [
        info["cpu"],
        f"{info['cores']} cores",
        f"{info['ram_gib']} GiB RAM" if info.get("ram_gib") else None,
        info["os"],
        f"Python {info['python']}",
        f"SQLite {info['sqlite']}",
        f"PostgreSQL {info['postgresql']}" if info.get("postgresql") else None,
    ]
    return ", ".join(p for p in parts if p)


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus a timestamp) to ``bench/results/<name>-<UTC time>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    path = RESULTS_DIR / f"{name}-{now:%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"written_at": now.isoformat(), **payload}, indent=2) + "\n")
    return path
