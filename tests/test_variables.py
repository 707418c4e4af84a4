"""Variables and secrets on SQLite and PostgreSQL: the store, no plaintext at rest (K1),
ciphertexts bound to their rows (K2), resumable key rotation (K3), the read caches (in process,
and shared through a real redis-server), and the runtime API's variables routes over HTTP."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import sqlalchemy as sa
from anyio.from_thread import start_blocking_portal
from anyio.lowlevel import checkpoint as a_turn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cronium_core import Event, FakeClock, datastore, schema
from cronium_core.crypto import Cipher, DecryptionFailed, generate_key
from cronium_core.datastore import DataStore, NotInPlace, WriteBusy, new_id
from cronium_core.errors import ValidationError
from cronium_core.masking import SecretMasker
from cronium_core.queue import JobQueue
from cronium_core.runtime import RateLimiter, RuntimeService
from cronium_core.tokens import ExecutionTokens
from cronium_core.variables import (
    ONE_BY_ONE_MAX,
    ValkeyCache,
    VariableCache,
    VariableNotFound,
    VariableStore,
    _read_sqlite,
    sealing_context,
)
from cronium_runtime import create_app
from tests.busy_sqlite import write_while_locked
from tests.test_runtime_api import NOOP, Runtime, ok, refused, runtime, unauthorized
from tests.test_tokens import KEY as TOKEN_KEY

pytestmark = pytest.mark.anyio

NEW = generate_key()
OLD = generate_key()
KEYS = f"new:{NEW},old:{OLD}"
table = schema.variables


def canary(label: str) -> str:
    return f"CANARY-{label}-{os.urandom(8).hex()}"


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[DataStore]:
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url)
        await store.start(stack, upgrade=True)
        yield store


@pytest.fixture
def cipher() -> Cipher:
    return Cipher.from_spec(KEYS)


@pytest.fixture
def variables(store: DataStore, cipher: Cipher) -> VariableStore:
    return VariableStore(store, cipher)


async def raw_rows(store: DataStore) -> dict[tuple[str, str], Any]:
    async with store.read() as conn:
        rows = (await conn.execute(sa.select(table))).all()
    return {(r.owner, r.key): r for r in rows}


# -- the store -----------------------------------------------------------------------------


async def test_plain_variables(variables: VariableStore) -> None:
    values: list[Any] = [
        "text", "", 0, -3.5, True, None, [1, "two", None], {"nested": {"ü": ["x"]}},
    ]  # fmt: skip
    for index, value in enumerate(values):
        stored = await variables.set("alice", f"k{index}", value)
        assert stored.value == value and not stored.secret
        got = await variables.get("alice", f"k{index}")
        assert got.value == value and got.owner == "alice" and got.key == f"k{index}"
    replaced = await variables.set("alice", "k0", {"replaced": True})
    assert (await variables.get("alice", "k0")).value == {"replaced": True}
    assert replaced.updated_at >= replaced.created_at
    listed = await variables.list("alice")
    assert [v.key for v in listed] == sorted(f"k{i}" for i in range(len(values)))
    await variables.delete("alice", "k1")
    with pytest.raises(VariableNotFound, match="variable k1 not found"):
        await variables.get("alice", "k1")
    with pytest.raises(VariableNotFound):
        await variables.delete("alice", "k1")


async def test_secrets(variables: VariableStore, store: DataStore) -> None:
    secret = canary("secret")
    stored = await variables.set("alice", "api_token", secret, secret=True)
    assert stored.secret and stored.value == secret
    assert (await variables.get("alice", "api_token")).value == secret
    row = (await raw_rows(store))[("alice", "api_token")]
    assert row.secret and row.value is None and row.key_id == "new"
    assert row.ciphertext.startswith("v1.new.") and secret not in row.ciphertext
    # secret=None keeps the flag; a new variable defaults to plain
    await variables.set("alice", "api_token", secret + "-2")
    assert (await variables.get("alice", "api_token")).secret
    assert not (await variables.set("alice", "plain", "v")).secret
    # listings never show a secret's value
    listed = {v.key: v for v in await variables.list("alice")}
    assert listed["api_token"].value is None and listed["api_token"].secret
    assert listed["plain"].value == "v"
    assert await variables.secret_values("alice") == [secret + "-2"]
    assert await variables.secret_values("bob") == []
    # back to plain: the ciphertext goes
    await variables.set("alice", "api_token", "now public", secret=False)
    row = (await raw_rows(store))[("alice", "api_token")]
    assert not row.secret and row.ciphertext is None and row.value == "now public"


@pytest.mark.parametrize(
    "key",
    ["", "x" * 129, "a b", "a/b", "ü", "key\n", "CRONIUM_X", "cronium_x", "SYSTEM_a", "node_x",
     "PATH", "path_extra", "Pathfinder", "HOME", "home_dir"],
)  # fmt: skip
async def test_bad_keys(variables: VariableStore, key: str) -> None:
    with pytest.raises(ValidationError, match="key"):
        await variables.set("alice", key, 1)
    with pytest.raises(ValidationError, match="key"):
        await variables.get("alice", key)


async def test_good_keys(variables: VariableStore) -> None:
    for key in ("a", "A.b-c_1", "x" * 128, "my.PATH", "nodes"):
        await variables.set("alice", key, key)
        assert (await variables.get("alice", key)).value == key


@pytest.mark.parametrize("value", ["abc", "", "  ab  ", 12345, None, ["long enough"], {"a": 1}])
async def test_bad_secrets_are_refused(
    variables: VariableStore, store: DataStore, value: Any
) -> None:
    with pytest.raises(ValidationError, match="secret"):
        await variables.set("alice", "s", value, secret=True)
    # an existing secret keeps its rules when updated without the flag
    await variables.set("alice", "t", "long enough", secret=True)
    with pytest.raises(ValidationError, match="secret"):
        await variables.set("alice", "t", value)
    assert (await variables.get("alice", "t")).value == "long enough"
    assert ("alice", "s") not in await raw_rows(store)


async def test_bad_values_and_owners(variables: VariableStore) -> None:
    for value in (float("nan"), "nul \x00", {"k": {1, 2}}, object()):
        with pytest.raises(ValidationError, match="value"):
            await variables.set("alice", "k", value)
    for owner in ("", "o" * 65):
        with pytest.raises(ValidationError, match="owner"):
            await variables.set(owner, "k", 1)


async def test_owners_do_not_share(variables: VariableStore) -> None:
    await variables.set("alice", "shared_name", "alice's", secret=True)
    with pytest.raises(VariableNotFound):
        await variables.get("bob", "shared_name")
    await variables.set("bob", "shared_name", "bob's value")
    assert (await variables.get("alice", "shared_name")).value == "alice's"
    assert (await variables.get("bob", "shared_name")).value == "bob's value"
    assert [v.owner for v in await variables.list("bob")] == ["bob"]


async def test_concurrent_creates_of_one_key(db_url: str, cipher: Cipher) -> None:
    async with AsyncExitStack() as stack:
        stores = []
        for index in range(4):
            ds = DataStore(url=db_url)
            await ds.start(stack, upgrade=index == 0)
            stores.append(VariableStore(ds, cipher))
        written: list[str] = []

        async def write(vs: VariableStore, n: int) -> None:
            value = f"value number {n}"
            await vs.set("alice", "race", value, secret=True)
            written.append(value)

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(write, stores[n % 4], n)
        assert len(written) == 12
        got = await VariableStore(stores[0].store, cipher).get("alice", "race")
        assert got.value == written[-1] or got.value in written
        assert len(await stores[0].list("alice")) == 1


# -- writes committed in groups ------------------------------------------------------------


def commits(store: DataStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at every commit of a write transaction of ``store``: through
    SQLAlchemy, or on SQLite's plain connection (``DataStore.transact_in_place``, awaited or
    ``_now``)."""
    seen = in_place_commits(monkeypatch)
    engine = store.thread_engine or store.engine.sync_engine
    sa.event.listen(engine, "commit", lambda conn: seen.append(1))
    return seen


