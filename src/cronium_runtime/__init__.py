"""The runtime API (ARCHITECTURE §9): a Starlette app around
:class:`cronium_core.runtime.RuntimeService`, served in process or as a sidecar."""

from __future__ import annotations

from .app import create_app
from .server import runtime_env_factory, serve

__all__ = ["create_app", "runtime_env_factory", "serve"]
