"""The local executor with real bash, python and node processes, warm pool and cold spawn."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import attrs
import pytest

from cronium_core.errors import ValidationError
from cronium_core.events import HttpRequest, Script
from cronium_core.executors import ExecutionRequest
from cronium_core.jobs import Stream
from cronium_executors._lines import MAX_LINE_BYTES, TRUNCATION_MARKER, LineSplitter
from cronium_executors._sdk import sdk_paths
from cronium_executors.local import LocalExecutor

pytestmark = pytest.mark.anyio

CANARY = "CRONIUM_TEST_WORKER_SECRET"
KILL_GRACE = 0.5
# CI installs node (scripts/services): there a missing node fails the tests, never skips them
needs_node = pytest.mark.skipif(
    shutil.which("node") is None and os.environ.get("CI") != "true", reason="node is not installed"
)


class Log:
    """A log sink that keeps every line, per stream."""

    def __init__(self) -> None:
        self.lines: list[tuple[Stream, str]] = []
        self.arrived = anyio.Event()
        self.wanted = 0
        self.stdout_count = 0

    async def __call__(self, stream: Stream, text: str) -> None:
        self.lines.append((stream, text))
        if stream is Stream.STDOUT:
            self.stdout_count += 1
            if self.stdout_count == self.wanted:
                self.arrived.set()

    def of(self, stream: Stream) -> list[str]:
        return [text for s, text in self.lines if s is stream]

    @property
    def stdout(self) -> list[str]:
        return self.of(Stream.STDOUT)

    @property
    def stderr(self) -> list[str]:
        return self.of(Stream.STDERR)


def request(language: str, code: str, *, env: Mapping[str, str] | None = None) -> ExecutionRequest:
    return ExecutionRequest(
        job_id="job-1",
        attempt=1,
        event_id="event-1",
        event_name="test",
        action=Script(language=language, code=code),  # type: ignore[arg-type]
        input=None,
        env={"CRONIUM_EXECUTION_ID": "exec-42", **(env or {})},
        timeout=60,
        kill_grace=KILL_GRACE,
    )


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


@pytest.fixture
async def executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalExecutor]:
    """A started executor with its zygote; the worker's environment holds a secret."""
    monkeypatch.setenv(CANARY, "hunter2")
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": str(tmp_path)})
        await local.start(stack)
        assert local.zygote_pid is not None
        yield local