def in_place_commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at every transaction committed on SQLite's plain connection
    (``DataStore.transact_in_place``, awaited or ``_now``)."""
    seen: list[int] = []
    in_place, in_place_now = DataStore.transact_in_place, DataStore.transact_in_place_now

    async def counted(self: DataStore, fn: Any, **kw: Any) -> Any:
        result = await in_place(self, fn, **kw)
        seen.append(1)
        return result

    def counted_now(self: DataStore, fn: Any, **kw: Any) -> Any:
        result = in_place_now(self, fn, **kw)
        seen.append(1)
        return result

    monkeypatch.setattr(DataStore, "transact_in_place", counted)
    monkeypatch.setattr(DataStore, "transact_in_place_now", counted_now)
    return seen


async def test_concurrent_writes_commit_in_groups(
    variables: VariableStore, store: DataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await variables.set("alice", "kept", "old value")
    before = (await variables.get("alice", "kept")).created_at
    committed = commits(store, monkeypatch)
    answers: dict[tuple[str, int], Any] = {}

    async def write(key: str, n: int, value: Any) -> None:
        answers[(key, n)] = await variables.set("alice", key, value)

    async with anyio.create_task_group() as tg:
        for n in range(30):
            tg.start_soon(write, f"k{n}", n, {"n": n})
        for n in (100, 101):  # one key twice in the same burst
            tg.start_soon(write, "kept", n, f"value {n}")
    assert 1 <= len(committed) < 10  # 32 writes, a handful of transactions
    for n in range(30):
        assert answers[(f"k{n}", n)].value == {"n": n}
        assert (await variables.get("alice", f"k{n}")).value == {"n": n}
    # each caller got its own answer; the key holds one of them, created when it was
    assert {answers[("kept", n)].value for n in (100, 101)} == {"value 100", "value 101"}
    kept = await variables.get("alice", "kept")
    assert kept.value in {"value 100", "value 101"} and kept.created_at == before
    assert len(await variables.list("alice")) == 31


def column_kinds(path: str) -> list[tuple[Any, ...]]:
    """How SQLite holds each variable's columns: the stored text of the value, and the
    storage class and shape of the others."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(
            "SELECT key, value, typeof(value), typeof(ciphertext), typeof(key_id), secret,"
            " typeof(secret), typeof(created_at), length(created_at), typeof(updated_at),"
            " length(updated_at) FROM variables ORDER BY key"
        ).fetchall()


WRITTEN: list[tuple[str, Any, bool | None]] = [
    ("text", "hello", None), ("number", 1.5, None), ("null", None, None),
    ("nested", {"a": [1, "é", None, True], "b": {"c": "\u2603"}}, None),
    ("secret", "a long secret", True), ("unicode", "snow \u2603 and 🙂", None),
]  # fmt: skip


async def write_and_describe(url: str, cipher: Cipher) -> tuple[list[tuple[Any, ...]], int]:
    """Write ``WRITTEN`` (and one update) to a fresh SQLite file and read it all back; returns
    how SQLite holds the columns, and how many writes went in place."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, cipher)
        with pytest.MonkeyPatch.context() as patch:
            in_place = in_place_commits(patch)
            for key, value, secret in WRITTEN:
                await variables.set("alice", key, value, secret=secret)
            await variables.set("alice", "text", "hello again")  # an update too
        fresh = VariableStore(store, cipher)  # no cache: read back from the rows
        got = {key: (await fresh.get("alice", key)).value for key, _, _ in WRITTEN}
        assert got == {key: value for key, value, _ in WRITTEN} | {"text": "hello again"}
        assert store.sqlite_path is not None
        return column_kinds(store.sqlite_path), len(in_place)


async def test_writes_in_place_store_what_sqlalchemy_stores(
    tmp_path: Path, cipher: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a group written on the plain connection (the usual way) leaves the same rows as
    one written through SQLAlchemy (the way when another process holds the write lock)."""
    in_place, written_in_place = await write_and_describe(
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", cipher
    )
    assert written_in_place == len(WRITTEN) + 1

    def busy(self: DataStore) -> Any:
        raise WriteBusy("another process writes")

    monkeypatch.setattr(DataStore, "_open_in_place", busy)
    through_sqlalchemy, none_in_place = await write_and_describe(
        f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", cipher
    )
    assert none_in_place == 0
    assert in_place == through_sqlalchemy


