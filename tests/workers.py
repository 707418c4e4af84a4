"""A real ``cronium worker`` process for fault tests (test_faults, test_container_faults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio


class WorkerProcess:
    """``cronium --db URL worker ARGS...``, its output in ``log``."""

    def __init__(self, db_url: str, log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cronium_web.cli", "--db", db_url, "worker", *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log.read_text()

    async def wait_ready(self, timeout: float = 60) -> None:
        with anyio.fail_after(timeout):
            while "running (executors" not in self.output:
                assert self.proc.poll() is None, self.output
                await anyio.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 20) -> int:
        with anyio.fail_after(timeout):
            while (code := self.proc.poll()) is None:
                await anyio.sleep(0.05)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
