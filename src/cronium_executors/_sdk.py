"""Where the Cronium SDKs are, so that scripts can use them without installing anything.

Two layouts are known:

- an installed wheel ships them inside this package: ``cronium_executors/_sdk/python/``
  (holding the ``cronium`` package), ``_sdk/node/`` and ``_sdk/bash/cronium.sh``;
- a source checkout has them at ``<repo>/sdk/python/src``, ``<repo>/sdk/node`` and
  ``<repo>/sdk/bash/cronium.sh``.

The node directory goes on ``NODE_PATH``, so it must hold the module as ``cronium/`` (with
its ``package.json`` or ``index.js``) for ``require("cronium")`` to find it.
"""

from __future__ import annotations

from pathlib import Path

import attrs

__all__ = ["PYTHON_WITH_SDK", "SdkPaths", "sdk_paths"]

#: ``python -c PYTHON_WITH_SDK SCRIPT [ARG ...]`` runs SCRIPT as ``python SCRIPT`` would, with
#: the SDK a global (``cronium._run``); ``python -m cronium`` does too, but its ``runpy`` costs
#: ~10 ms a start
PYTHON_WITH_SDK = "import cronium._run; cronium._run.main()"

_PACKAGE = Path(__file__).resolve().parent


@attrs.frozen(kw_only=True)
class SdkPaths:
    #: directories for ``PYTHONPATH``
    python: tuple[Path, ...] = ()
    #: directories for ``NODE_PATH``
    node: tuple[Path, ...] = ()
    #: a file bash sources before the script
    bash: Path | None = None


def sdk_paths(package_dir: Path = _PACKAGE) -> SdkPaths:
    """The SDK locations that exist; where both layouts have one, the installed copy wins."""
    roots = [package_dir / "_sdk"]
    # src/cronium_executors -> the repository root of a source checkout
    checkout = package_dir.parent.parent / "sdk"
    python = [roots[0] / "python", checkout / "python" / "src"]
    node = [roots[0] / "node", checkout / "node"]
    bash = [roots[0] / "bash" / "cronium.sh", checkout / "bash" / "cronium.sh"]
    return SdkPaths(
        python=tuple(p for p in python if p.is_dir())[:1],
        node=tuple(p for p in node if p.is_dir())[:1],
        bash=next((p for p in bash if p.is_file()), None),
    )
