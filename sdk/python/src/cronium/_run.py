"""How Cronium's executors start a Python job in a fresh interpreter::

    python -c "import cronium._run; cronium._run.main()" SCRIPT [ARG ...]

The ``-c`` line binds ``cronium`` in ``__main__``, and :func:`main` runs SCRIPT there, as
``python SCRIPT [ARG ...]`` would: the script's code in ``__main__``'s namespace, ``sys.argv``
``[SCRIPT, ARG, ...]``, the script's directory first on ``sys.path``, its own traceback on an
uncaught exception (exit status 1). So the SDK is a global of every script, for ~1 ms; ``python
-m cronium`` does the same for people (its ``runpy`` and ``pkgutil`` cost ~10 ms a start).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

USAGE = "usage: python -c 'import cronium._run; cronium._run.main()' SCRIPT [ARG ...]"


def script_traceback(tb: TracebackType | None, script: str) -> TracebackType | None:
    """``tb`` from the script's first frame on, as ``python SCRIPT`` shows it."""
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    return tb


def report(exc: BaseException, script: str) -> None:
    """Print an uncaught exception of the script as the interpreter would."""
    tb = script_traceback(exc.__traceback__, script)
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)


def prepare(argv: list[str], usage: str) -> str:
    """Set ``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT [ARG ...]`` would (``-c`` and
    ``-m`` put something else first on the path); the script, or exit 2 with ``usage``."""
    if not argv or argv[0].startswith("-"):
        print(usage, file=sys.stderr)
        sys.exit(2)
    script = argv[0]
    sys.argv = list(argv)
    if not getattr(sys.flags, "safe_path", False):
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    return script


def main() -> None:
    script = prepare(sys.argv[1:], USAGE)  # after "-c"
    try:
        with open(script, "rb") as file:
            source = file.read()
    except OSError as exc:
        print(f"python: can't open file {script!r}: {exc}", file=sys.stderr)
        sys.exit(2)
    namespace = sys.modules["__main__"].__dict__
    namespace["__file__"] = script
    try:
        exec(compile(source, script, "exec"), namespace)
    except Exception as exc:  # SystemExit and KeyboardInterrupt go on as they would
        report(exc, script)
        sys.exit(1)