@pytest.fixture(params=["warm", "cold", "no zygote"])
async def python_executor(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[LocalExecutor]:
    """The same tests through the warm pool (forked by the zygote), a fresh interpreter
    started by the zygote, and a fresh interpreter spawned by the worker (while the zygote is
    down; here: the executor was never started)."""
    monkeypatch.setenv(CANARY, "hunter2")
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": str(tmp_path), "warm_python": request.param == "warm"})
        if request.param != "no zygote":
            await local.start(stack)
            assert local.zygote_pid is not None
        yield local


# --- line splitting ---------------------------------------------------------------------


def test_lines_split_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\r\nthr") == ["two"]
    assert splitter.feed(b"ee") == []
    assert splitter.finish() == ["three"]


def test_long_line_cut_once_at_a_character_boundary() -> None:
    splitter = LineSplitter(limit=10)
    lines = splitter.feed("aaaaaaaaaé".encode() + b"b" * 30)  # é straddles the limit
    assert lines == ["aaaaaaaaa" + TRUNCATION_MARKER]
    assert splitter.feed(b"bbbb\nnext\n") == ["next"]
    assert splitter.finish() == []


# --- running scripts --------------------------------------------------------------------


async def test_bash_streams_and_exit_code(executor: LocalExecutor, tmp_path: Path) -> None:
    log = Log()
    code = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'no newline'; exit 3"
    outcome = await executor.execute(request("bash", code), log)
    assert outcome.exit_code == 3
    assert not outcome.succeeded
    assert log.stdout == ["out1", "out2", "no newline"]
    assert log.stderr == ["err1", "err2"]
    assert entries(tmp_path) == [], "the job directory is removed"


async def test_python_script(python_executor: LocalExecutor) -> None:
    log = Log()
    code = (
        "import sys\n"
        "print('hello', __name__, sys.argv[0].endswith('.py'))\n"
        "print('oops', file=sys.stderr)\n"
        "for i in range(3): print(i)\n"
        "sys.exit(5)\n"
    )
    outcome = await python_executor.execute(request("python", code), log)
    assert outcome.exit_code == 5
    assert outcome.error is None
    assert log.stdout == ["hello __main__ True", "0", "1", "2"]
    assert log.stderr == ["oops"]


async def test_python_success_and_exit_statuses(python_executor: LocalExecutor) -> None:
    assert (await python_executor.execute(request("python", "x = 1"), Log())).succeeded
    exiting = await python_executor.execute(request("python", "raise SystemExit('bye')"), Log())
    assert exiting.exit_code == 1
    log = Log()
    killed = await python_executor.execute(
        request("python", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"), log
    )
    assert killed.exit_code == 128 + signal.SIGKILL
    assert killed.error is not None
    assert "SIGKILL" in killed.error


async def test_python_uncaught_exception(python_executor: LocalExecutor) -> None:
    log = Log()
    outcome = await python_executor.execute(request("python", "def f():\n    1 / 0\nf()\n"), log)
    assert outcome.exit_code == 1
    assert log.stderr[0] == "Traceback (most recent call last):"
    assert log.stderr[-1] == "ZeroDivisionError: division by zero"
    # the traceback reads as from `python script.py`: no frames of the pool's machinery
    assert not any("runpy" in line or "_zygote" in line for line in log.stderr)


async def test_python_warm_and_cold_see_the_same_world(python_executor: LocalExecutor) -> None:
    log = Log()
    code = (
        "import os, sys, tempfile\n"
        "print(os.getcwd() == os.environ['HOME'])\n"
        "print(tempfile.gettempdir() == os.environ['TMPDIR'])\n"
        "print(sys.path[0] == os.path.dirname(os.path.abspath(sys.argv[0])))\n"
        "print(sys.stdin.read() == '')\n"
        "print(sys.stdout.encoding)\n"
        # the SDK is a global, no import needed, and the module ``import cronium`` gives
        "print(cronium.__name__, cronium is sys.modules['cronium'], callable(cronium.output))\n"
        "print(__name__, __file__ == sys.argv[0], len(sys.argv))\n"
    )
    outcome = await python_executor.execute(request("python", code), log)
    assert log.stderr == []
    assert outcome.succeeded
    assert log.stdout == [
        "True", "True", "True", "True", "utf-8", "cronium True True", "__main__ True 1"
    ]  # fmt: skip


@needs_node
async def test_node_script(executor: LocalExecutor) -> None:
    log = Log()
    code = (
        "console.log('one'); console.error('warn'); console.log(process.env.CRONIUM_EXECUTION_ID);"
        "process.exitCode = 2;"
    )
    outcome = await executor.execute(request("node", code), log)
    assert outcome.exit_code == 2
    assert log.stdout == ["one", "exec-42"]
    assert log.stderr == ["warn"]


@pytest.mark.parametrize("language", ["bash", "python"])
async def test_environment_is_the_jobs_not_the_workers(
    python_executor: LocalExecutor, language: str, tmp_path: Path
) -> None:
    names = ["GREETING", "CRONIUM_EXECUTION_ID", CANARY, "LANG", "HOME", "TMPDIR", "PATH"]
    if language == "bash":
        code = "".join(f'echo "{name}=${{{name}:-<unset>}}"\n' for name in names)
    else:
        code = f"import os\nfor n in {names!r}: print(f'{{n}}=' + os.environ.get(n, '<unset>'))"
    log = Log()
    outcome = await python_executor.execute(request(language, code, env={"GREETING": "hi"}), log)
    assert outcome.succeeded
    seen = dict(line.split("=", 1) for line in log.stdout)
    assert seen["GREETING"] == "hi"
    assert seen["CRONIUM_EXECUTION_ID"] == "exec-42"
    assert os.environ[CANARY] == "hunter2"
    assert seen[CANARY] == "<unset>"
    assert seen["LANG"] == "C.UTF-8"
    assert seen["HOME"].startswith(str(tmp_path / "cronium-job-"))
    assert seen["TMPDIR"] == seen["HOME"]
    assert seen["PATH"] == os.environ["PATH"]


async def test_bash_without_sdk_sees_plain_script(executor: LocalExecutor) -> None:
    log = Log()
    await executor.execute(request("bash", 'echo "$0"; echo "$#"'), log)
    assert log.stdout[0].endswith("/.cronium-job.sh")
    assert log.stdout[1] == "0"


async def test_work_dir_is_removed_even_when_locked(
    python_executor: LocalExecutor, tmp_path: Path
) -> None:
    log = Log()
    code = (
        "import os\n"
        "os.makedirs('a/b')\n"
        "open('a/b/f', 'w').write('x')\n"
        "os.chmod('a/b', 0o500)\n"
        "os.chmod('a', 0o500)\n"
        "print(os.getcwd())\n"
    )
    outcome = await python_executor.execute(request("python", code), log)
    assert outcome.succeeded
    assert entries(tmp_path) == []


async def test_work_dir_is_removed_when_the_script_is_gone(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    code = 'rm -- "$0"\necho left > left.txt\nmkdir -p a/b\n'
    outcome = await executor.execute(request("bash", code), Log())
    assert outcome.succeeded
    assert entries(tmp_path) == []


@pytest.mark.parametrize("node", ["/nowhere/node", "no-such-node"])
@pytest.mark.parametrize("started", [True, False], ids=["zygote", "no zygote"])
async def test_missing_interpreter(tmp_path: Path, node: str, started: bool) -> None:
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": str(tmp_path), "node": node})
        if started:
            await local.start(stack)
        log = Log()
        outcome = await local.execute(request("node", "1"), log)
        assert outcome.exit_code is None
        assert outcome.error == f"cannot start {node}: No such file or directory"
        assert log.of(Stream.SYSTEM) == [outcome.error]
        assert entries(tmp_path) == []


async def test_interpreter_found_on_the_jobs_path(executor: LocalExecutor, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_node = bin_dir / "node"
    fake_node.write_text('#!/bin/bash\necho "fake node runs ${@: -1}"\n')
    fake_node.chmod(0o755)
    (bin_dir / "not-a-program").mkdir()  # skipped over, as by a shell
    env = {"PATH": f"{bin_dir / 'not-a-program'}:{bin_dir}:/usr/bin:/bin"}
    log = Log()
    outcome = await executor.execute(request("node", "1", env=env), log)
    assert outcome.succeeded, log.lines
    assert log.stdout[0].startswith("fake node runs /")


async def test_jobs_start_clean(executor: LocalExecutor) -> None:
    """No descriptor but the standard streams (not even another job's), stdin at its end,
    no signal ignored or blocked (the zygote ignores SIGINT, and like any Python SIGPIPE)."""
    other = Log()
    other.wanted = 1
    sleeper = "echo started\nexec sleep 1000"
    log = Log()
    code = "ls /proc/self/fd | tr '\\n' ' '; echo\ncat\ngrep -E '^Sig(Blk|Ign)' /proc/self/status\n"
    async with anyio.create_task_group() as tg:
        tg.start_soon(executor.execute, request("bash", sleeper), other)
        await other.arrived.wait()
        outcome = await executor.execute(request("bash", code), log)
        tg.cancel_scope.cancel()
    assert outcome.succeeded
    fds, blocked, ignored = log.stdout
    assert fds == "0 1 2 3 ", "ls lists the directory through one more descriptor, 3"
    assert blocked == "SigBlk:\t0000000000000000"
    # but for the two that glibc keeps to itself (32 and 33), which its posix_spawn leaves
    # ignored: it sets their handlers when it needs them
    assert ignored.startswith("SigIgn:")
    assert int(ignored.split()[1], 16) & ~(1 << 31 | 1 << 32) == 0


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match=r"executors\.local\.colour"):
        LocalExecutor({"colour": "blue"})
    with pytest.raises(ValidationError, match="must be a bool"):
        LocalExecutor({"warm_python": "yes"})


def test_can_run_only_scripts() -> None:
    local = LocalExecutor()
    assert local.can_run(Script(language="bash", code="true"))
    assert not local.can_run(HttpRequest(url="http://127.0.0.1/"))


# --- output edge cases ------------------------------------------------------------------


async def test_long_line_truncated(python_executor: LocalExecutor) -> None:
    log = Log()
    code = "print('x' * 200_000)\nprint('é' * 100_000)\nprint('after')"
    await python_executor.execute(request("python", code), log)
    assert log.stdout[0] == "x" * MAX_LINE_BYTES + TRUNCATION_MARKER
    assert log.stdout[1] == "é" * (MAX_LINE_BYTES // 2) + TRUNCATION_MARKER
    assert log.stdout[2] == "after"
    assert len(log.stdout) == 3


async def test_invalid_utf8_replaced(python_executor: LocalExecutor) -> None:
    log = Log()
    code = "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"
    await python_executor.execute(request("python", code), log)
    assert log.stdout == ["ok \ufffd\ufffd end"]


async def test_flood_arrives_complete_and_in_order(python_executor: LocalExecutor) -> None:
    log = Log()
    code = (
        "import sys\n"
        "out = sys.stdout.write\n"
        "err = sys.stderr.write\n"
        "for i in range(100_000):\n"
        "    out(f'{i}\\n')\n"
        "    if i % 10 == 0: err(f'e{i}\\n')\n"
    )
    outcome = await python_executor.execute(request("python", code), log)
    assert outcome.succeeded
    assert log.stdout == [str(i) for i in range(100_000)]
    assert log.stderr == [f"e{i}" for i in range(0, 100_000, 10)]


# --- stopping -----------------------------------------------------------------------------


@pytest.mark.fault
async def test_timeout_kills_bash_and_its_grandchild(executor: LocalExecutor) -> None:
    log = Log()
    log.wanted = 2
    code = "sleep 1000 &\necho $!\necho $$\nwait\n"
    begin = anyio.current_time()
    with pytest.raises(TimeoutError), anyio.fail_after(1):
        await executor.execute(request("bash", code), log)
    assert anyio.current_time() - begin < 1 + KILL_GRACE + 1
    grandchild, shell = (int(pid) for pid in log.stdout)
    assert not alive(grandchild)
    assert not alive(shell)
    assert group_members(shell) == []


@pytest.mark.fault
async def test_timeout_kills_python_that_ignores_sigterm(python_executor: LocalExecutor) -> None:
    log = Log()
    code = (
        "import os, signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '1000'])\n"
        "print(os.getpid(), child.pid, flush=True)\n"
        "time.sleep(1000)\n"
    )
    begin = anyio.current_time()
    with pytest.raises(TimeoutError), anyio.fail_after(1):
        await python_executor.execute(request("python", code), log)
    took = anyio.current_time() - begin
    assert 1 + KILL_GRACE * 0.9 < took < 1 + KILL_GRACE + 1, "SIGKILL after the grace"
    main, child = (int(pid) for pid in log.stdout[0].split())
    assert not alive(main)
    assert not alive(child)
    assert group_members(main) == []


async def test_cancel_scope_stops_the_job(python_executor: LocalExecutor) -> None:
    log = Log()
    log.wanted = 1
    code = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(1000)"
    async with anyio.create_task_group() as tg:
        tg.start_soon(python_executor.execute, request("python", code), log)
        await log.arrived.wait()
        tg.cancel_scope.cancel()
    assert not alive(int(log.stdout[0]))


async def test_leftovers_stopped_when_the_script_ends(executor: LocalExecutor) -> None:
    log = Log()
    with anyio.fail_after(10):
        outcome = await executor.execute(request("bash", "sleep 1000 &\necho $!\n"), log)
    assert outcome.succeeded
    assert not alive(int(log.stdout[0]))
    assert log.of(Stream.SYSTEM) == ["stopped the processes the script left running"]


@pytest.mark.fault
async def test_output_held_by_an_escaped_process_is_abandoned(executor: LocalExecutor) -> None:
    log = Log()
    escaped = 0
    try:
        with anyio.fail_after(10):
            code = (
                "import subprocess\n"
                "sleeper = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
                "print(sleeper.pid)\n"
            )
            outcome = await executor.execute(request("python", code), log)
        escaped = int(log.stdout[0])
        assert outcome.succeeded
        assert any("stopped reading output" in line for line in log.of(Stream.SYSTEM))
    finally:
        if escaped:
            os.kill(escaped, signal.SIGKILL)


# --- the warm pool ------------------------------------------------------------------------


async def test_pool_runs_many_jobs_at_once(executor: LocalExecutor) -> None:
    zygote = executor.zygote_pid
    logs = [Log() for _ in range(20)]
    outcomes = {}
    code = "import os\nprint(os.environ['N'], os.getppid())\nraise SystemExit(int(os.environ['N']))"

    async def run(n: int) -> None:
        outcomes[n] = await executor.execute(request("python", code, env={"N": str(n)}), logs[n])

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(run, n)
    for n in range(20):
        assert outcomes[n].exit_code == n
        assert logs[n].stdout == [f"{n} {zygote}"], "forked by the zygote"


async def test_python_env_vars_that_shape_startup_spawn_cold(executor: LocalExecutor) -> None:
    log = Log()
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    code = (
        "import os, sys\nprint(os.getppid(), sys.flags.dont_write_bytecode, 'json' in sys.modules)"
    )
    await executor.execute(request("python", code, env=env), log)
    # a fresh interpreter (its flags are the job's; nothing of the zygote's is imported),
    # started by the zygote all the same
    assert log.stdout == [f"{executor.zygote_pid} 1 False"]


@pytest.mark.fault
async def test_zygote_killed_is_survived(executor: LocalExecutor) -> None:
    zygote = executor.zygote_pid
    assert zygote is not None
    os.kill(zygote, signal.SIGKILL)
    log = Log()
    outcome = await executor.execute(request("python", "print('still here')"), log)
    assert outcome.succeeded
    assert log.stdout == ["still here"]

    with anyio.fail_after(5):
        while executor.zygote_pid in (None, zygote):
            await anyio.sleep(0.02)
    log = Log()
    await executor.execute(request("python", "import os\nprint(os.getppid())"), log)
    assert log.stdout == [str(executor.zygote_pid)]


@pytest.mark.fault
async def test_job_outlives_a_dying_zygote(executor: LocalExecutor) -> None:
    zygote = executor.zygote_pid
    assert zygote is not None
    log = Log()
    log.wanted = 1
    outcomes = []
    code = "import time\nprint('a', flush=True)\ntime.sleep(0.3)\nprint('b')"

    async def run() -> None:
        outcomes.append(await executor.execute(request("python", code), log))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await log.arrived.wait()
        os.kill(zygote, signal.SIGKILL)
    assert log.stdout == ["a", "b"], "the job ran to its end"
    [outcome] = outcomes
    assert outcome.exit_code is None
    assert outcome.error is not None
    assert "zygote" in outcome.error


WORKER = """
import sys, anyio
from contextlib import AsyncExitStack
from cronium_core.events import Script
from cronium_core.executors import ExecutionRequest
from cronium_executors.local import LocalExecutor

async def emit(stream, text):
    print(text, flush=True)

async def main():
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": sys.argv[1]})
        await local.start(stack)
        code = "import os, time\\nprint(os.getpid(), flush=True)\\ntime.sleep(1000)"
        request = ExecutionRequest(
            job_id="j", attempt=1, event_id="e", event_name="n", input=None, env={},
            action=Script(language="python", code=code), timeout=1000,
        )
        await local.execute(request, emit)

anyio.run(main)
"""


@pytest.mark.fault
async def test_jobs_of_a_killed_worker_end_and_their_directories_go(tmp_path: Path) -> None:
    """kill -9 of the worker: the zygote takes its jobs along; the next executor started on
    the same directory removes what the dead worker left there."""
    worker = await anyio.open_process([sys.executable, "-c", WORKER, str(tmp_path)], stderr=None)
    try:
        assert worker.stdout is not None
        with anyio.fail_after(10):
            job = int(await worker.stdout.receive())
        worker.kill()
        await worker.wait()
    finally:
        await worker.aclose()
    with anyio.fail_after(5):
        while alive(job):
            await anyio.sleep(0.02)
    [left] = entries(tmp_path)
    assert left.name.startswith(f"cronium-job-{worker.pid}-")
    mine = tmp_path / f"cronium-job-{os.getpid()}-abc"
    mine.mkdir()
    other = tmp_path / "cronium-job-not-a-pid"
    other.mkdir()
    async with AsyncExitStack() as stack:
        await LocalExecutor({"work_root": str(tmp_path), "warm_python": False}).start(stack)
    assert sorted(entries(tmp_path)) == [mine, other]


async def test_pool_stops_with_the_exit_stack(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        local = LocalExecutor({"work_root": str(tmp_path)})
        await local.start(stack)
        zygote = local.zygote_pid
        assert zygote is not None
    assert not alive(zygote)


# --- the SDK ------------------------------------------------------------------------------


def test_sdk_paths_installed_layout(tmp_path: Path) -> None:
    package = tmp_path / "site-packages" / "cronium_executors"
    (package / "_sdk" / "python" / "cronium").mkdir(parents=True)
    (package / "_sdk" / "node").mkdir()
    (package / "_sdk" / "bash").mkdir()
    (package / "_sdk" / "bash" / "cronium.sh").write_text("cronium_hello() { :; }\n")
    paths = sdk_paths(package)
    assert paths.python == (package / "_sdk" / "python",)
    assert paths.node == (package / "_sdk" / "node",)
    assert paths.bash == package / "_sdk" / "bash" / "cronium.sh"


def test_sdk_paths_source_checkout() -> None:
    paths = sdk_paths()
    repo = Path(__file__).resolve().parent.parent
    assert paths.python == (repo / "sdk" / "python" / "src",)


async def test_bash_sdk_is_sourced_first(tmp_path: Path) -> None:
    sdk = tmp_path / "sdk.sh"
    sdk.write_text('cronium_greet() { echo "hi $1"; }\n')
    local = LocalExecutor({"work_root": str(tmp_path)})
    local.sdk = attrs.evolve(local.sdk, bash=sdk)
    log = Log()
    outcome = await local.execute(request("bash", 'cronium_greet there\necho "$0"'), log)
    assert outcome.succeeded, log.lines
    assert log.stdout[0] == "hi there"
    assert log.stdout[1].endswith("/.cronium-job.sh")


if sys.platform != "linux":  # /proc is how these tests see processes
    pytestmark = [pytest.mark.anyio, pytest.mark.skip(reason="needs Linux")]
