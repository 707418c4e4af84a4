"""pluggy hook specifications. Plugins register through the entry-point group ``cronium``.

Hooks are synchronous registrars; the behaviour lives on the registered classes::

    @hookimpl
    def cronium_register_executors(register):
        register.add("docker", DockerExecutor)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .plugins import ExecutorRegistry
    from .runtime import RuntimeServer
    from .tools import ToolRegistry

PROJECT = "cronium"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cronium_register_executors(register: ExecutorRegistry) -> None:
    """Add executor classes: ``register.add(name, cls)``; ``cls(config)`` builds one."""


@hookspec(firstresult=True)
def cronium_runtime_server() -> RuntimeServer | None:
    """Return the function that serves the runtime API for a worker in this process
    (``cronium_runtime`` provides one). Without it, scripts get no runtime API."""


@hookspec
def cronium_register_tools(register: ToolRegistry) -> None:
    """Add tools for tool actions: ``register.add(name, tool)``, where ``tool`` has
    ``async def execute(action, config, context) -> result`` (see ``cronium_core.tools``)."""
