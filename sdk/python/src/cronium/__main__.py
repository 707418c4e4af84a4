"""``python -m cronium SCRIPT [ARG ...]``: run SCRIPT as ``python SCRIPT [ARG ...]`` would, with
the SDK already there as the global ``cronium`` (no ``import cronium`` needed), as Cronium's
executors run Python jobs.

The script is ``__main__``, ``sys.argv`` is ``[SCRIPT, ARG, ...]`` and ``sys.path[0]`` is the
script's directory; an uncaught exception prints the script's own traceback (without this
module's and ``runpy``'s frames) and exits with status 1; ``sys.exit`` works as usual.
"""

from __future__ import annotations

import runpy
import sys

import cronium
from cronium._run import prepare, report, script_traceback

USAGE = "usage: python -m cronium SCRIPT [ARG ...]"


def main(argv: list[str]) -> int:
    script = prepare(argv, USAGE)
    try:
        runpy.run_path(script, init_globals={"cronium": cronium}, run_name="__main__")
    except Exception as exc:
        if isinstance(exc, OSError) and script_traceback(exc.__traceback__, script) is None:
            print(f"python -m cronium: can't open file {script!r}: {exc}", file=sys.stderr)
            return 2  # the script could not be read
        report(exc, script)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
