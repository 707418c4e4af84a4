"""The `cronium` command line, run as a real program: the demo, events, runs, logs, db."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def cronium(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRONIUM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "cronium_web.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_serve_demo_runs_the_three_branches(tmp_path: Path) -> None:
    result = cronium(tmp_path, "serve", "--demo", "--exit-after-demo")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "[ok ] demo-clock" in out
    runs = out.split("workflow run ")[1:]
    assert len(runs) == 3
    table = {}
    for run in runs:
        lines = run.splitlines()
        nodes = {ln.split()[0]: ln.split()[1] for ln in lines[1:5]}
        table[lines[0].split(": ")[1].split()[0], tuple(sorted(nodes.items()))] = nodes
    outcomes = sorted(
        (nodes["measure"], nodes["report"], nodes["alert"], nodes["high"])
        for nodes in table.values()
    )
    assert outcomes == [
        ("failed", "skipped", "succeeded", "skipped"),  # broken sensor: failure branch
        ("succeeded", "succeeded", "skipped", "skipped"),  # low reading: success branch
        ("succeeded", "succeeded", "skipped", "succeeded"),  # high: condition branch too
    ]
    assert '"alarm": true' in out


def test_event_add_run_follow_and_logs(tmp_path: Path) -> None:
    assert cronium(tmp_path, "db", "upgrade").stdout.startswith("applied migrations: [1")
    assert "ok" in cronium(tmp_path, "db", "check").stdout
    added = cronium(
        tmp_path,
        "event",
        "add",
        "greet",
        "--language",
        "bash",
        "--code",
        'echo "hello $WHO"; echo oops >&2; exit 3',
        "--env",
        "WHO=world",
        "--cron",
        "0 9 * * 1-5",
        "--timezone",
        "Europe/Berlin",
    )
    assert added.returncode == 0, added.stderr
    listed = cronium(tmp_path, "event", "list").stdout
    assert "greet" in listed and "next=" in listed
    # `run --follow` with a worker in the same database: start one in the background
    env = {**os.environ, "CRONIUM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "cronium_web.cli", "worker", "--poll-interval", "0.2"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ran = cronium(tmp_path, "run", "greet", "--follow")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert ran.returncode == 1  # the script exited 3
    job_id, *lines = ran.stdout.splitlines()
    assert "hello world" in lines and "[stderr] oops" in lines
    assert "failed" in lines[-1] and "exit code 3" in lines[-1]
    logs = cronium(tmp_path, "job", "logs", job_id).stdout
    assert "hello world" in logs and "oops" in logs


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad_cron = cronium(tmp_path, "event", "add", "x", "--code", "pass", "--cron", "61 * * * *")
    assert bad_cron.returncode == 2 and "expression" in bad_cron.stderr
    bad_zone = cronium(
        tmp_path,
        "event",
        "add",
        "y",
        "--code",
        "pass",
        "--cron",
        "* * * * *",
        "--timezone",
        "Mars/Olympus",
    )
    assert bad_zone.returncode == 2 and "Mars/Olympus" in bad_zone.stderr
    missing = cronium(tmp_path, "run", "nope")
    assert missing.returncode == 2 and "event nope not found" in missing.stderr
    assert cronium(tmp_path, "event", "list").stdout == ""  # nothing half-created


@pytest.mark.parametrize("args", [["job", "show"], ["event", "show"]])
def test_missing_arguments(tmp_path: Path, args: list[str]) -> None:
    result = cronium(tmp_path, *args)
    assert result.returncode != 0 and "give the" in result.stderr
