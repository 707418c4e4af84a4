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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    import time

    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} in the output: {''.join(seen)}")


@pytest.mark.parametrize(
    "executor", ["local", pytest.param("docker", marks=pytest.mark.containers)]
)
def test_runtime_service_on_its_own_serves_a_workers_jobs(tmp_path: Path, executor: str) -> None:
    """`cronium runtime` serves the runtime API; a worker started with `--runtime-url` gives
    its jobs that URL and serves none itself. Same keys on both sides."""
    from tests.containers import engine_cli, executor_config, require

    extra_hosts = ""
    config = "{}"
    if executor == "docker":
        require("docker")
        # a container job reaches the service through the relay, from the control network
        engine_cli("docker", "network", "create", "cronium-control", check=False)
        gateway = engine_cli(
            "docker",
            "network",
            "inspect",
            "cronium-control",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ).strip()
        extra_hosts = f",{gateway}"
        import json

        config = json.dumps({"docker": executor_config("docker")})
    port = _free_port()
    env = {
        **os.environ,
        "CRONIUM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "CRONIUM_RUNTIME_KEYS": "k1:" + "s" * 43,
        "CRONIUM_SECRET_KEYS": "v1:" + "A" * 43 + "=",
    }
    assert cronium(tmp_path, "db", "upgrade").returncode == 0
    added = cronium(
        tmp_path,
        "event",
        "add",
        "calls-runtime",
        "--language",
        "python",
        "--executor",
        executor,
        "--code",
        "import cronium\ncronium.set_variable('seen', cronium.input())\n"
        "cronium.output({'got': cronium.input(), 'var': cronium.get_variable('seen')})\n",
    )
    assert added.returncode == 0, added.stderr
    procs = []
    try:
        runtime = subprocess.Popen(
            [sys.executable, "-m", "cronium_web.cli", "runtime",
             "--host", "127.0.0.1" + extra_hosts, "--port", str(port)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(runtime)
        _wait_for_line(runtime, "serving the runtime API")
        worker = subprocess.Popen(
            [sys.executable, "-m", "cronium_web.cli", "worker", "--poll-interval", "0.2",
             "--executors", executor, "--executor-config", config,
             "--runtime-url", f"http://127.0.0.1:{port}"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(worker)
        _wait_for_line(worker, "running (executors")
        ran = subprocess.run(
            [sys.executable, "-m", "cronium_web.cli", "run", "calls-runtime", "--input",
             '{"n": 7}', "--follow"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        job_id = ran.stdout.splitlines()[0]
        shown = cronium(tmp_path, "job", "show", job_id).stdout
        assert 'output={"got": {"n": 7}, "var": {"n": 7}}' in shown, shown
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["event", "add", "x", "--code", "@missing.py"],
         "--code @missing.py: cannot read it: No such file or directory"),
        (["event", "add", "x", "--code", "1", "--env", "NOEQUALS"],
         "--env 'NOEQUALS': give NAME=VALUE"),
        (["event", "add", "x", "--code", "1", "--executor", "nosuch"],
         "--executor 'nosuch': no such executor here (installed: "),
        (["event", "add", "x", "--code", "1", "--interval", "0"],
         "argument --interval: 0 must be above 0"),
        (["event", "add", "x", "--code", "1", "--cron", "* * * * *", "--interval", "5"],
         "give --cron or --interval, not both"),
        (["event", "add", "x", "--code", "1", "--cron", "61 * * * *"], "cronium: "),
        (["run", "x", "--input", "@missing.json"],
         "--input @missing.json: cannot read it"),
        (["serve", "--executor-config", "{bad"], "--executor-config is not valid JSON"),
        (["serve", "--max-jobs", "0"], "argument --max-jobs: 0 must be above 0"),
        (["worker", "--max-jobs", "-3"], "argument --max-jobs: -3 must be above 0"),
        (["--db", "mysql://u:p@h/db", "event", "list"],
         "database 'mysql': give a sqlite:///FILE or postgresql://... URL"),
        (["--db", "sqlite:////no/such/dir/x.db", "event", "add", "x", "--code", "1"],
         "cronium: the database: unable to open database file"),
        (["workflow", "run"], "cronium workflow run: give the workflow name"),
        (["job", "logs", "nope"], "cronium: job nope not found"),
        (["event", "list"], "cli.db (`cronium serve`, `cronium db upgrade` or"),  # none made
        (["db", "check"], "cronium: no database at"),
        (["runtime"], "set CRONIUM_RUNTIME_KEYS"),
        (["worker", "--runtime-url", "http://127.0.0.1:9"], "set CRONIUM_RUNTIME_KEYS"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_and_changes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    if args[0] in ("job", "workflow", "run"):  # what they say about a database that exists
        assert cronium(tmp_path, "db", "upgrade").returncode == 0
    env_keys = os.environ.pop("CRONIUM_RUNTIME_KEYS", None)
    try:
        result = cronium(tmp_path, *args, timeout=60)
    finally:
        if env_keys is not None:
            os.environ["CRONIUM_RUNTIME_KEYS"] = env_keys
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if (tmp_path / "cli.db").exists():  # nothing was added
        assert cronium(tmp_path, "event", "list").stdout == ""
    else:
        assert not (tmp_path / "cli.db").exists()  # and no empty database was left behind


def test_run_follow_says_when_no_worker_claims_the_job(tmp_path: Path) -> None:
    assert cronium(tmp_path, "event", "add", "waits", "--code", "print(1)").returncode == 0
    env = {**os.environ, "CRONIUM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    follow = subprocess.Popen(
        [sys.executable, "-m", "cronium_web.cli", "run", "waits", "--follow"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follow.stderr is not None
        hint = ""
        while "still queued" not in hint:
            line = follow.stderr.readline()  # the hint comes after 5 s
            assert line, "no hint before the end of stderr"
            hint = line
        assert "no worker has claimed it" in hint and "'local' executor" in hint
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.wait(timeout=30)


def test_commands_that_encrypt_nothing_do_not_warn_about_the_secret_keys(tmp_path: Path) -> None:
    assert cronium(tmp_path, "db", "upgrade").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "CRONIUM_SECRET_KEYS"}
    env["CRONIUM_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    for args in (["event", "add", "e", "--code", "pass"], ["event", "list"], ["job", "list"]):
        result = subprocess.run(
            [sys.executable, "-m", "cronium_web.cli", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "CRONIUM_SECRET_KEYS" not in result.stderr


def test_workflow_run_wait_shows_each_node(tmp_path: Path) -> None:
    """The demo's workflow, run from the CLI with a worker elsewhere: `--wait` shows where
    each node went (a broken sensor takes the failure branch, and the run still succeeds)."""
    assert cronium(tmp_path, "serve", "--demo", "--exit-after-demo").returncode == 0
    env = {**os.environ, "CRONIUM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "cronium_web.cli", "worker", "--poll-interval", "0.2"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        high = cronium(tmp_path, "workflow", "run", "demo-pipeline", "--input",
                       '{"reading": 80}', "--wait", "60")  # fmt: skip
        broken = cronium(tmp_path, "workflow", "run", "demo-pipeline", "--input",
                         '{"reading": -1}', "--wait")  # fmt: skip
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    for result in (high, broken):
        assert result.returncode == 0, result.stdout + result.stderr
    nodes = {}
    for name, result in (("high", high), ("broken", broken)):
        run_id, summary, *lines = result.stdout.splitlines()
        assert summary.startswith(f"workflow run {run_id}: succeeded in ")
        nodes[name] = {line.split()[0]: line.split()[1] for line in lines}
    assert nodes["high"] == {"measure": "succeeded", "report": "succeeded",
                             "high": "succeeded", "alert": "skipped"}  # fmt: skip
    assert nodes["broken"] == {"measure": "failed", "alert": "succeeded",
                               "report": "skipped", "high": "skipped"}  # fmt: skip
    assert '"reading": 80' in high.stdout  # the measure node's output
