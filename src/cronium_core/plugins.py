"""Builds the plugin manager (never at import time) and the executor registry."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from . import hookspecs
from .errors import ExecutorNotFound
from .executors import Executor

__all__ = ["ExecutorRegistry", "load_executors", "make_plugin_manager"]

#: comma-separated entry-point names that are not loaded (``CRONIUM_BLOCK_PLUGINS=foo,bar``)
BLOCK_ENV = "CRONIUM_BLOCK_PLUGINS"


class ExecutorRegistry:
    """Collects executor classes from the ``cronium_register_executors`` hook."""

    def __init__(self) -> None:
        self._factories: dict[str, Callable[[Mapping[str, Any]], Executor]] = {}

    def add(self, name: str, factory: Callable[[Mapping[str, Any]], Executor]) -> None:
        if name in self._factories:
            raise ValueError(f"executor {name!r} registered twice")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def default_names(self) -> list[str]:
        """The executors a Cronium starts when not told which: all but those that need an
        outside engine (``enabled_by_default = False`` on the class: docker, podman)."""
        return [
            name
            for name, factory in sorted(self._factories.items())
            if getattr(factory, "enabled_by_default", True)
        ]

    def create(self, name: str, config: Mapping[str, Any] | None = None) -> Executor:
        try:
            factory = self._factories[name]
        except KeyError:
            raise ExecutorNotFound(name, self.names()) from None
        return factory(config or {})


def make_plugin_manager(
    *, extra_plugins: Iterable[object] = (), load_entry_points: bool = True
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in filter(None, os.environ.get(BLOCK_ENV, "").split(",")):
        pm.set_blocked(name.strip())
    if load_entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    for plugin in extra_plugins:
        pm.register(plugin)
    return pm


def load_executors(pm: pluggy.PluginManager) -> ExecutorRegistry:
    registry = ExecutorRegistry()
    pm.hook.cronium_register_executors(register=registry)
    return registry
