"""Helper programs that reliability tests start as real OS processes, and how to start them.

Each module here runs with ``python -m tests.procs.NAME`` from the project root, so that it can
share code with the tests that start it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ROOT", "expect_line", "spawn", "spawned"]

ROOT = Path(__file__).resolve().parents[2]


def spawn(module: str, *args: str) -> subprocess.Popen[str]:
    """Start ``tests.procs.<module>`` with this interpreter; stdin/stdout are line pipes."""
    return subprocess.Popen(
        [sys.executable, "-m", f"tests.procs.{module}", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


@contextmanager
def spawned(procs: Sequence[subprocess.Popen[str]]) -> Iterator[Sequence[subprocess.Popen[str]]]:
    """Kill (by pid) whatever is still running when the block ends, and close the pipes."""
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def expect_line(proc: subprocess.Popen[str], prefix: str) -> str:
    """Read one line from ``proc``; fail with its stderr when it is not ``prefix...``."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(prefix):
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"expected {prefix!r} from {proc.args}, got {line!r}; stderr:\n{err}")
    return line.strip()
