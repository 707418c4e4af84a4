"""Variables: a user's named JSON values, which scripts read and write through the runtime API
(ARCHITECTURE §4, §9), some of them secrets (RELIABILITY §9.6).

:class:`VariableStore` keeps them in the ``variables`` table, one row per (owner, key):

- a plain variable's value is stored as JSON;
- a secret's value is encrypted by a :class:`~cronium_core.crypto.Cipher` and bound to its row
  (table, row id, owner, key), so that no plaintext of a secret is ever written to the database
  and a ciphertext moved to another row does not decrypt (K1, K2);
- :meth:`VariableStore.rotate` re-encrypts, batch by batch, the secrets sealed by a key that is
  no longer the current one; rerun it after a crash, it carries on (K3).

Reads go through a :class:`~cronium_core.variable_cache.VariableCache` (in process, and in
Valkey/Redis when configured; see :mod:`cronium_core.variable_cache`), which every write made
through this process empties for its key once the write has committed.

Writes are committed in groups: the first writer to find no group under way leads; it lets
the event loop turn once, so that the writes arriving meanwhile join it, and commits them all
in one transaction (one read of the rows, one insert and one update statement for the lot;
on SQLite in place on a plain ``sqlite3`` connection when the database is free for writing,
else in one trip to a thread, see ``DataStore.transact_in_place``). The writers of a group
wait on one event, set once the group is answered; a write left for a later group (over
:data:`MAX_WRITE_GROUP`, or arrived during the commit) is led by one of its writers once the
leader is done. Each write still gets its own answer: written, or refused for its own reason
(a secret too short) without the others being refused. A group that fails as a whole is
retried one write per transaction, so that each caller sees its own error. A caller returns
only once its write has committed and the caches have forgotten the old value.
"""

from __future__ import annotations

import builtins
import functools
import json
import logging
import sqlite3
import time
from contextlib import AsyncExitStack
from datetime import datetime
from typing import Any, cast

import anyio
import anyio.lowlevel
import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from . import schema
from .crypto import Cipher, DecryptionFailed
from .datastore import DataStore, NotInPlace, WriteBusy, new_id
from .errors import Conflict, NotFound, ValidationError
from .masking import MIN_SECRET_LENGTH
from .runtime import check_json_value, check_variable_key
from .variable_cache import Lookup, StoredRow, ValkeyCache, VariableCache

__all__ = [
    "RotationReport",
    "ValkeyCache",
    "Variable",
    "VariableCache",
    "VariableNotFound",
    "VariableStore",
    "check_key",
    "check_secret_value",
    "sealing_context",
]

log = logging.getLogger("cronium.variables")

MAX_OWNER = 64
_table = schema.variables

#: the key rules of the wire contract (1-128 of ``[A-Za-z0-9_.-]``, no reserved prefix)
check_key = check_variable_key


#: seconds a user's secret values are remembered for masking (see secret_values)
SECRETS_TTL = 1.0
#: the most writes committed in one transaction (two bound parameters each in its read)
MAX_WRITE_GROUP = 200
#: transactions tried for a group before its writes go one by one (a concurrent create)
WRITE_TRIES = 3
#: the largest group whose plain values are each first tried by key, one statement each
#: (VariableStore._write_sqlite); a larger one is read at once and updated in one go
ONE_BY_ONE_MAX = 4


class VariableNotFound(NotFound):
    kind = "variable"


def check_secret_value(value: Any) -> str:
    """A secret's value: a string of at least :data:`MIN_SECRET_LENGTH` characters besides
    surrounding whitespace. Shorter ones are refused rather than masked character by
    character in every log (which would both ruin the logs and give the secret away)."""
    if not isinstance(value, str):
        raise ValidationError("value", "a secret must be a string")
    if len(value.strip()) < MIN_SECRET_LENGTH:
        raise ValidationError("value", f"a secret must be at least {MIN_SECRET_LENGTH} characters")
    return value


def _check_owner(owner: str) -> str:
    if not owner or len(owner) > MAX_OWNER:
        raise ValidationError("owner", f"must be 1-{MAX_OWNER} characters")
    return owner


def sealing_context(row_id: str, owner: str, key: str) -> bytes:
    """What a secret's ciphertext is bound to: the table, its row, its owner and its key."""
    return json.dumps(["variables", row_id, owner, key]).encode()