async def test_reads_in_place_read_what_sqlalchemy_reads(
    sqlite_url: str, cipher: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: a cache miss read on the plain connection (the usual way) gives the row that
    SQLAlchemy gives (the way when SQLite says no), column by column, secrets still sealed."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        writer = VariableStore(store, cipher)
        for key, value, secret in WRITTEN:
            await writer.set("alice", key, value, secret=secret)
        await writer.set("alice", "text", "hello again")
        keys = [key for key, _, _ in WRITTEN] + ["missing"]
        in_place = [
            store.read_in_place(functools.partial(_read_sqlite, "alice", key)) for key in keys
        ]
        reader = VariableStore(store, cipher)  # no cache: every get below is a miss
        got = {key: (await reader.get("alice", key)).value for key, _, _ in WRITTEN}
        assert got == {key: value for key, value, _ in WRITTEN} | {"text": "hello again"}
        assert reader.cache.misses == len(WRITTEN) and store._reader is not None

        def busy(self: DataStore, fn: Any) -> Any:
            raise NotInPlace("SQLite said no")

        monkeypatch.setattr(DataStore, "read_in_place", busy)
        through = [await VariableStore(store, cipher)._read_through("alice", k) for k in keys]
        assert in_place == through and in_place[-1] is None
        assert all(row is not None and row.created_at.tzinfo is not None for row in in_place[:-1])
        secret = next(r for r in in_place if r is not None and r.secret)
        assert secret.value is None and secret.ciphertext is not None
        # and the fallback serves reads too
        fresh = VariableStore(store, cipher)
        assert (await fresh.get("alice", "nested")).value == WRITTEN[3][1]


@asynccontextmanager
async def small_wal(
    sqlite_url: str, cipher: Cipher, monkeypatch: pytest.MonkeyPatch, limit: int
) -> AsyncIterator[tuple[DataStore, VariableStore]]:
    """A store whose in-place writes are checkpointed every 20 commits and whose WAL is
    started over past ``limit`` bytes of frames."""
    monkeypatch.setattr(datastore, "CHECKPOINT_EVERY", 20)
    monkeypatch.setattr(datastore, "WAL_LIMIT", limit)
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        yield store, VariableStore(store, cipher)


async def test_in_place_writes_keep_the_wal_bounded(
    sqlite_url: str, cipher: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: the in-place writer never checkpoints on the loop; a thread of the store's
    does, and past the limit the next write has the WAL started over, so a stream of variable
    writes (and nothing else committing) does not grow it without end."""
    async with small_wal(sqlite_url, cipher, monkeypatch, 256 * 1024) as (store, variables):
        assert store.sqlite_path is not None
        wal = store.sqlite_path + "-wal"
        largest = 0
        for n in range(1500):  # one at a time: 1,500 commits of a few pages each
            await variables.set("alice", f"k{n % 40}", {"n": n, "pad": "x" * 200})
            largest = max(largest, os.stat(wal).st_size)
        assert store._checkpointer is not None and store._checkpointer.runs > 0
        # unchecked, 1,500 commits make several MB of WAL; bounded, about the limit and the
        # commits between two checks (20 of a few pages each)
        assert largest < 4 * 256 * 1024
        assert (await VariableStore(store, cipher).get("alice", "k19")).value["n"] == 1499


async def test_a_long_read_elsewhere_delays_the_wal_restart_not_the_writers(
    sqlite_url: str, cipher: Cipher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: while another connection keeps reading an old snapshot, the WAL cannot be
    started over; each attempt gives up after RESTART_WAIT_MS instead of holding the writers
    off for as long as the read lasts, and the restart happens once the read is over."""
    async with small_wal(sqlite_url, cipher, monkeypatch, 64 * 1024) as (store, variables):
        await variables.set("alice", "k0", 0)
        assert store.sqlite_path is not None
        reader = sqlite3.connect(store.sqlite_path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM variables").fetchall()  # holds its snapshot
        slowest = 0.0
        for n in range(300):
            started = time.monotonic()
            await variables.set("alice", f"k{n % 20}", {"n": n, "pad": "x" * 200})
            slowest = max(slowest, time.monotonic() - started)
        other = sqlite3.connect(store.sqlite_path)

        def wal_bytes() -> int:
            frames = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1]
            return int(frames) * (4096 + 24)

        held = wal_bytes()
        assert held > 4 * 64 * 1024  # the WAL could not start over meanwhile (300 frames)
        # every write went through: at most one restart attempt's wait each (0.2 s)
        assert slowest < 1.5
        reader.execute("COMMIT")
        reader.close()
        # the next attempts succeed: the WAL starts over. (Once the checkpointer's thread has
        # had its turn: writes on the loop, each well under a millisecond, can outpace it, so
        # they pause a moment as a server's requests do, and the test writes until then.)
        for n in range(2000):
            await variables.set("alice", f"k{n % 20}", {"n": n})
            await anyio.sleep(0.001)
            if n % 50 == 49 and wal_bytes() < held:
                break
        assert wal_bytes() < held
        other.close()


async def test_a_busy_database_does_not_hold_up_the_event_loop(
    sqlite_url: str, cipher: Cipher
) -> None:
    """SQLite: while another process holds the write lock, a write waits in a thread (the
    usual way), not on the event loop, and goes through once the lock is free."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, cipher)
        await variables.set("alice", "k", 1)
        assert store.sqlite_path is not None
        written, ticks = await write_while_locked(
            store.sqlite_path, lambda: variables.set("alice", "k", 2), hold=0.5
        )
        assert written.value == 2 and ticks >= 20  # the loop kept running all along
        assert (await VariableStore(store, cipher).get("alice", "k")).value == 2


#: one write of a group: key, value, secret flag (None: keep the key's)
GROUP_WRITE = st.tuples(
    st.sampled_from(["a", "b"]),
    st.one_of(st.integers(0, 9), st.sampled_from(["a long secret value", "no"])),
    st.sampled_from([None, False, True]),
)
#: what a key holds before the group: nothing, a plain value or a secret
BEFORE = st.dictionaries(
    st.sampled_from(["a", "b"]), st.sampled_from([("old", False), ("an old secret", True)])
)


def test_a_group_writes_what_its_writes_one_after_another_write(sqlite_url: str) -> None:
    """Property, SQLite: writes committed as one group (small ones key by key, larger ones
    read and written at once) give each caller the answer, and leave each key as, the same
    writes one after another give: a refused write (a bad secret) alone refused, the writes
    of one key in order, a key's creation time kept."""
    with start_blocking_portal("asyncio") as portal:
        stack = AsyncExitStack()

        async def open_store() -> VariableStore:
            store = DataStore(url=sqlite_url)
            await store.start(stack, upgrade=True)
            return VariableStore(store, Cipher.from_spec(KEYS))

        variables = portal.call(open_store)

        async def outcome(owner: str, call: Any) -> Any:
            try:
                got = await call
            except ValidationError as exc:
                return type(exc)
            now = await variables.get(owner, got.key)
            assert got.created_at == now.created_at  # kept from the key's first write
            return got.key, got.value, got.secret

        async def play(before: dict[str, tuple[str, bool]], writes: list[Any]) -> None:
            owners = {way: f"{way} {uuid.uuid4().hex[:8]}" for way in ("group", "alone")}
            for owner in owners.values():
                for key, (value, secret) in before.items():
                    await variables.set(owner, key, value, secret=secret)
            answers: dict[str, list[Any]] = {"group": [None] * len(writes), "alone": []}

            async def write(n: int, key: str, value: Any, secret: bool | None) -> None:
                call = variables.set(owners["group"], key, value, secret=secret)
                answers["group"][n] = await outcome(owners["group"], call)

            with pytest.MonkeyPatch.context() as patch:
                committed = in_place_commits(patch)
                async with anyio.create_task_group() as tg:
                    for n, (key, value, secret) in enumerate(writes):
                        tg.start_soon(write, n, key, value, secret)
            assert len(committed) <= 1  # one group (none if set() refused them all)
            for key, value, secret in writes:
                call = variables.set(owners["alone"], key, value, secret=secret)
                answers["alone"].append(await outcome(owners["alone"], call))
            assert answers["group"] == answers["alone"]
            for key in "ab":
                held = []
                for owner in owners.values():
                    try:
                        got = await variables.get(owner, key)
                        held.append((got.value, got.secret))
                    except VariableNotFound:
                        held.append(None)
                assert held[0] == held[1], key

        @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(before=BEFORE, writes=st.lists(GROUP_WRITE, min_size=1, max_size=ONE_BY_ONE_MAX + 2))
        # a plain key made secret, then plain again, in one group: in that order
        @example(before={"a": ("old", False)},
                 writes=[("a", "a long secret value", True), ("a", 0, False)])  # fmt: skip
        def run(before: dict[str, tuple[str, bool]], writes: list[Any]) -> None:
            portal.call(play, before, writes)

        try:
            run()
        finally:
            portal.call(stack.aclose)


async def test_one_refused_write_leaves_its_group_alone(variables: VariableStore) -> None:
    await variables.set("alice", "password", "a long secret", secret=True)
    outcomes: dict[str, Any] = {}

    async def write(key: str, value: Any) -> None:
        try:
            outcomes[key] = await variables.set("alice", key, value)
        except ValidationError as exc:
            outcomes[key] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(write, "before", 1)
        tg.start_soon(write, "password", "abc")  # still a secret, and too short for one
        tg.start_soon(write, "after", 2)
    assert isinstance(outcomes["password"], ValidationError)
    assert (await variables.get("alice", "password")).value == "a long secret"
    assert (await variables.get("alice", "before")).value == 1
    assert (await variables.get("alice", "after")).value == 2


async def test_a_failed_group_gives_each_writer_its_own_error(
    variables: VariableStore, store: DataStore
) -> None:
    async with store.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE variables RENAME TO variables_away"))
    errors: list[BaseException] = []

    async def write(n: int) -> None:
        try:
            await variables.set("alice", f"k{n}", n)
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(write, n)
    assert len(errors) == 4 and len({id(e) for e in errors}) == 4
    async with store.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE variables_away RENAME TO variables"))
    await variables.set("alice", "k0", "back")
    assert (await variables.get("alice", "k0")).value == "back"
    assert variables._pending == []


def held_commits(monkeypatch: pytest.MonkeyPatch) -> tuple[anyio.Event, list[int]]:
    """Groups wait for the event before their transaction; the sizes of the groups, in
    order."""
    gate = anyio.Event()
    sizes: list[int] = []
    commit = VariableStore._commit

    async def held(self: VariableStore, group: list[Any]) -> Any:
        sizes.append(len(group))
        await gate.wait()
        return await commit(self, group)

    monkeypatch.setattr(VariableStore, "_commit", held)
    return gate, sizes


async def until(condition: Any) -> None:
    while not condition():
        await a_turn()  # bound at import: a test below holds anyio.lowlevel.checkpoint


async def test_writes_during_a_commit_form_the_next_group(
    variables: VariableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, sizes = held_commits(monkeypatch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(variables.set, "alice", "first", 0)
        await until(lambda: sizes == [1])  # its group is in its transaction
        for n in range(5):
            tg.start_soon(variables.set, "alice", f"k{n}", n)
        await until(lambda: len(variables._pending) == 5)
        gate.set()
    # one of the five led their group once the first was answered: two transactions in all
    assert sizes == [1, 5] and variables._pending == [] and not variables._leading
    assert [(await variables.get("alice", f"k{n}")).value for n in range(5)] == list(range(5))
    assert (await variables.get("alice", "first")).value == 0


async def test_a_write_cancelled_before_its_group_is_not_written(
    variables: VariableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, sizes = held_commits(monkeypatch)
    late = anyio.CancelScope()

    async def write_late() -> None:
        with late:
            await variables.set("alice", "late", 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(variables.set, "alice", "first", 0)
        await until(lambda: sizes == [1])  # another group is being committed
        tg.start_soon(write_late)
        await until(lambda: variables._pending)
        late.cancel()  # the writer gives up while it waits for its turn
        await until(lambda: not variables._pending)
        gate.set()
    assert sizes == [1] and late.cancelled_caught
    assert (await variables.get("alice", "first")).value == 0
    with pytest.raises(VariableNotFound):
        await variables.get("alice", "late")


async def test_a_leader_cancelled_before_its_commit_hands_over(
    variables: VariableStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the leader's pause (the one turn of the loop that lets a group form) is held open
    pause = anyio.Event()
    checkpoint = anyio.lowlevel.checkpoint
    paused: list[int] = []

    async def held_pause() -> None:
        if not paused:
            paused.append(1)
            await pause.wait()
        await checkpoint()

    monkeypatch.setattr(anyio.lowlevel, "checkpoint", held_pause)
    leader = anyio.CancelScope()

    async def lead() -> None:
        with leader:
            await variables.set("alice", "leader", 0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lead)
        await until(lambda: paused)
        tg.start_soon(variables.set, "alice", "follower", 1)
        await until(lambda: len(variables._pending) == 2)
        leader.cancel()  # before its group began: the follower must not wait for ever
    assert leader.cancelled_caught
    assert (await variables.get("alice", "follower")).value == 1
    with pytest.raises(VariableNotFound):
        await variables.get("alice", "leader")
    assert variables._pending == [] and not variables._leading


# -- K1: no plaintext at rest ------------------------------------------------------------


async def test_k1_no_plaintext_at_rest(
    db_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    secrets = {("alice", f"s{i}"): canary(f"s{i}") for i in range(4)}
    secrets[("bob", "pem")] = "-----BEGIN KEY-----\n" + canary("pem") + "\n-----END KEY-----"
    plain = canary("plain")  # the control: a plain value must be found by the same search
    overwritten = canary("overwritten")
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, Cipher.from_spec(KEYS))
        await variables.set("alice", "overwritten", overwritten, secret=True)
        await variables.set("alice", "overwritten", canary("second"))
        for (owner, key), value in secrets.items():
            await variables.set(owner, key, value, secret=True)
        await variables.set("alice", "plain", plain)
        for (owner, key), value in secrets.items():  # the round trip is exact
            assert (await variables.get(owner, key)).value == value
        hidden = [*secrets.values(), overwritten]
        needles = [v.encode() for v in hidden] + [
            line.encode() for v in hidden for line in v.splitlines() if "CANARY" in line
        ]
        if store.is_sqlite:
            db = store.url.removeprefix("sqlite+aiosqlite:///")
            files = _read(db, f"{db}-wal", f"{db}-shm")
            assert len(files) == 3  # read before closing checkpoints the WAL away
            backup = tmp_path / "backup.db"
            with sqlite3.connect(db) as source, sqlite3.connect(backup) as target:
                source.backup(target)
            sources = {"database, WAL and shm files": files, "backup": _read(backup)}
        else:
            sources = await _postgres_blobs(store, request)
        for name, blobs in sources.items():
            # the control: the same search does find a plain value in each source
            assert any(plain.encode() in blob for blob in blobs), f"{name} shows nothing"
            assert not [n for blob in blobs for n in needles if n in blob], name
    if db_url.startswith("sqlite"):  # and after the store closed
        db = db_url.removeprefix("sqlite+aiosqlite:///")
        data = b"".join(_read(db, f"{db}-wal"))
        assert plain.encode() in data and not any(n in data for n in needles)


def _read(*paths: str | Path) -> list[bytes]:
    """The bytes of each of ``paths`` that exists."""
    return [Path(p).read_bytes() for p in paths if Path(p).is_file()]


async def _postgres_blobs(
    store: DataStore, request: pytest.FixtureRequest
) -> dict[str, list[bytes]]:
    from tests.pg import PostgresServer

    server = request.getfixturevalue("pg_server")
    assert isinstance(server, PostgresServer)
    dbname = store.engine.url.database
    assert dbname
    blobs: dict[str, list[bytes]] = {}
    async with store.read() as conn:  # the raw column values, as any SQL client sees them
        rows = (await conn.execute(sa.text("SELECT CAST(v AS text) FROM variables v"))).scalars()
        blobs["SELECT"] = [row.encode() for row in rows]
    pg_dump = _pg_dump()
    if pg_dump is not None:
        url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        result = await anyio.run_process([pg_dump, "--no-owner", url], check=False)
        assert result.returncode == 0, result.stderr.decode()
        blobs["pg_dump"] = [result.stdout]
    if server.data_dir is not None:  # a private cluster: its files, WAL included
        server.execute("CHECKPOINT")
        oid = server.fetchval("SELECT oid FROM pg_database WHERE datname = $1", dbname)
        paths = [*(server.data_dir / "base" / str(oid)).iterdir(),
                 *(server.data_dir / "pg_wal").iterdir()]  # fmt: skip
        blobs["data directory"] = _read(*paths)
    return blobs


def _pg_dump() -> str | None:
    versioned = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), reverse=True)
    for candidate in ["/usr/local/bin/pg_dump", *versioned, shutil.which("pg_dump")]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


async def test_k1_tampered_ciphertext_fails_cleanly(
    variables: VariableStore, store: DataStore, cipher: Cipher
) -> None:
    secret = canary("tamper")
    await variables.set("alice", "t", secret, secret=True)
    row = (await raw_rows(store))[("alice", "t")]
    flipped = list(row.ciphertext)
    flipped[20] = "A" if flipped[20] != "A" else "B"
    async with store.begin() as conn:
        await conn.execute(sa.update(table).where(table.c.id == row.id)
                           .values(ciphertext="".join(flipped)))  # fmt: skip
    fresh = VariableStore(store, cipher)  # past the cache of `variables`
    with pytest.raises(DecryptionFailed) as caught:
        await fresh.get("alice", "t")
    assert secret not in str(caught.value) and caught.value.__cause__ is None
    assert await fresh.secret_values("alice") == []  # skipped, logged, not raised


# -- K2: a ciphertext is bound to its row ------------------------------------------------


async def test_k2_swapped_ciphertexts_fail(
    variables: VariableStore, store: DataStore, cipher: Cipher
) -> None:
    alice_secret, bob_secret = canary("alice"), canary("bob")
    await variables.set("alice", "token", alice_secret, secret=True)
    await variables.set("bob", "token", bob_secret, secret=True)
    await variables.set("alice", "other", canary("other"), secret=True)
    rows = await raw_rows(store)
    alice, bob = rows[("alice", "token")], rows[("bob", "token")]
    async with store.begin() as conn:
        for target, source in ((alice, bob), (bob, alice)):
            await conn.execute(sa.update(table).where(table.c.id == target.id)
                               .values(ciphertext=source.ciphertext))  # fmt: skip
        # and one owner's ciphertext copied onto another key of the same owner
        await conn.execute(sa.update(table).where(table.c.id == rows[("alice", "other")].id)
                           .values(ciphertext=alice.ciphertext))  # fmt: skip
    fresh = VariableStore(store, cipher)
    for owner, key in (("alice", "token"), ("bob", "token"), ("alice", "other")):
        with pytest.raises(DecryptionFailed, match="authentication failed") as caught:
            await fresh.get(owner, key)
        assert alice_secret not in str(caught.value) and bob_secret not in str(caught.value)
    assert await fresh.secret_values("alice") == [] and await fresh.secret_values("bob") == []


# -- K3: key rotation ----------------------------------------------------------------------


class CrashingCipher(Cipher):
    """Dies after ``limit`` encryptions: a rotation killed in the middle of a batch."""

    limit = 0

    def encrypt(self, plaintext: bytes, context: bytes) -> str:
        type(self).limit -= 1
        if type(self).limit < 0:
            raise RuntimeError("killed")
        return super().encrypt(plaintext, context)


async def test_k3_rotation_is_resumable_and_idempotent(store: DataStore) -> None:
    old_only = Cipher.from_spec(f"old:{OLD}")
    owners = [f"user{i}" for i in range(7)]
    expected: dict[str, set[str]] = {owner: set() for owner in owners}
    rows = []
    now = store.clock.now()
    for i in range(5_000):
        row_id, owner, key, value = new_id(), owners[i % 7], f"k{i}", f"secret-{i}-{i * 7919}"
        context = sealing_context(row_id, owner, key)
        rows.append({
            "id": row_id, "owner": owner, "key": key, "value": None, "secret": True,
            "ciphertext": old_only.encrypt(json.dumps(value).encode(), context),
            "key_id": "old", "created_at": now, "updated_at": now,
        })  # fmt: skip
        expected[owner].add(value)
    async with store.begin() as conn:
        await conn.execute(sa.insert(table), rows)

    both = Cipher.from_spec(f"new:{NEW},old:{OLD}")
    variables = VariableStore(store, both)

    async def key_ids() -> dict[str, int]:
        async with store.read() as conn:
            found = await conn.execute(
                sa.select(table.c.key_id, sa.func.count()).group_by(table.c.key_id)
            )
            return {kid: count for kid, count in found.all()}

    # stopped after 4 batches
    first = await variables.rotate(batch=500, max_batches=4)
    assert (first.rotated, first.batches, first.complete, first.failed) == (2000, 4, False, ())
    assert await key_ids() == {"new": 2000, "old": 3000}
    # killed in the middle of its second batch: that batch rolls back
    CrashingCipher.limit = 750
    with pytest.raises(RuntimeError, match="killed"):
        await VariableStore(store, CrashingCipher(both.keys, "new")).rotate(batch=500)
    assert await key_ids() == {"new": 2500, "old": 2500}

    # rerun to the end while reads go on
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while True:
            i = reads * 37 % 5000
            got = await VariableStore(store, both).get(owners[i % 7], f"k{i}")
            assert got.value == f"secret-{i}-{i * 7919}"
            reads += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        rest = await variables.rotate(batch=500)
        tg.cancel_scope.cancel()
    assert (rest.rotated, rest.complete, rest.failed) == (2500, True, ())
    assert reads > 0
    assert await key_ids() == {"new": 5000}
    again = await variables.rotate(batch=500)
    assert (again.rotated, again.batches, again.complete) == (0, 0, True)
    # the old key removed: everything still decrypts
    new_only = VariableStore(store, Cipher.from_spec(f"new:{NEW}"))
    for owner in owners:
        assert set(await new_only.secret_values(owner)) == expected[owner]


@pytest.mark.postgres
async def test_rotation_is_not_complete_while_a_row_it_passed_by_is_under_an_old_key(
    pg_url: str,
) -> None:
    """PostgreSQL: a row a writer holds locked is skipped (``SKIP LOCKED``); the run says so
    (``complete`` False) rather than let the old key be dropped, and the next run rotates it."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=pg_url)
        await store.start(stack, upgrade=True)
        old = VariableStore(store, Cipher.from_spec(f"old:{OLD}"))
        for key in ("a", "b", "c"):
            await old.set("alice", key, f"secret {key} value", secret=True)
        rotating = VariableStore(store, Cipher.from_spec(KEYS))
        async with store.begin() as holder:  # another writer, mid-transaction on "b"
            await holder.execute(sa.select(table.c.id).where(table.c.key == "b").with_for_update())
            first = await rotating.rotate(batch=1)
        assert (first.rotated, first.failed, first.complete) == (2, (), False)
        second = await rotating.rotate(batch=1)
        assert (second.rotated, second.complete) == (1, True)
        new_only = VariableStore(store, Cipher.from_spec(f"new:{NEW}"))
        assert sorted(await new_only.secret_values("alice")) == [
            "secret a value", "secret b value", "secret c value"
        ]  # fmt: skip


async def test_rotation_reports_what_no_key_opens(store: DataStore) -> None:
    lost = Cipher.from_spec(f"lost:{generate_key()}")
    await VariableStore(store, lost).set("alice", "gone", "sealed by a lost key", secret=True)
    await VariableStore(store, Cipher.from_spec(f"old:{OLD}")).set("alice", "ok", "fine value",
                                                                   secret=True)  # fmt: skip
    report = await VariableStore(store, Cipher.from_spec(KEYS)).rotate(batch=1)
    assert report.rotated == 1 and report.failed == (("alice", "gone"),) and report.complete
    with pytest.raises(ValidationError):
        await VariableStore(store, Cipher.from_spec(KEYS)).rotate(batch=0)


# -- the in-process cache ----------------------------------------------------------------


async def test_cache_counts_hits_and_misses(store: DataStore, cipher: Cipher) -> None:
    now = [0.0]
    cache = VariableCache(ttl=10, monotonic=lambda: now[0])
    variables = VariableStore(store, cipher, cache)
    await variables.set("alice", "k", 1)
    secret = canary("cached")
    await variables.set("alice", "s", secret, secret=True)

    async def read(key: str) -> Any:
        try:
            return (await variables.get("alice", key)).value
        except VariableNotFound:
            return "<absent>"

    assert await read("k") == 1 and (cache.hits, cache.misses) == (0, 1)
    assert await read("k") == 1 and (cache.hits, cache.misses) == (1, 1)
    assert await read("s") == secret and await read("s") == secret
    assert (cache.hits, cache.misses) == (2, 2)
    # absent variables are cached too, and a write makes them present at once
    assert await read("nope") == "<absent>" and await read("nope") == "<absent>"
    assert (cache.hits, cache.misses) == (3, 3)
    await variables.set("alice", "nope", "here now")
    assert await read("nope") == "here now" and (cache.hits, cache.misses) == (3, 4)
    # a write through this store is seen at once
    await variables.set("alice", "k", 2)
    assert await read("k") == 2 and (cache.hits, cache.misses) == (3, 5)
    await variables.delete("alice", "k")
    assert await read("k") == "<absent>"
    # entries expire
    assert await read("s") == secret
    hits = cache.hits
    now[0] += 11
    assert await read("s") == secret and cache.hits == hits
    # secrets are cached sealed
    assert secret not in repr(cache._entries) and "v1.new." in repr(cache._entries)


@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "through"])
async def test_concurrent_misses_of_one_variable_read_the_database_once(
    store: DataStore, cipher: Cipher, monkeypatch: pytest.MonkeyPatch, in_place: bool
) -> None:
    cache = VariableCache()
    variables = VariableStore(store, cipher, cache)
    await variables.set("alice", "k", {"v": 1})
    queries: list[str] = []
    engine = store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", lambda *a: queries.append(a[2]))
    read_in_place = DataStore.read_in_place

    def counted(self: DataStore, fn: Any) -> Any:
        if not in_place:
            raise NotInPlace("SQLite said no")
        queries.append("in place FROM variables")
        return read_in_place(self, fn)

    monkeypatch.setattr(DataStore, "read_in_place", counted)
    got: list[Any] = []

    async def read() -> None:
        got.append((await variables.get("alice", "k")).value)

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(read)
    assert got == [{"v": 1}] * 10
    assert len([q for q in queries if "FROM variables" in q]) == 1
    # in place, the read is done before the next reader asks; through SQLAlchemy (a thread,
    # or PostgreSQL) the other nine wait for it
    joined = 0 if in_place and store.sqlite_path is not None else 9
    assert (cache.misses, cache.hits, cache.joined_hits) == (1, 9, joined)


async def test_readers_of_a_failed_read_read_for_themselves(
    store: DataStore, cipher: Cipher
) -> None:
    cache = VariableCache()
    variables = VariableStore(store, cipher, cache)
    await variables.set("alice", "k", 1)
    async with store.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE variables RENAME TO variables_away"))
    failures: list[BaseException] = []

    async def read() -> None:
        try:
            await variables.get("alice", "k")
        except sa.exc.DBAPIError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(read)
    # the first read failed; the two that waited for it then tried, and failed, on their own
    assert len(failures) == 3 and len({id(f) for f in failures}) == 3
    assert (cache.misses, cache.joined_hits) == (3, 0) and cache._flights == {}
    async with store.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE variables_away RENAME TO variables"))
    assert (await variables.get("alice", "k")).value == 1


async def test_a_write_during_a_read_is_not_joined(store: DataStore, cipher: Cipher) -> None:
    # a lookup after a write must not wait for a read that began before it
    cache = VariableCache()
    variables = VariableStore(store, cipher, cache)
    await variables.set("alice", "k", "old")
    lookup = await cache.lookup("alice", "k")  # a read begins (and is not finished yet)
    assert lookup.flight is not None
    await variables.set("alice", "k", "new")
    assert (await variables.get("alice", "k")).value == "new"
    await cache.fill(lookup, None)  # the old read lands late: not cached (a write came since)
    assert (await variables.get("alice", "k")).value == "new"


async def test_cache_size_is_bounded(store: DataStore, cipher: Cipher) -> None:
    cache = VariableCache(max_entries=3)
    variables = VariableStore(store, cipher, cache)
    for i in range(5):
        await variables.set("alice", f"k{i}", i)
        assert (await variables.get("alice", f"k{i}")).value == i
    assert len(cache) == 3


async def test_without_a_shared_cache_other_processes_wait_for_the_ttl(
    db_url: str, cipher: Cipher
) -> None:
    # the documented bound: another process's write is seen once the local entry expires
    now = [0.0]
    async with AsyncExitStack() as stack:
        s1, s2 = DataStore(url=db_url), DataStore(url=db_url)
        await s1.start(stack, upgrade=True)
        await s2.start(stack)
        a = VariableStore(s1, cipher, VariableCache(ttl=5, monotonic=lambda: now[0]))
        b = VariableStore(s2, cipher, VariableCache(ttl=5, monotonic=lambda: now[0]))
        await a.set("alice", "k", "one")
        assert (await b.get("alice", "k")).value == "one"
        await a.set("alice", "k", "two")
        assert (await b.get("alice", "k")).value == "one"  # stale, within the ttl
        now[0] += 5
        assert (await b.get("alice", "k")).value == "two"


# -- the shared cache (real redis-server) ------------------------------------------------


class RedisServer:
    """A throwaway redis-server (or valkey-server) on loopback, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("valkey-server") or shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not self._pong():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_redis() -> RedisServer:
    """A server, or a skip, or, when CI says redis is required, a failure."""
    try:
        import valkey  # noqa: F401

        return RedisServer()
    except (ImportError, FileNotFoundError) as exc:
        why = f"redis tests need redis-server and the valkey package ({exc})"
        if os.environ.get("CRONIUM_REQUIRE_REDIS") == "1":
            pytest.fail(why + "; CRONIUM_REQUIRE_REDIS=1")
        pytest.skip(why)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _start_redis()
    try:
        yield server
    finally:
        server.stop()


def shared(server: RedisServer, prefix: str, **options: Any) -> VariableCache:
    return VariableCache(ttl=3600, shared=ValkeyCache(url=server.url, prefix=prefix), **options)


async def test_shared_cache_keeps_two_processes_correct(
    db_url: str, cipher: Cipher, redis_server: RedisServer
) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        s1, s2 = DataStore(url=db_url), DataStore(url=db_url)
        await s1.start(stack, upgrade=True)
        await s2.start(stack)
        a = VariableStore(s1, cipher, shared(redis_server, prefix))
        b = VariableStore(s2, cipher, shared(redis_server, prefix))
        await a.start(stack)
        await b.start(stack)

        await a.set("alice", "k", "v1")
        assert (await b.get("alice", "k")).value == "v1"  # b: miss, fills Valkey
        assert (b.cache.hits, b.cache.misses) == (0, 1)
        assert (await a.get("alice", "k")).value == "v1"  # a: served by Valkey
        assert a.cache.shared_hits == 1 and a.cache.misses == 0
        assert (await b.get("alice", "k")).value == "v1"  # b: from its own memory
        assert (b.cache.hits, b.cache.shared_hits) == (1, 0)
        # a write through either is seen by the other's next read, whatever the ttl (3600 s)
        for round_ in range(20):
            writer, reader = (a, b) if round_ % 2 else (b, a)
            await writer.set("alice", "k", f"round {round_}")
            assert (await reader.get("alice", "k")).value == f"round {round_}"
            assert (await writer.get("alice", "k")).value == f"round {round_}"
        # absent, then created, then deleted
        with pytest.raises(VariableNotFound):
            await b.get("alice", "later")
        await a.set("alice", "later", 1)
        assert (await b.get("alice", "later")).value == 1
        await a.delete("alice", "later")
        with pytest.raises(VariableNotFound):
            await b.get("alice", "later")
        # secrets travel sealed: Valkey never holds their plaintext
        secret = canary("valkey")
        await a.set("alice", "s", secret, secret=True)
        assert (await b.get("alice", "s")).value == secret
        assert (await a.get("alice", "s")).value == secret
        from valkey import asyncio as valkey

        client = valkey.Valkey.from_url(redis_server.url)
        stack.push_async_callback(client.aclose)
        names = await client.keys(f"{prefix}:*")
        stored = [await client.get(name) for name in names]
        assert any(b"v1.new." in value for value in stored if value)
        assert not any(secret.encode() in value for value in stored if value)
        assert not any(b"alice" in name for name in names)  # owners stay out of key names


async def test_a_row_planted_in_the_shared_cache_under_another_name_is_not_served(
    db_url: str, cipher: Cipher, redis_server: RedisServer
) -> None:
    """K2 through Valkey: whoever can write to it copies alice's cached (sealed) secret under
    bob's key of the same name; bob's read ignores the row that is not his and reads his own
    from the database (a row decrypts only as the variable it was sealed for)."""
    prefix = f"test-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        store = DataStore(url=db_url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, cipher, shared(redis_server, prefix))
        await variables.start(stack)
        alices_secret = canary("alice")
        await variables.set("alice", "db_password", alices_secret, secret=True)
        await variables.set("bob", "db_password", "bob's own password", secret=True)
        assert (await variables.get("alice", "db_password")).value == alices_secret

        from valkey import asyncio as valkey

        client = valkey.Valkey.from_url(redis_server.url)
        stack.push_async_callback(client.aclose)
        shared_layer = variables.cache.shared
        assert shared_layer is not None
        [alices] = await client.keys(f"{prefix}:d:*")  # the one row cached so far
        bobs_version = await shared_layer.version("bob", "db_password")
        await client.set(
            f"{prefix}:d:{shared_layer._ident('bob', 'db_password')}:{bobs_version}",
            await client.get(alices),
        )
        reader = VariableStore(store, cipher, shared(redis_server, prefix))  # another process
        await reader.start(stack)
        got = await reader.get("bob", "db_password")
        assert (got.owner, got.value) == ("bob", "bob's own password")
        assert reader.cache.shared_hits == 0 and reader.cache.misses == 1


async def test_shared_cache_after_rotation(db_url: str, redis_server: RedisServer) -> None:
    # b cached rows sealed by "old"; once a rotates them, b (which dropped "old") still reads
    prefix = f"test-{uuid.uuid4().hex}"
    async with AsyncExitStack() as stack:
        s1, s2 = DataStore(url=db_url), DataStore(url=db_url)
        await s1.start(stack, upgrade=True)
        await s2.start(stack)
        writer = VariableStore(s1, Cipher.from_spec(f"old:{OLD}"), shared(redis_server, prefix))
        await writer.start(stack)
        await writer.set("alice", "s", "rotate me please", secret=True)
        assert (await writer.get("alice", "s")).value == "rotate me please"  # cached sealed
        rotator = VariableStore(s1, Cipher.from_spec(KEYS), shared(redis_server, prefix))
        await rotator.start(stack)
        assert (await rotator.rotate()).rotated == 1
        reader = VariableStore(s2, Cipher.from_spec(f"new:{NEW}"), shared(redis_server, prefix))
        await reader.start(stack)
        assert (await reader.get("alice", "s")).value == "rotate me please"


async def test_shared_cache_outage_falls_back_to_the_database(
    db_url: str, cipher: Cipher, caplog: pytest.LogCaptureFixture
) -> None:
    server = _start_redis()
    try:
        async with AsyncExitStack() as stack:
            store = DataStore(url=db_url)
            await store.start(stack, upgrade=True)
            variables = VariableStore(store, cipher, shared(server, "outage"))
            await variables.start(stack)
            await variables.set("alice", "k", "before")
            assert (await variables.get("alice", "k")).value == "before"
            assert (await variables.get("alice", "k")).value == "before"
            assert variables.cache.hits == 1
            server.stop()
            misses = variables.cache.misses
            assert (await variables.get("alice", "k")).value == "before"
            await variables.set("alice", "k", "during")
            assert (await variables.get("alice", "k")).value == "during"
            assert variables.cache.misses == misses + 2  # every read went to the database
            assert "shared variable cache unavailable" in caplog.text
            assert "could not publish a variable write" in caplog.text
    finally:
        server.stop()


async def test_masker_from_secret_values(variables: VariableStore) -> None:
    # what the worker does per job: mask every line with the owner's secrets
    secret = canary("mask")
    await variables.set("alice", "token", secret, secret=True)
    await variables.set("alice", "plain", "not hidden at all")
    await variables.set("bob", "token", canary("bob"), secret=True)
    masker = SecretMasker(await variables.secret_values("alice"))
    assert masker.mask(f"token={secret} plain=not hidden at all") == (
        "token=*** plain=not hidden at all"
    )


# -- the runtime API ---------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@asynccontextmanager
async def api(db_url: str, clock: FakeClock) -> AsyncIterator[Runtime]:
    async with runtime(db_url, clock) as rt:
        rt.service.variables = VariableStore(rt.store, Cipher.from_spec(KEYS))
        yield rt


async def test_api_get_and_put(db_url: str, clock: FakeClock) -> None:
    async with api(db_url, clock) as rt:
        job, token = await rt.running_job(owner="alice")
        path = f"/executions/{job.id}/variables/api.url"
        missing = refused(await rt.call("GET", path, token), 404, "not_found")
        assert "api.url" in missing["message"] and "alice" not in missing["message"]
        for value in ({"a": [1, "ü", None]}, "text", 3, None, True):
            assert ok(await rt.call("PUT", path, token, json={"value": value})) is None
            assert ok(await rt.call("GET", path, token)) == {"key": "api.url", "value": value}
        # a secret: stored sealed, read back in clear by the owner's script
        secret = canary("api")
        secret_path = f"/executions/{job.id}/variables/password"
        ok(await rt.call("PUT", secret_path, token, json={"value": secret, "secret": True}))
        assert ok(await rt.call("GET", secret_path, token)) == {"key": "password", "value": secret}
        row = (await raw_rows(rt.store))[("alice", "password")]
        assert row.secret and secret not in row.ciphertext
        # "secret" omitted keeps it secret
        ok(await rt.call("PUT", secret_path, token, json={"value": secret + "!"}))
        assert (await raw_rows(rt.store))[("alice", "password")].secret
        assert rt.service.variables is not None
        stored = await rt.service.variables.get("alice", "password")
        assert stored.value == secret + "!"


async def test_api_variables_belong_to_the_events_owner(db_url: str, clock: FakeClock) -> None:
    async with api(db_url, clock) as rt:
        alice_job, alice_token = await rt.running_job(owner="alice")
        bob_job, bob_token = await rt.running_job(owner="bob")
        alice_path = f"/executions/{alice_job.id}/variables/shared_key"
        bob_path = f"/executions/{bob_job.id}/variables/shared_key"
        ok(await rt.call("PUT", alice_path, alice_token, json={"value": "alice's",
                                                                "secret": True}))  # fmt: skip
        # bob's script does not see alice's variable: simply not found
        body = refused(await rt.call("GET", bob_path, bob_token), 404, "not_found")
        assert "alice" not in json.dumps(body)
        ok(await rt.call("PUT", bob_path, bob_token, json={"value": "bob's"}))
        assert ok(await rt.call("GET", alice_path, alice_token))["value"] == "alice's"
        assert ok(await rt.call("GET", bob_path, bob_token))["value"] == "bob's"
        # and bob's token cannot name alice's execution
        refused(await rt.call("GET", alice_path, bob_token), 403, "forbidden")
        # another event of alice's sees it: variables are the user's, not the event's
        other_job, other_token = await rt.running_job(owner="alice")
        other_path = f"/executions/{other_job.id}/variables/shared_key"
        assert ok(await rt.call("GET", other_path, other_token))["value"] == "alice's"
        unauthorized(await rt.call("GET", alice_path))


@pytest.mark.parametrize(
    ("key", "body", "status", "error"),
    [
        ("CRONIUM_TOKEN", {"value": 1}, 400, "bad_request"),
        ("cronium_token", {"value": 1}, 400, "bad_request"),
        ("path", {"value": 1}, 400, "bad_request"),
        ("HOME", None, 400, "bad_request"),
        ("x" * 129, None, 400, "bad_request"),
        ("a%20b", None, 400, "bad_request"),
        ("ok", {}, 400, "bad_request"),  # no value
        ("ok", {"value": 1, "secret": "yes"}, 400, "bad_request"),
        ("ok", {"value": "abc", "secret": True}, 400, "bad_request"),  # too short a secret
        ("ok", {"value": 12345, "secret": True}, 400, "bad_request"),
        ("ok", {"value": "nul \u0000"}, 400, "bad_request"),
        ("ok", {"value": "x" * (1024 * 1024)}, 413, "payload_too_large"),
    ],
)
async def test_api_bad_requests(
    db_url: str, clock: FakeClock, key: str, body: Any, status: int, error: str
) -> None:
    async with api(db_url, clock) as rt:
        job, token = await rt.running_job(owner="alice")
        path = f"/executions/{job.id}/variables/{key}"
        method = "GET" if body is None else "PUT"
        refused(await rt.call(method, path, token, json=body), status, error)
        assert await raw_rows(rt.store) == {}


async def test_api_undecryptable_secret_is_a_clean_500(db_url: str, clock: FakeClock) -> None:
    async with api(db_url, clock) as rt:
        alice_job, alice_token = await rt.running_job(owner="alice")
        bob_job, bob_token = await rt.running_job(owner="bob")
        alice_secret, bob_secret = canary("alice"), canary("bob")
        for job, token, value in ((alice_job, alice_token, alice_secret),
                                  (bob_job, bob_token, bob_secret)):  # fmt: skip
            ok(await rt.call("PUT", f"/executions/{job.id}/variables/token", token,
                             json={"value": value, "secret": True}))  # fmt: skip
        rows = await raw_rows(rt.store)
        async with rt.store.begin() as conn:  # K2 over HTTP: swap the two owners' secrets
            for target, source in (("alice", "bob"), ("bob", "alice")):
                await conn.execute(
                    sa.update(table)
                    .where(table.c.id == rows[(target, "token")].id)
                    .values(ciphertext=rows[(source, "token")].ciphertext)
                )
        rt.service.variables = VariableStore(rt.store, Cipher.from_spec(KEYS))  # no cache
        for job, token in ((alice_job, alice_token), (bob_job, bob_token)):
            response = await rt.call("GET", f"/executions/{job.id}/variables/token", token)
            body = refused(response, 500, "internal_error")
            assert body["message"] == "internal error"
            assert alice_secret not in response.text and bob_secret not in response.text


async def test_tool_action_delegates_to_the_registry(db_url: str, clock: FakeClock) -> None:
    # (RuntimeService.tool_action was added with this slice; the HTTP route comes with tools)
    from cronium_core.runtime import FeatureUnavailable
    from cronium_core.tools import ToolContext, ToolRegistry

    calls: list[tuple[str, Any, ToolContext]] = []

    class Echo:
        async def execute(self, action: str, config: Any, context: ToolContext) -> Any:
            calls.append((action, dict(config), context))
            return {"echo": dict(config)}

    async with runtime(db_url, clock) as rt:
        job, _ = await rt.running_job(owner="carol")
        with pytest.raises(FeatureUnavailable, match="tool actions arrive"):
            await rt.service.tool_action(job, "echo", "send", {})
        registry = ToolRegistry()
        registry.add("echo", Echo())
        rt.service.tools = registry
        result = await rt.service.tool_action(job, "echo", "send", {"x": 1})
        assert result == {"echo": {"x": 1}}
        assert calls == [
            ("send", {"x": 1}, ToolContext(job_id=job.id, event_id=job.event_id, owner="carol"))
        ]


async def test_a_plain_variables_new_value_rewrites_one_page(
    sqlite_url: str, cipher: Cipher
) -> None:
    """SQLite: replacing a plain variable's value writes its row's page and nothing else (the
    ``key_id`` index entry stays as it is: assigning that column, NULL again, rewrote it too,
    a second page in the WAL per commit); the other kinds of update still set every column."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, cipher)
        await variables.set("alice", "plain", 0)
        await variables.set("alice", "hidden", "s3cret-0", secret=True)
        assert store.sqlite_path is not None
        raw = sqlite3.connect(store.sqlite_path, isolation_level=None)

        def frames() -> int:
            return int(raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0][1])

        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for n in range(1, 21):  # one commit each
            await variables.set("alice", "plain", {"n": n})
        assert frames() == 20  # one page per commit

        # plain -> secret -> plain: the sealed columns are set, then cleared
        await variables.set("alice", "plain", "now-a-secret", secret=True)
        await variables.set("alice", "hidden", "plain again", secret=False)
        rows = dict(
            (r[0], r[1:])
            for r in raw.execute(
                "SELECT key, value, ciphertext IS NULL, key_id, secret FROM variables"
            )
        )
        raw.close()
        assert rows["plain"][0] is None and rows["plain"][1:] == (0, cipher.current, 1)
        assert rows["hidden"] == ('"plain again"', 1, None, 0)
        fresh = VariableStore(store, cipher)
        assert (await fresh.get("alice", "plain")).value == "now-a-secret"
        assert (await fresh.get("alice", "hidden")).value == "plain again"


async def test_a_lone_plain_update_is_one_statement(sqlite_url: str, cipher: Cipher) -> None:
    """SQLite, in place: a write of a plain value over a plain variable, alone in its group,
    is one ``UPDATE`` by key (no read first) and keeps the variable's creation time; over a
    secret, or for a new key, the write goes the general way and keeps the secret a secret."""
    async with AsyncExitStack() as stack:
        store = DataStore(url=sqlite_url)
        await store.start(stack, upgrade=True)
        variables = VariableStore(store, cipher)
        first = await variables.set("alice", "plain", 0)
        await variables.set("alice", "hidden", "s3cret-0", secret=True)
        conn = store._in_place
        assert conn is not None
        statements: list[str] = []
        conn.set_trace_callback(statements.append)

        store.clock = FakeClock(first.created_at + timedelta(hours=1))
        written = await variables.set("alice", "plain", {"n": 1})
        assert [s.split()[0] for s in statements] == ["BEGIN", "UPDATE", "COMMIT"]
        assert written.created_at == first.created_at
        assert written.updated_at == first.created_at + timedelta(hours=1)
        stored = await VariableStore(store, cipher).get("alice", "plain")  # no cache
        assert (stored.value, stored.secret, stored.created_at, stored.updated_at) == (
            {"n": 1}, False, first.created_at, written.updated_at
        )  # fmt: skip

        statements.clear()
        over_secret = await variables.set("alice", "hidden", "s3cret-1")  # the flag kept
        assert over_secret.secret and "SELECT" in [s.split()[0] for s in statements]
        assert (await VariableStore(store, cipher).get("alice", "hidden")).secret
        new = await variables.set("alice", "new", "v")
        assert new.created_at == new.updated_at
        assert (await VariableStore(store, cipher).get("alice", "new")).value == "v"


class FailingOnBoom(VariableStore):
    """Variables whose read of the key ``boom`` fails as a bug would (a 500)."""

    async def get(self, owner: str, key: str) -> Any:
        if key == "boom":
            raise RuntimeError("a bug")
        return await super().get(owner, key)


#: path segments the equivalence test builds paths from (the job's id is added)
SEGMENTS = ["executions", "variables", "input", "output", "condition", "context", "k", "boom", ""]
BODIES = [None, b'{"value": {"n": 1}}', b'{"condition": true}', b"not json", b"[1]"]


def test_direct_calls_answer_and_count_as_the_starlette_stack_does(sqlite_url: str) -> None:
    """Property: the scripts' calls that the app serves straight (`_RuntimeApp.direct`) give
    the same status, body and headers, and the same request metrics, as Starlette's router and
    middleware give them (the app with no direct routes), for any method and path — good or
    bad token, bad bodies, unknown paths, a handler that fails (500)."""
    clock = FakeClock()
    with start_blocking_portal("asyncio") as portal:
        stack = AsyncExitStack()

        async def start() -> tuple[RuntimeService, Any, Any, str, str]:
            store = DataStore(url=sqlite_url, clock=clock)
            await store.start(stack, upgrade=True)
            queue = JobQueue(store=store, lease_seconds=30)
            tokens = ExecutionTokens({"k1": TOKEN_KEY}, "k1", clock=clock)
            service = RuntimeService(queue, store, tokens)
            service.variables = FailingOnBoom(store, Cipher.from_spec(KEYS))
            service.limiter = RateLimiter(rate=1e9, burst=1e9)
            event = await store.add_event(Event(name="equivalence", action=NOOP))
            await queue.enqueue(event, input={"a": 1})
            [job] = await queue.claim("w1", 1)
            direct, stacked = create_app(service), create_app(service)
            stacked.direct = {}
            return service, direct, stacked, job.id, tokens.mint(job)

        _, direct, stacked, job_id, token = portal.call(start)
        served = {(method, template) for (method, _, _), (template, _) in direct.direct.items()}
        assert served == {
            ("GET", "/executions/{id}/variables/{key}"),
            ("PUT", "/executions/{id}/variables/{key}"),
            ("GET", "/executions/{id}/input"), ("POST", "/executions/{id}/output"),
            ("GET", "/executions/{id}/condition"), ("POST", "/executions/{id}/condition"),
            ("GET", "/executions/{id}/context"),
        }  # fmt: skip

        async def both(method: str, path: str, auth: str | None, body: bytes | None) -> None:
            answers = []
            for app in (direct, stacked):
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
                    r = await http.request(method, f"http://t{path}", headers=headers, content=body)
                kept = {k: v for k, v in r.headers.items() if k != "date"}
                answers.append((r.status_code, r.content, kept))
            assert answers[0] == answers[1], (method, path)

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD"]),
            segments=st.one_of(
                # the scripts' calls, with another id, an empty part, a slash more
                st.tuples(
                    st.just("executions"),
                    st.sampled_from(["JOB", "JOB", "another", ""]),
                    st.sampled_from(["input", "output", "condition", "context", "variables"]),
                ).map(list)
                | st.tuples(
                    st.just("executions"),
                    st.sampled_from(["JOB", "JOB", "another"]),
                    st.just("variables"),
                    st.sampled_from(["k", "never", "boom", "", "bad key!"]),
                ).map(list),
                st.lists(st.sampled_from([*SEGMENTS, "JOB"]), min_size=1, max_size=5),
            ).flatmap(lambda parts: st.sampled_from([parts, [*parts, ""]])),
            auth=st.sampled_from(["good", "bad", None]),
            body=st.sampled_from(BODIES),
        )
        @example(method="GET", segments=["executions", "JOB", "variables", "boom"], auth="good",
                 body=None)  # fmt: skip
        def run(method: str, segments: list[str], auth: str | None, body: bytes | None) -> None:
            path = "/" + "/".join(job_id if s == "JOB" else s for s in segments)
            given_token = {"good": token, "bad": token[:-4] + "AAAA", None: None}[auth]
            portal.call(both, method, path, given_token, body)

        try:
            run()
            # every request counted alike: by method, route template and status
            assert direct.metrics.requests._series.keys() == stacked.metrics.requests._series.keys()
            for series, (counts, _) in direct.metrics.requests._series.items():
                assert sum(counts) == sum(stacked.metrics.requests._series[series][0]), series
        finally:
            portal.call(stack.aclose)
