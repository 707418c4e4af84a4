"""The read cache of variables (:class:`VariableCache`), with its optional shared layer in
Valkey or Redis (:class:`ValkeyCache`); used by :class:`~cronium_core.variables.VariableStore`.

In process, entries live for ``ttl`` seconds and are emptied for a key on every write made
through this process. Without a shared layer, *another* process's write is seen once the local
entry expires. With a :class:`ValkeyCache` every read first asks Valkey/Redis for the key's
version, which every write replaces after it commits: a write made through any process is seen
by the next read of every other process. Rows are cached as stored (:class:`StoredRow`): a
secret stays encrypted in every cache, in memory and in Valkey.

A miss whose variable is being read from the database already waits for that read instead of
making its own, provided no write went through this process since that read began; if that
read fails, each waiting caller reads for itself. If Valkey cannot be reached, reads go to the
database (correct, slower) and a warning is logged.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, NamedTuple

import anyio
import attrs

from .errors import ValidationError

__all__ = ["Lookup", "StoredRow", "ValkeyCache", "VariableCache"]

log = logging.getLogger("cronium.variables")


@attrs.frozen(kw_only=True)
class StoredRow:
    """A row as stored: what the caches hold (a secret still sealed)."""

    id: str
    owner: str
    key: str
    value: Any
    ciphertext: str | None
    secret: bool
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoredRow:
        data = dict(data)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["updated_at"] = datetime.fromisoformat(data["updated_at"])
        return cls(**data)


class Lookup(NamedTuple):  # one per read: a tuple is built in a fraction of an attrs class
    owner: str
    key: str
    hit: bool
    row: StoredRow | None
    #: the shared version this read was made under; None without a shared layer
    version: str | None
    #: the local write count when the read began: a write since then forbids the fill
    writes: int
    #: the shared layer failed: neither use nor fill any cache
    bypass: bool = False
    #: a miss: the database read that lookups of the same variable wait for
    flight: _Flight | None = None


@attrs.define(eq=False)
class _Flight:
    """A database read of one variable in progress. Lookups of the same variable (same
    version, no local write since) wait for it instead of reading the database again."""

    done: anyio.Event = attrs.field(factory=anyio.Event)
    row: StoredRow | None = None
    #: False: the read failed (or was cancelled); whoever waited reads for itself
    ok: bool = False


@attrs.define(eq=False)
class _Entry:
    row: StoredRow | None
    version: str | None
    expires: float


@attrs.define(kw_only=True, eq=False)
class ValkeyCache:
    """The shared layer of :class:`VariableCache`, in Valkey or Redis (``valkey`` package).

    Per variable it holds a *version* (a random token, replaced by every write, so that a
    version never comes back after an eviction or a restart) and the row read under each
    version. A row read under an old version is never served once the version has moved on.
    """

    url: str
    prefix: str = "cronium:variables"
    #: seconds a row stays in Valkey
    ttl: float = 300.0
    #: seconds a version lives without writes (a version that expires is simply replaced)
    version_ttl: int = 86_400
    timeout: float = 2.0
    _client: Any = attrs.field(init=False, default=None)
    _errors: tuple[type[BaseException], ...] = attrs.field(init=False, default=(OSError,))

    async def start(self, exit_stack: AsyncExitStack) -> None:
        try:
            from valkey import asyncio as valkey
            from valkey.exceptions import ValkeyError
        except ImportError:
            raise ValidationError(
                "valkey_url", "a shared cache needs the valkey package: pip install cronium[valkey]"
            ) from None
        self._errors = (ValkeyError, OSError)
        self._client = valkey.Valkey.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        exit_stack.push_async_callback(self._client.aclose)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("ValkeyCache used before start() (VariableStore.start)")
        return self._client

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        """What a call may raise when Valkey is unreachable or unwell."""
        return self._errors

    def _ident(self, owner: str, key: str) -> str:
        # hashed: the owner's name and the key stay out of Valkey's key space
        return hashlib.sha256(json.dumps([owner, key]).encode()).hexdigest()[:40]

    async def version(self, owner: str, key: str) -> str:
        name = f"{self.prefix}:v:{self._ident(owner, key)}"
        found = await self.client.get(name)
        if found is None:
            fresh = uuid.uuid4().hex
            if await self.client.set(name, fresh, nx=True, ex=self.version_ttl):
                return fresh
            found = await self.client.get(name)
            if found is None:  # expired in between: a version nobody else holds is safe
                return fresh
        return bytes(found).decode()

    async def get(self, owner: str, key: str, version: str) -> tuple[bool, StoredRow | None]:
        """(found, row): found False when nothing is cached for this version."""
        raw = await self.client.get(f"{self.prefix}:d:{self._ident(owner, key)}:{version}")
        if raw is None:
            return False, None
        data = json.loads(raw)
        row = StoredRow.from_json(data["row"]) if data["row"] is not None else None
        if row is not None and (row.owner, row.key) != (owner, key):
            # not what this process wrote there: someone with access to Valkey put another
            # variable's row (another user's secret?) under this one's name; read the database
            log.warning("the shared cache held another variable's row; ignored")
            return False, None
        return True, row

    async def put(self, owner: str, key: str, version: str, row: StoredRow | None) -> None:
        payload = json.dumps({"row": row.to_json() if row is not None else None})
        name = f"{self.prefix}:d:{self._ident(owner, key)}:{version}"
        await self.client.set(name, payload, px=max(1, int(self.ttl * 1000)))

    async def bump(self, keys: Iterable[tuple[str, str]]) -> None:
        """Give each variable a new version: every cached row of it is dead."""
        async with self.client.pipeline(transaction=False) as pipe:
            for owner, key in keys:
                name = f"{self.prefix}:v:{self._ident(owner, key)}"
                pipe.set(name, uuid.uuid4().hex, ex=self.version_ttl)
            await pipe.execute()


@attrs.define(kw_only=True, eq=False)
class VariableCache:
    """The read cache of a :class:`VariableStore`: in process (a dict with a time to live),
    checked against a :class:`ValkeyCache` when one is given. Absent variables are cached
    too (scripts often ask for variables that do not exist)."""

    #: seconds a local entry lives
    ttl: float = 5.0
    max_entries: int = 10_000
    shared: ValkeyCache | None = None
    monotonic: Callable[[], float] = time.monotonic
    #: reads served without the database (from memory or from Valkey)
    hits: int = attrs.field(init=False, default=0)
    #: of those, the ones Valkey served
    shared_hits: int = attrs.field(init=False, default=0)
    #: of those, the ones that waited for another lookup's database read of the same variable
    joined_hits: int = attrs.field(init=False, default=0)
    #: reads that went to the database
    misses: int = attrs.field(init=False, default=0)
    _entries: dict[tuple[str, str], _Entry] = attrs.field(init=False, factory=dict)
    #: (owner, key, version, write count) -> the database read in progress
    _flights: dict[tuple[str, str, str | None, int], _Flight] = attrs.field(
        init=False, factory=dict
    )
    _writes: int = attrs.field(init=False, default=0)
    _warned_at: float | None = attrs.field(init=False, default=None)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        if self.shared is not None:
            await self.shared.start(exit_stack)

    def __len__(self) -> int:
        return len(self._entries)

    async def lookup(self, owner: str, key: str) -> Lookup:
        ident = (owner, key)
        version: str | None = None
        if self.shared is not None:
            try:
                version = await self.shared.version(owner, key)
            except self.shared.errors as exc:
                return self._bypass(owner, key, exc)
        entry = self._entries.get(ident)
        if entry is not None:
            if entry.expires > self.monotonic() and entry.version == version:
                self.hits += 1
                return Lookup(owner, key, True, entry.row, version, self._writes)
            del self._entries[ident]
        if self.shared is not None and version is not None:
            try:
                found, row = await self.shared.get(owner, key, version)
            except self.shared.errors as exc:
                return self._bypass(owner, key, exc)
            if found:
                self.hits += 1
                self.shared_hits += 1
                self._keep(ident, row, version)
                return Lookup(owner, key, True, row, version, self._writes)
        # a miss: if this variable is being read already (an entry just expired, and every
        # script asks for it at once), wait for that read rather than make another
        writes = self._writes
        flight = self._flights.get((owner, key, version, writes))
        if flight is not None:
            await flight.done.wait()
            if flight.ok:
                self.hits += 1
                self.joined_hits += 1
                return Lookup(owner, key, True, flight.row, version, writes)
            self.misses += 1  # that read failed: this one is on its own
            return Lookup(owner, key, False, None, version, writes)
        self.misses += 1
        flight = self._flights[(owner, key, version, writes)] = _Flight()
        return Lookup(owner, key, False, None, version, writes, flight=flight)

    def abandon(self, lookup: Lookup) -> None:
        """The database read after a missed ``lookup`` failed: whoever waits for it reads
        for itself."""
        self._land(lookup, None, ok=False)

    def _land(self, lookup: Lookup, row: StoredRow | None, *, ok: bool) -> None:
        flight = lookup.flight
        if flight is None or flight.done.is_set():
            return
        ident = (lookup.owner, lookup.key, lookup.version, lookup.writes)
        if self._flights.get(ident) is flight:
            del self._flights[ident]
        flight.row, flight.ok = row, ok
        flight.done.set()

    async def fill(self, lookup: Lookup, row: StoredRow | None) -> None:
        """Cache what the database said after a missed ``lookup``."""
        self._land(lookup, row, ok=True)
        if lookup.bypass or lookup.hit or lookup.writes != self._writes:
            return  # a write began meanwhile: what was read may be older than it
        self._keep((lookup.owner, lookup.key), row, lookup.version)
        if self.shared is not None and lookup.version is not None:
            try:
                await self.shared.put(lookup.owner, lookup.key, lookup.version, row)
            except self.shared.errors as exc:
                self._warn(exc)

    async def invalidate(self, keys: Iterable[tuple[str, str]]) -> None:
        """Forget these variables (after their write has committed), here and everywhere."""
        keys = builtins.list(keys)
        self.forget_here(keys)
        if self.shared is not None and keys:
            try:
                await self.shared.bump(keys)
            except self.shared.errors:
                log.exception(
                    "could not publish a variable write to the shared cache; other processes "
                    "may read the old value for up to %g s",
                    max(self.ttl, self.shared.ttl),
                )

    def forget_here(self, keys: Iterable[tuple[str, str]]) -> None:
        """The in-process part of :meth:`invalidate`: all of it without a shared layer."""
        self._writes += 1
        for ident in keys:
            self._entries.pop(ident, None)

    def _keep(self, ident: tuple[str, str], row: StoredRow | None, version: str | None) -> None:
        self._entries.pop(ident, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest fill goes first
        self._entries[ident] = _Entry(row, version, self.monotonic() + self.ttl)

    def _bypass(self, owner: str, key: str, exc: BaseException) -> Lookup:
        self._warn(exc)
        self._entries.pop((owner, key), None)
        self.misses += 1
        return Lookup(owner, key, False, None, None, self._writes, bypass=True)

    def _warn(self, exc: BaseException) -> None:
        now = self.monotonic()
        if self._warned_at is None or now - self._warned_at >= 60:
            self._warned_at = now
            log.warning("shared variable cache unavailable (%s); reading the database",
                        type(exc).__name__)  # fmt: skip