@attrs.frozen(kw_only=True)
class Variable:
    """A variable as callers see it. In listings a secret's ``value`` is ``None``."""

    owner: str
    key: str
    value: Any
    secret: bool
    created_at: datetime
    updated_at: datetime


@attrs.frozen(kw_only=True)
class RotationReport:
    #: secrets re-encrypted under the current key by this run
    rotated: int
    #: (owner, key) of secrets that no held key could decrypt; left as they were
    failed: tuple[tuple[str, str], ...]
    batches: int
    #: False when ``max_batches`` stopped the run before it ran out of rows
    complete: bool


# -- the store ---------------------------------------------------------------------------


def _write_statements() -> tuple[dict[bool, Any], ...]:
    """The statements of a write group, built once: a statement built per call costs
    SQLAlchemy more (its cache key) than running it. Keyed by "locked" (PostgreSQL: ``FOR
    UPDATE``) for the reads, by "secret" (the value column NULL) for the writes."""
    t = _table.c
    columns = (t.id, t.owner, t.key, t.secret, t.created_at)  # not the values: unused
    one = sa.select(*columns).where(t.owner == sa.bindparam("b_owner"),
                                    t.key == sa.bindparam("b_key"))  # fmt: skip
    many = (
        sa.select(*columns)
        .where(sa.tuple_(t.owner, t.key).in_(sa.bindparam("b_idents", expanding=True)))
        .order_by(t.id)  # rows locked in one order in every process
    )
    by_id = sa.update(_table).where(t.id == sa.bindparam("b_id"))
    return (
        {False: one, True: one.with_for_update()},
        {False: many, True: many.with_for_update()},
        {False: sa.insert(_table), True: sa.insert(_table).values(value=sa.null())},
        {False: by_id, True: by_id.values(value=sa.null())},
    )


_READ_ONE, _READ_MANY, _INSERT, _UPDATE = _write_statements()

# the same writes for a plain sqlite3 connection (VariableStore._write_sqlite)
_RAW_READ = (
    "SELECT id, owner, key, secret, created_at FROM variables WHERE (owner, key) IN (VALUES %s)"
)
_RAW_INSERT = (
    "INSERT INTO variables (id, owner, key, value, ciphertext, key_id, secret, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RAW_UPDATE = (
    "UPDATE variables SET value = ?, ciphertext = ?, key_id = ?, secret = ?, updated_at = ? "
    "WHERE id = ?"
)
_RAW_REVALUE = "UPDATE variables SET value = ?, updated_at = ? WHERE id = ?"
#: a lone write of a plain value over a plain variable, found by its key, in one statement
_RAW_REVALUE_KEY = (
    "UPDATE variables SET value = ?, updated_at = ? WHERE owner = ? AND key = ? AND secret = 0 "
    "RETURNING created_at"
)
_SQLITE = sqlite_dialect.dialect()
_SQLITE_TIME = schema.UTCDateTime()
#: how SQLAlchemy's JSON type writes a value on SQLite (its default serializer)
_JSON_TEXT = sa.JSON().bind_processor(_SQLITE)  # type: ignore[no-untyped-call]


#: how SQLAlchemy's JSON type reads a value on SQLite (as adapted by the dialect: the column's
#: NUMERIC affinity turns the text of a number into a number, which it takes as it is)
_JSON_VALUE = _SQLITE.type_descriptor(sa.JSON()).result_processor(_SQLITE, None)  # type: ignore[no-untyped-call]
_RAW_READ_ONE = (
    "SELECT id, owner, key, value, ciphertext, secret, created_at, updated_at FROM variables "
    "WHERE owner = ? AND key = ?"
)


def _read_sqlite(owner: str, key: str, conn: sqlite3.Connection) -> StoredRow | None:
    """A variable's row on a plain ``sqlite3`` connection (``DataStore.read_in_place``), its
    columns read as SQLAlchemy reads them (JSON, timestamps, booleans)."""
    rows = conn.execute(_RAW_READ_ONE, (owner, key)).fetchall()
    if not rows:
        return None
    row_id, owner, key, value, ciphertext, secret, created, updated = rows[0]
    assert _JSON_VALUE is not None
    return StoredRow(
        id=row_id,
        owner=owner,
        key=key,
        value=None if secret else _JSON_VALUE(value),
        ciphertext=ciphertext,
        secret=bool(secret),
        created_at=_raw_time(created),
        updated_at=_raw_time(updated),
    )


