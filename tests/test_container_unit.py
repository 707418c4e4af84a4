"""The container executor's pure parts: option and setting checks at the boundary, the log
frame parser, the OCI runtime policy, owner labels. No engine needed."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronium_core.errors import ValidationError
from cronium_executors.container import (
    ContainerSettings,
    JobOptions,
    RuntimeVersion,
    owner_is_dead,
    parse_size,
    process_owner,
    read_frames,
    runtime_problem,
)

LIMITS = ContainerSettings().limits


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


@given(
    st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(min_size=1, max_size=300)), max_size=20),
    st.integers(min_value=1, max_value=17),
)
def test_frames_come_out_as_written_whatever_the_read_sizes(
    frames: list[tuple[int, bytes]], step: int
) -> None:
    raw = b"".join(frame(s, d) for s, d in frames)
    assert list(read_frames(Trickle(raw, step))) == frames  # type: ignore[arg-type]


def test_a_cut_stream_ends_without_error_and_keeps_what_came() -> None:
    raw = frame(1, b"hello\n") + frame(2, b"partial")[:-3]
    assert list(read_frames(io.BytesIO(raw))) == [(1, b"hello\n"), (2, b"part")]


@pytest.mark.parametrize(
    ("text", "size"),
    [("256m", 256 * 1024**2), ("1g", 1024**3), ("64MiB", 64 * 1024**2), ("512k", 512 * 1024),
     ("1.5g", int(1.5 * 1024**3)), (4096, 4096)],
)  # fmt: skip
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text, "memory") == size


@pytest.mark.parametrize("bad", ["", "lots", "-1m", "1x", True, 0, -5, None, "1e9"])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="memory"):
        parse_size(bad, "memory")


def test_defaults_are_safe_and_capped_by_the_limits() -> None:
    options = JobOptions.parse({}, LIMITS)
    assert options.network == "isolated"
    assert options.memory == 256 * 1024**2 and options.pids == 256 and options.cpus == 1.0
    small = JobOptions(memory=64 * 1024**2, cpus=0.5, pids=32, tmp_size=1024**2)
    capped = JobOptions.parse({}, small)
    assert (capped.memory, capped.cpus, capped.pids, capped.tmp_size) == (
        64 * 1024**2,
        0.5,
        32,
        1024**2,
    )


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"memory": "64g"}, "memory"),
        ({"cpus": 64}, "cpus"),
        ({"cpus": True}, "cpus"),
        ({"pids": 4}, "pids"),
        ({"pids": 10**6}, "pids"),
        ({"network": "host"}, "network"),
        ({"privileged": True}, "privileged"),
        ({"image": "--privileged"}, "image"),
        ({"image": "a b"}, "image"),
        ({"image": "x" * 300}, "image"),
        ({"tmp_size": "100g"}, "tmp_size"),
    ],
)
def test_event_options_outside_the_limits_are_refused(
    options: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        JobOptions.parse(options, LIMITS)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "memory": st.integers(min_value=1, max_value=4 * 1024**3),
            "cpus": st.floats(min_value=0.01, max_value=4, allow_nan=False),
            "pids": st.integers(min_value=1, max_value=4096),
            "network": st.sampled_from(["isolated", "none", "egress", "host", "bridge"]),
        },
    )
)
def test_accepted_options_never_exceed_the_limits(options: dict[str, object]) -> None:
    try:
        parsed = JobOptions.parse(options, LIMITS)
    except ValidationError:
        return
    assert parsed.memory <= LIMITS.memory
    assert parsed.cpus <= LIMITS.cpus
    assert 8 <= parsed.pids <= LIMITS.pids
    assert parsed.network in ("isolated", "none", "egress")


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"user": "0"}, "user"),
        ({"user": "0:0"}, "user"),
        ({"user": "root"}, "user"),
        ({"subnet_pool": "10.0.0.0/29"}, "subnet_pool"),
        ({"subnet_pool": "fd00::/64"}, "subnet_pool"),
        ({"subnet_pool": "nonsense"}, "subnet_pool"),
        ({"images": {"ruby": "x:1"}}, "images"),
        ({"images": {"python": "--privileged"}}, "images"),
        ({"relay_image": "-x"}, "relay_image"),
        ({"network_pool": "2"}, "network_pool"),
        ({"allow_unpatched_runtime": 1}, "allow_unpatched_runtime"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_bad_settings_are_refused(config: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ContainerSettings.from_config(config, engine="docker")


def test_each_engine_has_its_own_subnet_pool() -> None:
    docker = ContainerSettings.from_config({}, engine="docker")
    podman = ContainerSettings.from_config({}, engine="podman")
    assert docker.subnet_pool != podman.subnet_pool


@pytest.mark.parametrize(
    ("runtime", "refused"),
    [
        (RuntimeVersion(name="runc", version="1.1.5+ds1", build="1.1.5+ds1-1+deb12u1"), False),
        (RuntimeVersion(name="runc", version="1.1.5+ds1", build="1.1.5+ds1-1"), True),
        (RuntimeVersion(name="runc", version="1.1.11"), True),
        (RuntimeVersion(name="runc", version="1.1.12"), False),
        (RuntimeVersion(name="runc", version="1.2.8"), False),
        (RuntimeVersion(name="runc", version="unknown"), True),
        (RuntimeVersion(name="crun", version="1.8"), False),
    ],
)
def test_runtime_policy(runtime: RuntimeVersion, refused: bool) -> None:
    assert (runtime_problem(runtime) is not None) is refused


def test_owner_labels_tell_a_live_process_from_a_dead_one() -> None:
    assert not owner_is_dead(process_owner())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = process_owner(child.pid)
    assert not owner_is_dead(owner)
    child.kill()
    child.wait()
    assert owner_is_dead(owner)
    # a recycled pid has another start time
    host, pid, _ = process_owner().split(":")
    assert owner_is_dead(f"{host}:{pid}:1")
    # owners on other hosts are not ours to judge
    assert not owner_is_dead(f"another-host:{os.getpid() + 1}:1")


def test_the_hardened_seccomp_profile_closes_namespaces_and_keeps_the_rest() -> None:
    from cronium_executors._seccomp import CLOSED, PODMAN_DEFAULT, harden

    source = next((p for p in PODMAN_DEFAULT if p.is_file()), None)
    if source is None:
        pytest.skip("no Podman default seccomp profile on this host")
    import json

    original = json.loads(source.read_text())
    hardened = harden(original)

    def allowed_unconditionally(profile: dict[str, object]) -> set[str]:
        names: set[str] = set()
        for rule in profile["syscalls"]:  # type: ignore[attr-defined]
            if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args"):
                names |= set(rule.get("names", []))
        return names

    before, after = allowed_unconditionally(original), allowed_unconditionally(hardened)
    assert "unshare" in before  # what made it necessary
    assert after == before - set(CLOSED)
    assert hardened["defaultAction"] == original["defaultAction"]
    clone = [r for r in hardened["syscalls"] if r.get("names") == ["clone"]]
    assert clone and clone[0]["args"][0]["op"] == "SCMP_CMP_MASKED_EQ"
    assert clone[0]["args"][0]["value"] & 0x10000000  # CLONE_NEWUSER refused
    refused = {
        n
        for r in hardened["syscalls"]
        if r["action"] == "SCMP_ACT_ERRNO" and not r.get("includes") and not r.get("excludes")
        for n in r["names"]
    }
    assert {"unshare", "setns", "mount", "pivot_root", "clone3"} <= refused
    assert original == json.loads(source.read_text()), "the input is not modified"