def _raw_time(text: str) -> datetime:
    when = _SQLITE_TIME.process_result_value(text, _SQLITE)
    assert when is not None
    return when


def _raw_value(values: dict[str, Any], secret: bool) -> Any:
    """The value column as bound: JSON text, or SQL NULL for a secret."""
    return None if secret else _json_text(values["value"])


def _json_text(value: Any) -> str:
    """A plain value as SQLAlchemy's JSON type binds it on SQLite."""
    assert _JSON_TEXT is not None
    return _JSON_TEXT(value)  # type: ignore[no-any-return]


@attrs.define(eq=False)
class _Write:
    """One caller's write, waiting for its group to commit."""

    owner: str
    key: str
    value: Any
    secret: bool | None
    #: set once the write's group has committed (or failed): the Variable, or why not
    result: Variable | Exception | None = None


@attrs.define(eq=False)
class VariableStore:
    """Users' variables and secrets on a :class:`DataStore`."""

    store: DataStore
    cipher: Cipher
    cache: VariableCache = attrs.field(factory=VariableCache)
    _secrets: dict[str, tuple[builtins.list[str], float]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    #: writes waiting for the next group; whether a writer is leading (committing groups)
    _pending: builtins.list[_Write] = attrs.field(factory=list, init=False, repr=False)
    _leading: bool = attrs.field(default=False, init=False, repr=False)
    #: what the other writers wait on: set (and forgotten) each time a group is answered and
    #: when the leader is done
    _answered: anyio.Event | None = attrs.field(default=None, init=False, repr=False)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        await self.cache.start(exit_stack)

    async def get(self, owner: str, key: str) -> Variable:
        """The variable, a secret decrypted; ``VariableNotFound`` when there is none."""
        check_key(key)
        lookup = await self.cache.lookup(owner, key)
        row = lookup.row if lookup.hit else await self._read(lookup)
        if row is None:
            raise VariableNotFound(key)
        try:
            return self._open(row)
        except DecryptionFailed:
            if not lookup.hit:
                raise
        # a cached row sealed by a key this process no longer holds (rotated since): reread
        await self.cache.invalidate([(owner, key)])
        row = await self._read(await self.cache.lookup(owner, key))
        if row is None:
            raise VariableNotFound(key)
        return self._open(row)

    async def set(
        self, owner: str, key: str, value: Any, *, secret: bool | None = None
    ) -> Variable:
        """Create or replace a variable. ``secret=None`` keeps the current flag (a new
        variable is plain); a secret must be a string of at least 4 characters."""
        _check_owner(owner)
        check_key(key)
        check_json_value(value, "value")
        if secret is not None and not isinstance(secret, bool):
            raise ValidationError("secret", "must be true or false")
        if secret:
            check_secret_value(value)
        write = _Write(owner, key, value, secret)
        self._pending.append(write)
        try:
            while write.result is None:
                if self._leading:
                    if self._answered is None:
                        self._answered = anyio.Event()
                    await self._answered.wait()
                else:
                    await self._lead(write)
        except BaseException:
            if write.result is None and write in self._pending:
                self._pending.remove(write)  # cancelled before its group began: not written
            raise
        if isinstance(write.result, Variable):
            return write.result
        assert write.result is not None  # _lead returns once the write has its answer
        raise write.result

    async def delete(self, owner: str, key: str) -> None:
        self._secrets.pop(owner, None)
        check_key(key)
        async with self.store.begin() as conn:
            result = await conn.execute(
                sa.delete(_table).where(_table.c.owner == owner, _table.c.key == key)
            )
        await self.cache.invalidate([(owner, key)])
        if result.rowcount == 0:
            raise VariableNotFound(key)

    async def list(self, owner: str) -> builtins.list[Variable]:
        """The owner's variables by key; secrets listed with ``value`` None."""
        query = sa.select(_table).where(_table.c.owner == owner).order_by(_table.c.key)
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_variable(_row(r), None if r.secret else r.value) for r in rows]

    async def secret_values(self, owner: str) -> builtins.list[str]:
        """The plaintext of every secret of ``owner``: what the log masker must hide.

        Remembered for :data:`SECRETS_TTL` seconds (every job of a busy worker asks); a write
        in this process forgets it at once, a write in another process is seen within the TTL.
        """
        now = time.monotonic()
        cached = self._secrets.get(owner)
        if cached is not None and cached[1] > now:
            return list(cached[0])
        values = await self._load_secret_values(owner)
        if len(self._secrets) > 10_000:
            self._secrets.clear()
        self._secrets[owner] = (values, now + SECRETS_TTL)
        return list(values)

    async def _load_secret_values(self, owner: str) -> builtins.list[str]:
        query = sa.select(_table).where(_table.c.owner == owner, _table.c.secret == sa.true())
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        values: builtins.list[str] = []
        for r in rows:
            try:
                value = self._open(_row(r)).value
            except DecryptionFailed as exc:
                log.warning("secret %r of %r cannot be decrypted: %s", r.key, owner, exc.reason)
                continue
            if isinstance(value, str):
                values.append(value)
        return values

    async def rotate(self, *, batch: int = 500, max_batches: int | None = None) -> RotationReport:
        """Re-encrypt under the current key every secret sealed by another key.

        Each batch is one transaction; a row changed meanwhile by a write is left alone (the
        write sealed it under the current key already). Stopped or killed at any point, the
        next run carries on with the rows still under an old key: rerunning is safe and, once
        done, rotates nothing. Once a run reports ``complete`` with no failures, old keys can
        be dropped from the ring: ``complete`` is checked at the end, so a row that the run
        passed by (locked by a writer on PostgreSQL, or rewritten meanwhile by a process still
        sealing with an old key) leaves it False, and another run picks the row up."""
        if batch < 1:
            raise ValidationError("batch", "must be at least 1")
        current = self.cipher.current
        after = ""
        rotated = batches = 0
        failed: builtins.list[tuple[str, str]] = []
        while max_batches is None or batches < max_batches:
            query = (
                sa.select(_table.c.id, _table.c.owner, _table.c.key, _table.c.ciphertext)
                .where(
                    _table.c.secret == sa.true(),
                    sa.or_(_table.c.key_id.is_(None), _table.c.key_id != current),
                    _table.c.id > after,
                )
                .order_by(_table.c.id)
                .limit(batch)
            )
            if self.store.is_postgres:
                query = query.with_for_update(skip_locked=True)
            async with self.store.begin() as conn:
                rows = (await conn.execute(query)).all()
                if not rows:
                    left = await conn.scalar(
                        sa.select(sa.func.count()).where(
                            _table.c.secret == sa.true(),
                            sa.or_(_table.c.key_id.is_(None), _table.c.key_id != current),
                        )
                    )
                    # the rows that failed to decrypt stay behind; any other one was passed by
                    return RotationReport(rotated=rotated, failed=tuple(failed), batches=batches,
                                          complete=(left or 0) <= len(failed))  # fmt: skip
                updates = []
                for r in rows:
                    context = sealing_context(r.id, r.owner, r.key)
                    try:
                        plaintext = self.cipher.decrypt(r.ciphertext, context)
                    except DecryptionFailed as exc:
                        log.warning("rotation: secret %r of %r: %s", r.key, r.owner, exc.reason)
                        failed.append((r.owner, r.key))
                        continue
                    updates.append(
                        {
                            "b_id": r.id,
                            "b_old": r.ciphertext,
                            "b_new": self.cipher.encrypt(plaintext, context),
                            "b_kid": current,
                        }
                    )
                if updates:
                    await conn.execute(
                        sa.update(_table)
                        .where(
                            _table.c.id == sa.bindparam("b_id"),
                            _table.c.ciphertext == sa.bindparam("b_old"),
                        )
                        .values(ciphertext=sa.bindparam("b_new"), key_id=sa.bindparam("b_kid")),
                        updates,
                    )
            after = rows[-1].id
            batches += 1
            rotated += len(updates)
            await self.cache.invalidate((r.owner, r.key) for r in rows)
        return RotationReport(rotated=rotated, failed=tuple(failed), batches=batches,
                              complete=False)  # fmt: skip

    # -- internals ------------------------------------------------------------------------

    async def _read(self, lookup: Lookup) -> StoredRow | None:
        """The row, from the database (a cache miss): on a SQLite file in place (one indexed
        ``SELECT`` on the loop, a few microseconds), else, or when SQLite says no, through
        SQLAlchemy."""
        owner, key = lookup.owner, lookup.key
        try:
            if self.store.sqlite_path is not None:
                try:
                    row = self.store.read_in_place(functools.partial(_read_sqlite, owner, key))
                except NotInPlace:
                    row = await self._read_through(owner, key)
            else:
                row = await self._read_through(owner, key)
        except BaseException:
            self.cache.abandon(lookup)
            raise
        await self.cache.fill(lookup, row)
        return row

    async def _read_through(self, owner: str, key: str) -> StoredRow | None:
        query = sa.select(_table).where(_table.c.owner == owner, _table.c.key == key)
        async with self.store.read() as conn:
            found = (await conn.execute(query)).first()
        return _row(found) if found is not None else None

    def _open(self, row: StoredRow) -> Variable:
        if not row.secret:
            return _variable(row, row.value)
        assert row.ciphertext is not None
        plaintext = self.cipher.decrypt(row.ciphertext, sealing_context(row.id, row.owner, row.key))
        return _variable(row, json.loads(plaintext))

    async def _lead(self, write: _Write) -> None:
        """Commit the writes waiting, in groups, until ``write`` is; wake the waiting writers
        after each group, and when done (one of those left then leads)."""
        self._leading = True
        try:
            # one turn of the event loop: the writes that arrive meanwhile join the group
            await anyio.lowlevel.checkpoint()
            while write.result is None:
                group = self._pending[:MAX_WRITE_GROUP]
                del self._pending[:MAX_WRITE_GROUP]
                if not group:  # its group was cut short (see _commit): no answer to give
                    raise RuntimeError("a variable write was lost before it committed")
                try:
                    await self._commit(group)
                finally:
                    self._wake()
        finally:
            self._leading = False
            self._wake()

    def _wake(self) -> None:
        answered, self._answered = self._answered, None
        if answered is not None:
            answered.set()

    async def _commit(self, group: builtins.list[_Write]) -> None:
        """Write ``group`` and set each write's result. Shielded: once its transaction has
        begun, a group's results must reach their callers."""
        if self.cache.shared is None and self._commit_now(group):
            return
        with anyio.CancelScope(shield=True):
            try:
                results = await self._transact(group)
            except Exception as exc:
                if len(group) == 1:
                    results = [exc]
                else:
                    # the group failed as a whole (nothing written): one by one, each caller
                    # gets its own answer and its own exception
                    results = []
                    for write in group:
                        try:
                            results.extend(await self._transact([write]))
                        except Exception as one:
                            results.append(one)
            written = self._written(group, results)
            try:
                await self.cache.invalidate(written)
            finally:
                # answered only now: whoever reads after its write returned sees it
                for write, result in zip(group, results, strict=True):
                    write.result = result

    def _commit_now(self, group: builtins.list[_Write]) -> bool:
        """:meth:`_commit` without awaiting anything, so with nothing to shield: in place, if
        SQLite is free for writing now, and the in-process cache forgotten at once (the
        caller checked there is no shared layer). False, nothing written, when it cannot be
        done here and now (not a SQLite file, another write under way, SQLite failed, the
        group failed as a whole): the usual way then, which reports any real error."""
        if self.store.sqlite_path is None:
            return False
        # nothing awaited from here to the answers: no read of the secret values can slip in
        # between, so they are forgotten once, after the commit (see _transact)
        try:
            results = self.store.transact_in_place_now(
                functools.partial(self._write_sqlite, group, self.store.clock.now()),
                writes_jobs=False,
            )
        except Exception:
            return False
        self.cache.forget_here(self._written(group, results))
        for write, result in zip(group, results, strict=True):
            write.result = result
        return True

    def _written(
        self, group: builtins.list[_Write], results: builtins.list[Variable | Exception]
    ) -> builtins.list[tuple[str, str]]:
        """The keys that ``group`` wrote; their owners' remembered secret values forgotten."""
        written = [(w.owner, w.key) for w, r in zip(group, results, strict=True)
                   if isinstance(r, Variable)]  # fmt: skip
        for owner, _ in written:
            self._secrets.pop(owner, None)
        return written

    async def _transact(self, group: builtins.list[_Write]) -> builtins.list[Variable | Exception]:
        for owner in {w.owner for w in group}:
            self._secrets.pop(owner, None)
        now = self.store.clock.now()
        if self.store.sqlite_path is not None:
            try:
                # in place, on a plain sqlite3 connection, if SQLite is free for writing now
                return await self.store.transact_in_place(
                    functools.partial(self._write_sqlite, group, now), writes_jobs=False
                )
            except (WriteBusy, sqlite3.Error):
                pass  # another process is writing (or SQLite said no): the usual way, below
        for _ in range(WRITE_TRIES):
            try:
                # one transaction in one trip (DataStore.transact): on SQLite one thread hop
                return await self.store.transact(functools.partial(self._write, group, now))
            except IntegrityError:
                continue  # another writer created one of the keys first: now it is an update
        if len(group) > 1:
            raise Conflict("variables are being written concurrently")
        return [Conflict(f"variable {group[0].key!r} is being written concurrently; try again")]

    def _write(
        self, group: builtins.list[_Write], now: datetime, conn: sa.Connection
    ) -> builtins.list[Variable | Exception]:
        """The group's writes, in order, in ``conn``'s transaction: the rows are read at once,
        each key's final state is written with one statement per kind (insert, update)."""
        idents = sorted({(w.owner, w.key) for w in group})
        locked = self.store.is_postgres
        if len(idents) == 1:
            params: dict[str, Any] = {"b_owner": idents[0][0], "b_key": idents[0][1]}
            found = conn.execute(_READ_ONE[locked], params)
        else:
            found = conn.execute(_READ_MANY[locked], {"b_idents": idents})
        stored = {(r.owner, r.key): (r.id, r.created_at, bool(r.secret)) for r in found}
        results, inserts, updates, revalued = self._plan(group, now, stored)
        for secret in (False, True):
            if inserts[secret]:
                conn.execute(_INSERT[secret], inserts[secret])
            if updates[secret]:
                conn.execute(_UPDATE[secret], updates[secret])
        if revalued:
            conn.execute(_UPDATE[False], revalued)  # SET only the columns given
        return results

    def _write_sqlite(
        self, group: builtins.list[_Write], now: datetime, conn: sqlite3.Connection
    ) -> builtins.list[Variable | Exception]:
        """:meth:`_write` on a plain ``sqlite3`` connection (``DataStore.transact_in_place``),
        with the values bound as SQLAlchemy binds them on SQLite (JSON text, timestamps as
        ``_SQLITE_TIME`` gives them, booleans as 0/1).

        In a small group (at most :data:`ONE_BY_ONE_MAX` writes: a script updating its
        variable, a few at once) each plain value first tries the update alone, by key, where
        the variable exists and is plain: one statement instead of a share of a read, a plan
        and an update. A key whose write cannot (a new key, a secret either side) has it and
        its later writes in the group written the general way, after the others: the writes
        of one key stay in order, and those of different keys do not touch each other."""
        when = _SQLITE_TIME.process_bind_param(now, _SQLITE)
        if len(group) > ONE_BY_ONE_MAX:
            return self._write_sqlite_general(group, now, when, conn)
        answers: builtins.list[Variable | Exception | None] = [None] * len(group)
        rest: builtins.list[int] = []
        general: set[tuple[str, str]] = set()
        for n, w in enumerate(group):
            ident = (w.owner, w.key)
            if not w.secret and ident not in general:
                updated = conn.execute(
                    _RAW_REVALUE_KEY, (_json_text(w.value), when, w.owner, w.key)
                ).fetchall()
                if updated:
                    answers[n] = Variable(owner=w.owner, key=w.key, value=w.value,
                                          secret=False, created_at=_raw_time(updated[0][0]),
                                          updated_at=now)  # fmt: skip
                    continue
            general.add(ident)
            rest.append(n)
        if rest:
            left = [group[n] for n in rest]
            for n, answer in zip(rest, self._write_sqlite_general(left, now, when, conn),
                                 strict=True):  # fmt: skip
                answers[n] = answer
        return cast(builtins.list[Variable | Exception], answers)  # each one answered

    def _write_sqlite_general(
        self, group: builtins.list[_Write], now: datetime, when: str, conn: sqlite3.Connection
    ) -> builtins.list[Variable | Exception]:
        """The rows read at once, each key's final state written with one statement per
        kind (insert, update), as :meth:`_write` does."""
        idents = sorted({(w.owner, w.key) for w in group})
        rows = conn.execute(
            _RAW_READ % ",".join(["(?, ?)"] * len(idents)),
            [part for ident in idents for part in ident],
        ).fetchall()
        stored = {
            (owner, key): (row_id, _raw_time(created), bool(secret))
            for row_id, owner, key, secret, created in rows
        }
        results, inserts, updates, revalued = self._plan(group, now, stored)
        for secret in (False, True):
            if inserts[secret]:
                conn.executemany(_RAW_INSERT, [
                    (r["id"], r["owner"], r["key"], _raw_value(r, secret), r["ciphertext"],
                     r["key_id"], int(secret),
                     _SQLITE_TIME.process_bind_param(r["created_at"], _SQLITE), when)
                    for r in inserts[secret]
                ])  # fmt: skip
            if updates[secret]:
                conn.executemany(_RAW_UPDATE, [
                    (_raw_value(r, secret), r["ciphertext"], r["key_id"], int(secret), when,
                     r["b_id"])
                    for r in updates[secret]
                ])  # fmt: skip
        if revalued:
            conn.executemany(
                _RAW_REVALUE, [(_raw_value(r, False), when, r["b_id"]) for r in revalued]
            )
        return results

    def _plan(
        self,
        group: builtins.list[_Write],
        now: datetime,
        stored: dict[tuple[str, str], tuple[str, datetime, bool]],
    ) -> tuple[
        builtins.list[Variable | Exception], dict[bool, Any], dict[bool, Any], builtins.list[Any]
    ]:
        """Each write's answer, and the final state of each key as insert and update
        parameters by kind (secret or not), and apart, the updates of a plain variable that
        stays plain: only its value and time change, and assigning the other columns too
        (already NULL) would rewrite its ``key_id`` index entry, a second page per commit.
        ``stored``: (owner, key) -> (row id, created_at, secret) of the rows there are."""
        #: (owner, key) -> [row id, created_at, secret, the row's values]
        state: dict[tuple[str, str], builtins.list[Any]] = {}
        results: builtins.list[Variable | Exception] = []
        for w in group:
            ident = (w.owner, w.key)
            current = state.get(ident)
            if current is None:
                row = stored.get(ident)
                current = [*row, None] if row is not None else [new_id(), now, False, None]
            row_id, created, was_secret, _ = current
            is_secret = w.secret if w.secret is not None else was_secret
            try:
                values = self._values(row_id, w.owner, w.key, w.value, is_secret)
            except ValidationError as exc:
                results.append(exc)  # this write alone is refused; the key keeps its state
                continue
            state[ident] = [row_id, created, is_secret, values]
            results.append(Variable(owner=w.owner, key=w.key, value=w.value, secret=is_secret,
                                    created_at=created, updated_at=now))  # fmt: skip
        # by kind: a secret's value column is SQL NULL, which no bound parameter can say
        inserts: dict[bool, builtins.list[dict[str, Any]]] = {False: [], True: []}
        updates: dict[bool, builtins.list[dict[str, Any]]] = {False: [], True: []}
        revalued: builtins.list[dict[str, Any]] = []
        for ident, (row_id, created, secret, values) in state.items():
            values["updated_at"] = now
            row = stored.get(ident)
            if row is None:
                inserts[secret].append({"id": row_id, "owner": ident[0], "key": ident[1],
                                        "created_at": created, **values})  # fmt: skip
            elif not secret and not row[2]:
                revalued.append({"b_id": row_id, "value": values["value"], "updated_at": now})
            else:
                updates[secret].append({"b_id": row_id, **values})
        return results, inserts, updates, revalued

    def _values(
        self, row_id: str, owner: str, key: str, value: Any, secret: bool
    ) -> dict[str, Any]:
        if not secret:
            return {"value": value, "ciphertext": None, "key_id": None, "secret": False}
        check_secret_value(value)
        plaintext = json.dumps(value, ensure_ascii=False).encode()
        return {  # and the value column NULL (see _write)
            "ciphertext": self.cipher.encrypt(plaintext, sealing_context(row_id, owner, key)),
            "key_id": self.cipher.current,
            "secret": True,
        }


def _row(r: sa.Row[Any]) -> StoredRow:
    return StoredRow(
        id=r.id,
        owner=r.owner,
        key=r.key,
        value=None if r.secret else r.value,
        ciphertext=r.ciphertext,
        secret=bool(r.secret),
        created_at=r.created_at,
        updated_at=r.updated_at,
    )


def _variable(row: StoredRow, value: Any) -> Variable:
    return Variable(owner=row.owner, key=row.key, value=value, secret=row.secret,
                    created_at=row.created_at, updated_at=row.updated_at)  # fmt: skip
