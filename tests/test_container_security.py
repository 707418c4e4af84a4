"""The sandbox of the docker and podman executors, attacked from inside real jobs
(RELIABILITY §9.4, X1-X5).

- X1: every container the executor makes (a job of each language image, and the relay) is
  audited with ``docker inspect`` / ``podman inspect`` against CIS Docker 5.x, and the job
  checks its own credentials and mounts from inside (``/proc/self/status``, mountinfo).
- X2: one Python job tries the classic escapes (mount, unshare, chroot, setns, /proc/sys,
  cgroup ``release_agent``, leaked fds, setuid, raw sockets, engine sockets, secrets on the
  file system, the host's services and the metadata address); every attempt must fail, and
  the runtime API answers only to the job's own valid token.
- X3: a fork bomb, a memory hog, full tmpfs mounts, 10k open files and a 4-process CPU spin are
  each contained while a canary job runs beside them with its latency measured.
- X4: ``network: none`` has no network at all; the isolated job network routes nowhere but the
  relay; two users' concurrent jobs cannot reach each other's network, API or workspace.
- X5: secrets in the worker's environment and configuration never reach the job.

Network rule (ENVIRONMENT.md): a job here only ever tries addresses of this machine, listeners
this test starts, and its own network. The one exception, 169.254.169.254, is tried (X2) only
once the job has shown that no packet can leave towards it: it has no default route, or its
gateway does not even answer ARP (EHOSTUNREACH), so the kernel never sends the packet.

Everything looked at is scoped to the labels of this test's own jobs and worker: other tests may
use the same engines at the same time.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import statistics
import subprocess
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from cronium_core import Cronium, Event, Job, JobStatus, Script
from cronium_core.crypto import generate_key
from cronium_executors.container import EXECUTION, KIND, OWNER, process_owner
from tests.containers import (
    LANGUAGES,
    container_cronium,
    engine_cli,
    engine_params,
    executor_config,
)

pytestmark = pytest.mark.anyio

MiB = 1024**2
#: the executor's defaults (container.JobOptions / ContainerSettings), as the audit expects them
DEFAULT_MEMORY = 256 * MiB
DEFAULT_PIDS = 256
DEFAULT_TMP = 64 * MiB
DEFAULT_WORK = 64 * MiB
NOFILE = 1024
JOB_USER = "1000:1000"
SCRIPT_DIR = "/cronium/job"
#: the caps podman grants by default (containers.conf): what its CapDrop must cover when it
#: lists the dropped caps one by one instead of "ALL"
PODMAN_DEFAULT_CAPS = {
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
}
#: what the engines add to a job's environment on their own (besides HOSTNAME)
ENGINE_ENV = {"docker": set[str](), "podman": {"container", "TERM"}}
#: the executor's base environment (container._BASE_ENV) and the worker's CRONIUM_ variables
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
CRONIUM_ENV = {
    "CRONIUM_EXECUTION_ID",
    "CRONIUM_JOB_ATTEMPT",
    "CRONIUM_EVENT_ID",
    "CRONIUM_EVENT_NAME",
    "CRONIUM_RUNTIME_API",
    "CRONIUM_EXECUTION_TOKEN",
}
#: a connection attempt that failed this way never reached a listener
NO_CONNECTION = {"TimeoutError", "ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH"}


# -- engines, jobs and logs --------------------------------------------------------------------


@pytest.fixture(params=engine_params)
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def cli(engine: str, *args: str, check: bool = True) -> str:
    """The engine's command line, off the event loop (the worker shares it)."""
    return await anyio.to_thread.run_sync(lambda: engine_cli(engine, *args, check=check))


async def inspect(engine: str, what: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await cli(engine, what, "inspect", name))[0]
    return data


async def running_container(engine: str, job_id: str, timeout: float = 60) -> str:
    """The id of the running container of job ``job_id``."""
    with anyio.fail_after(timeout):
        while True:
            out = await cli(
                engine, "ps", "--filter", f"label={EXECUTION}={job_id}", "--format", "{{.ID}}"
            )
            if ids := out.split():
                return ids[0]
            await anyio.sleep(0.1)


async def our_relay(engine: str, timeout: float = 60) -> str:
    """The relay container of this test's worker (it starts once the runtime API is up)."""
    filters = ["--filter", f"label={KIND}=relay", "--filter", f"label={OWNER}={process_owner()}"]
    with anyio.fail_after(timeout):
        while True:
            if ids := (await cli(engine, "ps", *filters, "--format", "{{.ID}}")).split():
                return ids[0]
            await anyio.sleep(0.1)


async def release(engine: str, cid: str) -> None:
    """Let a job that waits for SIGUSR2 finish (tini passes the signal to its process group)."""
    await cli(engine, "kill", "--signal", "USR2", cid)


def logs_text(lines: list[Any]) -> str:
    return "\n".join(line.text for line in lines)


async def wait_line(cr: Cronium, job_id: str, prefix: str, timeout: float = 60) -> str:
    """The first log line of the job starting with ``prefix`` (fails if the job ends first)."""
    with anyio.fail_after(timeout):
        while True:
            lines = await cr.jobs.logs(job_id)
            for line in lines:
                if line.text.startswith(prefix):
                    return str(line.text)
            job = await cr.jobs.get(job_id)
            if job.status.finished:
                raise AssertionError(
                    f"job ended {job.status} ({job.error}) without {prefix!r}:\n{logs_text(lines)}"
                )
            await anyio.sleep(0.1)


async def finished(cr: Cronium, job_id: str, timeout: float = 60) -> tuple[Job, list[Any]]:
    job = await cr.jobs.wait(job_id, timeout=timeout)
    return job, await cr.jobs.logs(job_id)


def report(lines: list[Any], tag: str) -> Any:
    """The JSON a job printed after ``tag``."""
    for line in lines:
        if line.text.startswith(tag + " "):
            return json.loads(line.text[len(tag) + 1 :])
    raise AssertionError(f"no {tag!r} line in the job's log:\n{logs_text(lines)}")


def script_event(
    engine: str,
    code: str,
    *,
    language: str = "python",
    name: str = "",
    env: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    owner: str = "admin",
    timeout: float = 120,
) -> Event:
    return Event(
        name=name or f"probe-{secrets.token_hex(4)}",
        owner=owner,
        action=Script(language=language, code=code),  # type: ignore[arg-type]
        executor=engine,
        env=dict(env or {}),
        executor_options=dict(options or {}),
        timeout=timeout,
        kill_grace=1.0,
    )


async def run_event(cr: Cronium, event: Event, input: Any = None) -> Job:
    stored = await cr.events.add(event)
    return await cr.run(stored.id, input)


# -- the host side: addresses, listeners ---------------------------------------------------------


def host_addresses() -> list[str]:
    """Every IPv4 address of this machine (loopback, eth0, every bridge)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()})


def _gateways(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key.lower() == "gateway" and isinstance(value, str) and value:
                yield value
            else:
                yield from _gateways(value)
    elif isinstance(data, list):
        for item in data:
            yield from _gateways(item)


async def control_gateway(engine: str) -> str:
    """The host's address on the control network: where the runtime API listens for the relay."""
    data = await inspect(
        engine, "network", executor_config(engine).get("control_network", "cronium-control")
    )
    gateways = list(_gateways(data))
    assert gateways, f"the control network has no gateway: {data}"
    return gateways[0]


def runtime_port(cr: Cronium) -> int:
    assert cr.runtime_url, "the runtime API is not served"
    port = urllib.parse.urlsplit(cr.runtime_url).port
    assert port is not None
    return port


class HostListener:
    """A TCP listener on 0.0.0.0 in the test process (a stand-in for the database, the admin
    port, ...), recording every connection it accepts."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"listener {name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[0])
            conn.close()

    def check_reachable_from_host(self) -> None:
        """The positive control: the listener answers on every host address, from the host."""
        reached, missed = 0, []
        for address in host_addresses():
            try:
                with socket.create_connection((address, self.port), timeout=2):
                    reached += 1
            except OSError:
                missed.append(address)
        # other tests add and remove bridges meanwhile: only a vanished address may be missed
        assert not set(missed) & set(host_addresses()), f"{self.name} unreachable at {missed}"
        for _ in range(100):
            if len(self.peers) >= reached:
                break
            self._stop.wait(0.05)
        assert len(self.peers) == reached > 0, f"{self.name}: {self.peers}"
        self.peers.clear()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


class UdpListener:
    """A UDP socket on 0.0.0.0 standing in for a DNS server; records every datagram's sender."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="udp listener", daemon=True)
        self._thread.start()

    def check_reachable_from_host(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"ping", ("127.0.0.1", self.port))
        for _ in range(100):
            if self.peers:
                break
            self._stop.wait(0.05)
        assert self.peers == ["127.0.0.1"], self.peers
        self.peers.clear()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                _, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.peers.append(peer[0])

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def listeners() -> Iterator[dict[str, HostListener]]:
    """The "database" and "admin" ports of the host, answering on every host address."""
    made = {name: HostListener(name) for name in ("database", "admin")}
    try:
        for listener in made.values():
            listener.check_reachable_from_host()
        yield made
    finally:
        for listener in made.values():
            listener.close()


def targets(addresses: list[str], ports: Mapping[str, int]) -> list[tuple[str, str, int]]:
    return [(label, address, port) for address in addresses for label, port in ports.items()]


# -- code run inside the jobs ------------------------------------------------------------------

#: helpers every Python probe starts with; its configuration comes in $PROBE (JSON), so that it
#: works without the runtime API too (``network: none``)
PRELUDE = r"""
import errno, json, os, socket, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

CFG = json.loads(os.environ.get("PROBE") or "{}")


def err(e):
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def attempt(fn):
    try:
        return {"ok": True, "result": fn()}
    except BaseException as e:
        return {"ok": False, "error": err(e), "detail": str(e)[:300]}


def connect(host, port, timeout=1.5):
    with socket.create_connection((host, port), timeout=timeout):
        return "connected"


def connect_all(targets, timeout=1.5):
    if not targets:
        return {}
    with ThreadPoolExecutor(len(targets)) as pool:
        results = list(pool.map(lambda t: attempt(lambda: connect(t[1], t[2], timeout)), targets))
    return {f"{label} {host}:{port}": r for (label, host, port), r in zip(targets, results)}


def http(path, token=None, method="GET", body=None):
    request = urllib.request.Request("http://runtime:8080" + path, method=method, data=body)
    if body is not None:
        request.add_header("content-type", "application/json")
    if token is not None:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def routes():
    def ip(h):
        return socket.inet_ntoa(bytes.fromhex(h)[::-1])
    out = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            p = line.split()
            out.append({"iface": p[0], "dest": ip(p[1]), "gateway": ip(p[2]), "mask": ip(p[7]),
                        "flags": int(p[3], 16)})
    return out


def hosts_file():
    entries = []
    with open("/etc/hosts") as f:
        for line in f:
            fields = line.split("#")[0].split()
            if len(fields) >= 2:
                entries.append(fields)
    return entries


def report(tag, data):
    print(tag, json.dumps(data, sort_keys=True), flush=True)
"""

#: X1, per language: the job's own view of its credentials and mounts, then it waits for
#: SIGUSR2 so that the test can inspect the running container
X1_SCRIPTS = {
    "python": r"""
import signal, sys, time
with open("/proc/self/status") as f:
    for line in f:
        print("X1 status", line.rstrip())
with open("/proc/self/mountinfo") as f:
    for line in f:
        print("X1 mount", line.rstrip())
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0))
print("X1 ready", flush=True)
time.sleep(60)
sys.exit(3)
""",
    "node": r"""
const fs = require('fs');
const dump = (path, tag) => {
  for (const line of fs.readFileSync(path, 'utf8').trimEnd().split('\n')) console.log(tag + line);
};
dump('/proc/self/status', 'X1 status ');
dump('/proc/self/mountinfo', 'X1 mount ');
process.on('SIGUSR2', () => process.exit(0));
console.log('X1 ready');
setTimeout(() => process.exit(3), 60000);
""",
    "bash": r"""
while IFS= read -r line; do echo "X1 status $line"; done < /proc/self/status
while IFS= read -r line; do echo "X1 mount $line"; done < /proc/self/mountinfo
trap 'exit 0' USR2
echo "X1 ready"
for _ in $(seq 600); do sleep 0.1; done
exit 3
""",
}

#: X2: one attempt per escape; a success would change this process, so the dangerous ones run
#: in a forked child. Writes use the file's current value, so that even a success harms nothing.
X2_SCRIPT = (
    PRELUDE
    + r"""
import ctypes, glob, stat, subprocess, uuid

# first, before this script opens anything: the descriptors the job was started with
FDS = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        FDS[fd] = os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        pass  # the descriptor listdir itself used, closed by now

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000


def check(ret):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return ret


def in_child(fn):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(attempt(fn)).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if p.returncode:
        raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[:200]}")
    return p.stdout.strip()


def rewrite(path, value=None):
    # write back what is there (or a harmless value): a success must change nothing
    if value is None:
        with open(path) as f:
            value = f.read()
    with open(path, "w") as f:
        f.write(value)
    return "written"


def setns(kind):
    fd = os.open(f"/proc/1/ns/{kind}", os.O_RDONLY)
    try:
        return check(libc.setns(fd, 0))
    finally:
        os.close(fd)


def setuid_su():
    found = set()
    for top in ("/usr", "/sbin", "/bin", "/opt"):
        for root, dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    if os.lstat(path).st_mode & stat.S_ISUID:
                        found.add(os.path.realpath(path))
                except OSError:
                    pass
    p = subprocess.Popen(["su", "root", "-c", "id -u"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    uids = None
    for _ in range(200):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            break
        if status["Name"].strip() == "su":
            uids = status["Uid"].split()
            break
        time.sleep(0.01)
    p.kill()
    out, _ = p.communicate()
    gained = uids is None or uids[1] == "0" or out.decode().strip() == "0"
    result = {"setuid_files": sorted(found), "su_uids": uids, "su_output": out.decode().strip()}
    return {"ok": gained, "error": "no root", "result": result}


def unix_connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    finally:
        s.close()


def read(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def execute_copy(directory):
    path = os.path.join(directory, "true-copy")
    with open("/usr/bin/true", "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    os.chmod(path, 0o755)
    try:
        return run(path)
    finally:
        os.unlink(path)


def writable_dirs():
    found = []
    for top in ("/",):
        for root, dirs, files in os.walk(top):
            if root in ("/proc", "/sys"):
                dirs[:] = []
                continue
            if os.access(root, os.W_OK):
                found.append(root)
    return found


r = {}
os.makedirs("/tmp/mnt", exist_ok=True)


def mount(source, fstype, data):
    return check(libc.mount(source, b"/tmp/mnt", fstype, 0, data))


r["mount tmpfs (syscall)"] = in_child(lambda: mount(b"none", b"tmpfs", None))
r["mount -t tmpfs"] = attempt(lambda: run("mount", "-t", "tmpfs", "none", "/tmp/mnt"))
r["mount cgroup (syscall)"] = in_child(lambda: mount(b"cgroup", b"cgroup", b"rdma"))
r["unshare -r"] = attempt(lambda: run("unshare", "-r", "id", "-u"))
r["unshare(CLONE_NEWUSER)"] = in_child(lambda: check(libc.unshare(CLONE_NEWUSER)))
r["unshare(CLONE_NEWNS)"] = in_child(lambda: check(libc.unshare(CLONE_NEWNS)))
r["unshare(CLONE_NEWNET)"] = in_child(lambda: check(libc.unshare(CLONE_NEWNET)))
r["chroot"] = in_child(lambda: os.chroot("/tmp"))
for kind in ("mnt", "net", "pid", "uts", "ipc"):
    r[f"setns {kind}"] = in_child(lambda kind=kind: setns(kind))
for path in ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname",
             "/proc/sys/net/ipv4/ip_forward", "/proc/sys/vm/overcommit_memory"):
    r[f"write {path}"] = attempt(lambda path=path: rewrite(path))
r["write /proc/sysrq-trigger"] = attempt(lambda: rewrite("/proc/sysrq-trigger", "h"))
agents = sorted(
    set(glob.glob("/sys/fs/cgroup/*/release_agent") + glob.glob("/sys/fs/cgroup/release_agent"))
)
for path in agents or ["/sys/fs/cgroup/memory/release_agent"]:
    r[f"write {path}"] = attempt(lambda path=path: rewrite(path))
for path in glob.glob("/sys/fs/cgroup/*/notify_on_release"):
    r[f"write {path}"] = attempt(lambda path=path: rewrite(path))
r["mkdir a cgroup"] = attempt(lambda: os.mkdir("/sys/fs/cgroup/memory/cronium-escape"))
r["setuid su"] = setuid_su()
r["raw socket"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())
r["packet socket"] = attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close())
for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/podman/podman.sock",
             "/var/run/podman/podman.sock", "/run/containerd/containerd.sock",
             "/run/user/0/podman/podman.sock"):
    r[f"read {path}"] = attempt(lambda path=path: read(path))
    r[f"connect {path}"] = attempt(lambda path=path: unix_connect(path))
r["read /etc/shadow"] = attempt(lambda: read("/etc/shadow"))
r["read /etc/gshadow"] = attempt(lambda: read("/etc/gshadow"))
r["exec from /tmp"] = attempt(lambda: execute_copy("/tmp"))
r["exec from /work"] = attempt(lambda: execute_copy("/work"))
r["write /escape"] = attempt(lambda: rewrite("/escape", "x"))
r["write /cronium/job/escape"] = attempt(lambda: rewrite("/cronium/job/escape", "x"))

# the network: the host's addresses, its services, and the relay's other ports
targets = [tuple(t) for t in CFG["targets"]]
relay = next(e[0] for e in hosts_file() if "runtime" in e[1:])
targets += [("relay", relay, port) for port in (22, 80, 443, 5432, 6379, 8081)]
gateway = next((x["gateway"] for x in routes() if x["dest"] == "0.0.0.0"), None)
net = {}
with ThreadPoolExecutor(2) as pool:
    probes = pool.submit(connect_all, targets)
    # a gateway that does not answer ARP (EHOSTUNREACH) takes no packet anywhere
    via = pool.submit(attempt, lambda: connect(gateway, 80, 5)) if gateway else None
    net.update(probes.result())
if via is not None:
    net[f"gateway {gateway}:80"] = via.result()
if gateway is None or net[f"gateway {gateway}:80"].get("error") == "EHOSTUNREACH":
    net["metadata 169.254.169.254:80"] = attempt(lambda: connect("169.254.169.254", 80))
else:
    net["metadata 169.254.169.254:80"] = {"ok": True, "result": "not tried: the gateway answers"}

token = os.environ["CRONIUM_EXECUTION_TOKEN"]
me = os.environ["CRONIUM_EXECUTION_ID"]
bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
api = {
    "valid token": http(f"/executions/{me}/input", token)[0],
    "no token": http(f"/executions/{me}/input")[0],
    "tampered token": http(f"/executions/{me}/input", bad)[0],
    "garbage token": http(f"/executions/{me}/input", "not-a-token")[0],
    "another execution": http(f"/executions/{uuid.uuid4()}/input", token)[0],
}
pid1 = attempt(lambda: read("/proc/1/environ"))
report("X2", {
    "attempts": r,
    "network": net,
    "release_agents": agents,
    "fds": FDS,
    "api": api,
    "euid": os.geteuid(),
    "pid1_cmdline": read("/proc/1/cmdline").split("\0"),
    "pid1_environ": pid1,
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "writable": writable_dirs(),
    "routes": routes(),
})
"""
)

#: what an X2 attempt may fail with (anything else would be a broken probe, not a denial)
X2_DENIED = {
    "mount": {"EPERM", "RuntimeError"},
    "unshare": {"EPERM", "RuntimeError"},
    "chroot": {"EPERM"},
    "setuid": {"no root"},
    "setns": {"EPERM", "EINVAL"},
    "write /proc": {"EROFS", "EACCES", "EPERM", "ENOENT"},
    "write /sys": {"EROFS", "EACCES", "EPERM", "ENOENT"},
    "mkdir a cgroup": {"EROFS", "EACCES", "EPERM", "ENOENT"},
    "raw socket": {"EPERM"},
    "packet socket": {"EPERM"},
    "read /etc": {"EACCES"},
    "read /": {"ENOENT"},
    "connect /": {"ENOENT"},
    "exec from": {"EACCES", "PermissionError"},
    "write /cronium": {"EROFS"},
    "write /escape": {"EROFS"},
}

#: X4 (a), ``network: none``: interfaces, routes, names, and whether anything gets out
X4_NONE_SCRIPT = (
    PRELUDE
    + r"""
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(1.5)
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", (host, port))
        return "sent"
    finally:
        s.close()

report("X4", {
    "interfaces": sorted(name for _, name in socket.if_nameindex()),
    "routes": routes(),
    "resolve runtime": attempt(lambda: socket.getaddrinfo("runtime", 8080)),
    "udp": {f"{h}:{p}": attempt(lambda h=h, p=p: udp(h, p)) for _, h, p in CFG["udp"]},
    "tcp": connect_all([tuple(t) for t in CFG["targets"]]),
    "env": sorted(os.environ),
})
"""
)

#: X4 (b), the default isolated network: routes, the gateway, the host, and the relay
X4_ISOLATED_SCRIPT = (
    PRELUDE
    + r"""
token = os.environ["CRONIUM_EXECUTION_TOKEN"]
me = os.environ["CRONIUM_EXECUTION_ID"]
gateway = next((x["gateway"] for x in routes() if x["dest"] == "0.0.0.0"), None)
relay = next(e[0] for e in hosts_file() if "runtime" in e[1:])
targets = [tuple(t) for t in CFG["targets"]]
if gateway:
    targets += [("gateway", gateway, port) for port in (22, 53, 80, CFG["runtime_port"])]
targets += [("relay", relay, port) for port in (22, 80, 5432, 8081)]
report("X4", {
    "routes": routes(),
    "hosts": hosts_file(),
    "gateway": gateway,
    "relay": relay,
    "tcp": connect_all(targets, timeout=4),
    "runtime": http(f"/executions/{me}/input", token)[0],
    "runtime via relay address": attempt(lambda: connect(relay, 8080)),
})
"""
)

#: appended to a probe: wait (up to 60 s) for SIGUSR2 so that the test can inspect the container
WAIT_FOR_RELEASE = r"""
import signal
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0))
time.sleep(60)
sys.exit(3)
"""

#: X4 (c), user B: a listener, a private file in /work, and a wait for SIGUSR2
X4_B_SCRIPT = (
    PRELUDE
    + r"""
import signal, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 8000))
server.listen(16)
peers = []


def serve():
    while True:
        conn, peer = server.accept()
        peers.append(peer[0])
        conn.close()


threading.Thread(target=serve, daemon=True).start()
with open("/work/b-private.txt", "w") as f:
    f.write(CFG["canary"])
me = socket.gethostbyname(socket.gethostname())
selfcheck = attempt(lambda: connect(me, 8000))
done = threading.Event()
signal.signal(signal.SIGUSR2, lambda *_: done.set())
print("B ready", me, flush=True)
done.wait(60)
time.sleep(0.2)
report("B-REPORT", {"address": me, "selfcheck": selfcheck, "peers": [p for p in peers if p != me]})
"""
)

#: X4 (c), user A: B's address, B's execution on the runtime API, B's workspace
X4_A_SCRIPT = (
    PRELUDE
    + r"""
token = os.environ["CRONIUM_EXECUTION_TOKEN"]
me = os.environ["CRONIUM_EXECUTION_ID"]
b = CFG["b_execution"]
found = []
for top in ("/work", "/tmp"):
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    if CFG["canary"].encode() in f.read():
                        found.append(path)
            except OSError:
                pass
report("A", {
    "connect B": connect_all([("b", CFG["b_address"], 8000)]),
    "B's input": http(f"/executions/{b}/input", token)[0],
    "B's context": http(f"/executions/{b}/context", token)[0],
    "B's variable": http(f"/executions/{b}/variables/x", token)[0],
    "B's output": http(f"/executions/{b}/output", token, "POST", b'{"output": 1}')[0],
    "B's input without a token": http(f"/executions/{b}/input")[0],
    "own input": http(f"/executions/{me}/input", token)[0],
    "B's file in /work": os.path.exists("/work/b-private.txt"),
    "canary found in": found,
    "work": sorted(os.listdir("/work")),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
})
"""
)

#: X5: everything of the job's context it can read, hex-encoded (so that nothing in the log
#: pipeline can hide a leak), then a wait for SIGUSR2 while the test inspects the container
X5_SCRIPT = (
    PRELUDE
    + r"""
import glob, signal
dump = {"env": dict(os.environ), "proc": {}, "files": {}, "dirs": {}}
for d in sorted(glob.glob("/proc/[0-9]*")):
    for name in ("environ", "cmdline"):
        try:
            with open(f"{d}/{name}", "rb") as f:
                dump["proc"][f"{d}/{name}"] = f.read().decode("utf-8", "replace")
        except OSError as e:
            dump["proc"][f"{d}/{name}"] = "error " + err(e)
for path in ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/proc/self/mountinfo",
             "/run/.containerenv"):
    try:
        with open(path) as f:
            dump["files"][path] = f.read()
    except OSError as e:
        dump["files"][path] = "error " + err(e)
for path in ("/cronium/job", "/work", "/tmp"):
    try:
        dump["dirs"][path] = sorted(os.listdir(path))
    except OSError as e:
        dump["dirs"][path] = "error " + err(e)
token = os.environ.get("CRONIUM_EXECUTION_TOKEN", "")
me = os.environ["CRONIUM_EXECUTION_ID"]
dump["context"] = http(f"/executions/{me}/context", token)
dump["input"] = http(f"/executions/{me}/input", token)
blob = json.dumps(dump).encode().hex()
for i in range(0, len(blob), 30000):
    print("X5", blob[i:i + 30000])
signal.signal(signal.SIGUSR2, lambda *_: sys.exit(0))
print("X5 ready", flush=True)
time.sleep(60)
sys.exit(3)
"""
)

#: X3: the canary, beside each hog: a fixed piece of work (~5 ms) every 10 ms, timed
CANARY_SCRIPT = r"""
import json, os, time
seconds = float(os.environ["CANARY_SECONDS"])
print("CANARY ready", flush=True)
samples = []
end = time.time() + seconds
while time.time() < end:
    t0, c0 = time.time(), time.perf_counter()
    n = 0
    for i in range(100_000):
        n += i
    samples.append([round(t0, 4), round((time.perf_counter() - c0) * 1000, 3)])
    time.sleep(0.01)
print("CANARY-REPORT " + json.dumps(samples), flush=True)
"""

HOG_START = 'import time; print("HOG start", time.time(), flush=True)\n'
# a hog that is quickly done holds on to what it took for a second, so that the canary beside it
# takes its samples while the hog is at its worst
HOG_HOLD = 'time.sleep(1.0); print("HOG end", flush=True)\n'

FORK_BOMB = (
    HOG_START
    + PRELUDE
    + r"""
import subprocess
subprocess.Popen(["bash", "-c", "b() { b | b & }; b"], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak, end = 0, time.time() + 4
while time.time() < end:
    peak = max(peak, sum(1 for p in os.listdir("/proc") if p.isdigit()))
    time.sleep(0.02)
limit = None
for path in ("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"):
    try:
        with open(path) as f:
            limit = f.read().strip()
        break
    except OSError:
        pass
report("HOG-REPORT", {"peak": peak, "pids.max": limit})
time.sleep(120)  # the bomb goes on: the event's timeout has to stop it
"""
)

# children that fill memory until the OOM killer takes them, one after another for 3 s, then
# the hog itself: a storm of OOM kills, each of which must stay inside the container
MEMORY_HOG = (
    HOG_START
    + r"""
import os


def fill():
    chunks = []
    while True:
        chunks.append(b"\x01" * (4 << 20))
        if os.getpid() == hog:
            print("HOG held", len(chunks) * 4, flush=True)


hog, killed, end = os.getpid(), 0, time.time() + 3
while time.time() < end:
    pid = os.fork()
    if pid == 0:
        fill()
    _, status = os.waitpid(pid, 0)
    killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
print("HOG children killed", killed, flush=True)
fill()
"""
)

FILL_TMPFS = (
    HOG_START
    + PRELUDE
    + r"""
def fill(path, mib):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block, written = b"\x01" * (1 << 20), 0
    try:
        while written < mib << 20:
            written += os.write(fd, block)
        return {"ok": True, "written": written}
    except OSError as e:
        return {"ok": False, "error": err(e), "written": written}
    finally:
        os.close(fd)
        os.unlink(path)

report("HOG-REPORT", {
    "/tmp": fill("/tmp/fill", 20),
    "/work": fill("/work/fill", 40),
    "/dev/shm": fill("/dev/shm/fill", 96),
    "/": attempt(lambda: fill("/fill", 1)),
})
"""
    + HOG_HOLD
)

OPEN_FILES = (
    HOG_START
    + PRELUDE
    + r"""
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
raised = attempt(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (10_000, 10_000)))
fds, error = [], None
try:
    for _ in range(10_000):
        fds.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    error = err(e)
found = {"soft": soft, "hard": hard, "raise": raised, "opened": len(fds), "error": error}
report("HOG-REPORT", found)
"""
    + HOG_HOLD
)

# CPython threads share one interpreter lock: four *processes* make the four-way spin
CPU_SPIN = (
    HOG_START
    + PRELUDE
    + r"""
start = time.monotonic()
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + 3
        while time.monotonic() < end:
            pass
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
wall = time.monotonic() - start
t = os.times()
cpu = t.children_user + t.children_system
report("HOG-REPORT", {"wall": wall, "cpu": cpu, "ratio": cpu / wall})
"""
)


# -- X1: the audit -----------------------------------------------------------------------------


def _size(options: set[str]) -> int:
    sizes = [int(o.removeprefix("size=")) for o in options if o.startswith("size=")]
    return sizes[0] if sizes else 0


def audit(engine: str, data: dict[str, Any], *, kind: str) -> list[str]:
    """How a container falls short of CIS Docker 5.x (and 4.1); empty when it does not.

    ``kind`` is ``job`` or ``relay``. The relay legitimately differs from a job in three ways:
    it has no script bind (no host path at all), only ``/tmp`` as tmpfs (1 MiB: it writes
    nothing), and it sits on the control network, which is not internal (it must reach the
    runtime API on the host) besides the job networks.
    """
    problems: list[str] = []

    def want(ok: object, problem: str) -> None:
        if not ok:
            problems.append(problem)

    config, host = data["Config"], data["HostConfig"]
    user = str(config.get("User") or "")
    uid = user.split(":")[0]
    want(uid.isdigit() and int(uid) > 0, f"4.1 Config.User is {user!r}: root or unset")
    want(user == JOB_USER, f"4.1 Config.User is {user!r}, not the configured {JOB_USER}")

    cap_drop = {str(c).upper() for c in host.get("CapDrop") or []}
    # docker keeps "ALL"; podman lists the caps it dropped from its own default set
    want(
        "ALL" in cap_drop or (engine == "podman" and cap_drop >= PODMAN_DEFAULT_CAPS),
        f"5.4 CapDrop {sorted(cap_drop)} does not drop everything",
    )
    want(not host.get("CapAdd"), f"5.4 CapAdd is {host.get('CapAdd')}")
    want(not data.get("EffectiveCaps"), f"5.4 EffectiveCaps {data.get('EffectiveCaps')}")
    want(not data.get("BoundingCaps"), f"5.4 BoundingCaps {data.get('BoundingCaps')}")
    want(host.get("Privileged") is False, f"5.5 Privileged is {host.get('Privileged')}")

    want(host.get("ReadonlyRootfs") is True, "5.13 the root file system is writable")
    expected = {"/tmp": DEFAULT_TMP, "/work": DEFAULT_WORK} if kind == "job" else {"/tmp": MiB}
    tmpfs = {
        path: set(str(options).split(",")) for path, options in (host.get("Tmpfs") or {}).items()
    }
    want(set(tmpfs) == set(expected), f"5.13 tmpfs mounts {sorted(tmpfs)}, not {sorted(expected)}")
    for path, options in tmpfs.items():
        missing = {"noexec", "nosuid", "nodev"} - options
        want(not missing, f"5.13 tmpfs {path} lacks {sorted(missing)}")
        want(
            0 < _size(options) <= expected.get(path, 0),
            f"5.13 tmpfs {path} is not size-capped at {expected.get(path)}: {sorted(options)}",
        )

    security = [str(s).lower().replace("=", ":") for s in host.get("SecurityOpt") or []]
    want(
        {"no-new-privileges", "no-new-privileges:true"} & set(security),
        f"5.26 SecurityOpt {security} lacks no-new-privileges",
    )
    want(
        not [s for s in security if "unconfined" in s or s == "label:disable"],
        f"5.22/5.23 SecurityOpt {security} turns a confinement off",
    )
    want(data.get("AppArmorProfile") != "unconfined", "5.22 AppArmorProfile is unconfined")

    want((host.get("PidsLimit") or 0) > 0, f"5.29 PidsLimit is {host.get('PidsLimit')}")
    want((host.get("Memory") or 0) > 0, f"5.11 Memory is {host.get('Memory')}")
    want(
        host.get("MemorySwap") == host.get("Memory"),
        f"5.11 MemorySwap {host.get('MemorySwap')} != Memory {host.get('Memory')}: swap allowed",
    )
    want(
        (host.get("NanoCpus") or 0) > 0 or (host.get("CpuQuota") or 0) > 0,
        "5.12 no CPU limit (NanoCpus/CpuQuota)",
    )
    nofile = [
        u
        for u in host.get("Ulimits") or []
        if str(u.get("Name")).lower() in ("nofile", "rlimit_nofile")
    ]
    want(nofile and nofile[0]["Hard"] <= NOFILE, f"5.28 open-files ulimit: {nofile}")
    want(not host.get("OomKillDisable"), "5.11 the OOM killer is disabled")

    for key in ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        mode = str(host.get(key) or "")
        want(
            mode != "host" and not mode.startswith(("container:", "ns:")),
            f"5.10/16/17/21/31 {key} is {mode!r}: a namespace shared",
        )
    networks = set((data.get("NetworkSettings") or {}).get("Networks") or {})
    want("host" not in networks, "5.10 on the host network")
    if kind == "job":
        want(len(networks) == 1, f"a job on several networks: {sorted(networks)}")
    want(
        not host.get("PortBindings") and not host.get("PublishAllPorts"),
        f"5.8/5.14 ports published: {host.get('PortBindings')}",
    )

    want(not host.get("Devices"), f"5.18 devices: {host.get('Devices')}")
    want(not host.get("DeviceCgroupRules"), f"5.18 device rules: {host.get('DeviceCgroupRules')}")
    want(not host.get("DeviceRequests"), f"5.18 device requests: {host.get('DeviceRequests')}")

    mounts = data.get("Mounts") or []
    want(
        [m.get("Destination") for m in mounts] == ([SCRIPT_DIR] if kind == "job" else []),
        f"5.6 mounts {[(m.get('Source'), m.get('Destination')) for m in mounts]}",
    )
    for mount in mounts:
        source = str(mount.get("Source") or "")
        want(mount.get("Type") == "bind" and mount.get("RW") is False, f"5.6 {mount} is writable")
        # the only host path: a private directory of the executor's, holding the script
        want(
            Path(source).parent == Path(tempfile.gettempdir())
            and Path(source).name.startswith("cronium-ctr-"),
            f"5.6 host path {source} mounted",
        )
        want(not source.endswith(".sock"), f"5.32 socket {source} mounted")
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        want(len(parts) >= 3 and "ro" in parts[2].split(","), f"5.6 bind {bind} is not read-only")
        want("docker.sock" not in bind and "podman.sock" not in bind, f"5.32 {bind}")
    return problems


def audit_inside(lines: list[Any]) -> list[str]:
    """What the job saw of itself: credentials in /proc/self/status, and its mounts."""
    problems: list[str] = []

    def want(ok: object, problem: str) -> None:
        if not ok:
            problems.append(problem)

    status: dict[str, str] = {}
    #: mount point -> (per-mount options, file system type, super options)
    mounts: dict[str, tuple[set[str], str, set[str]]] = {}
    for line in lines:
        text = str(line.text)
        if text.startswith("X1 status "):
            key, _, value = text.removeprefix("X1 status ").partition(":")
            status[key] = value.strip()
        elif text.startswith("X1 mount "):
            before, _, after = text.removeprefix("X1 mount ").partition(" - ")
            fields, (fstype, _source, *rest) = before.split(), after.split()
            mounts[fields[4]] = (set(fields[5].split(",")), fstype, set(",".join(rest).split(",")))
    want(status and mounts, "the job printed no status or mounts")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        value = status.get(cap, "?")
        want(value.strip("0") == "", f"{cap} is {value}, not empty")
    want(status.get("NoNewPrivs") == "1", f"NoNewPrivs is {status.get('NoNewPrivs')}")
    want(status.get("Seccomp") == "2", f"Seccomp is {status.get('Seccomp')}: no filter")
    for key in ("Uid", "Gid"):
        want(status.get(key, "").split() == ["1000"] * 4, f"{key} is {status.get(key)}")
    want("0" not in status.get("Groups", "").split(), f"in group 0: {status.get('Groups')}")
    none: tuple[set[str], str, set[str]] = (set(), "", set())
    want("ro" in mounts.get("/", none)[0], f"/ is mounted {mounts.get('/')}")
    for path, size in {"/tmp": DEFAULT_TMP, "/work": DEFAULT_WORK}.items():
        options, fstype, super_options = mounts.get(path, none)
        missing = {"noexec", "nosuid", "nodev", "rw"} - options
        want(fstype == "tmpfs" and not missing, f"{path} is {fstype or '-'}, without {missing}")
        sizes = [o.removeprefix("size=") for o in super_options if o.startswith("size=")]
        want(sizes == [f"{size // 1024}k"], f"{path} tmpfs size {sizes}, not {size // 1024}k")
    want("ro" in mounts.get(SCRIPT_DIR, none)[0], f"{SCRIPT_DIR} is {mounts.get(SCRIPT_DIR)}")
    engine_paths = [p for p in mounts if p.endswith(".sock") or "docker" in p or "podman" in p]
    want(not engine_paths, f"engine paths mounted: {engine_paths}")
    return problems


async def test_x1_every_container_passes_the_cis_audit(sqlite_url: str, engine: str) -> None:
    async with container_cronium(sqlite_url, engine) as cr:
        jobs = {
            language: await run_event(
                cr, script_event(engine, X1_SCRIPTS[language], language=language, timeout=90)
            )
            for language in LANGUAGES
        }
        problems: list[str] = []
        for language, job in jobs.items():
            cid = await running_container(engine, job.id)
            data = await inspect(engine, "container", cid)
            problems += [f"{language} job: {p}" for p in audit(engine, data, kind="job")]
            await wait_line(cr, job.id, "X1 ready")
            await release(engine, cid)
        relay = await inspect(engine, "container", await our_relay(engine))
        problems += [f"relay: {p}" for p in audit(engine, relay, kind="relay")]
        for language, job in jobs.items():
            done, lines = await finished(cr, job.id)
            assert done.status is JobStatus.SUCCEEDED, (language, done.error, logs_text(lines))
            problems += [f"{language} job, inside: {p}" for p in audit_inside(lines)]
    assert problems == []


# -- X2: escapes ---------------------------------------------------------------------------------


def _denied_as(name: str) -> set[str]:
    for prefix in sorted(X2_DENIED, key=len, reverse=True):
        if name.startswith(prefix):
            return X2_DENIED[prefix]
    raise AssertionError(f"no expectation for the attempt {name!r}")


async def test_x2_escape_attempts_all_fail(
    sqlite_url: str,
    engine: str,
    listeners: dict[str, HostListener],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host_canary = f"host-env-canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("CRONIUM_TEST_HOST_CANARY", host_canary)
    async with container_cronium(sqlite_url, engine) as cr:
        gateway = await control_gateway(engine)
        addresses = sorted({*host_addresses(), gateway})
        ports = {name: listener.port for name, listener in listeners.items()}
        ports["runtime API"] = runtime_port(cr)
        probe = {"targets": targets(addresses, ports)}
        job = await run_event(cr, script_event(engine, X2_SCRIPT, env={"PROBE": json.dumps(probe)}))
        done, lines = await finished(cr, job.id, timeout=90)
    assert done.status is JobStatus.SUCCEEDED, (done.error, logs_text(lines))
    found = report(lines, "X2")

    attempts = found["attempts"]
    succeeded = {name: r for name, r in attempts.items() if r["ok"] is not False}
    assert succeeded == {}, "escape attempts that worked"
    odd = {name: r for name, r in attempts.items() if r["error"] not in _denied_as(name)}
    assert odd == {}, "attempts that failed for another reason than a denial"
    su = attempts["setuid su"]
    assert su["result"]["su_uids"] == ["1000"] * 4, su
    assert su["result"]["setuid_files"], "no setuid binary was tried"
    assert found["euid"] == 1000

    connected = {name: r for name, r in found["network"].items() if r["ok"] is not False}
    assert connected == {}, "reached from the job"
    odd = {name: r for name, r in found["network"].items() if r["error"] not in NO_CONNECTION}
    assert odd == {}
    assert {name: listener.peers for name, listener in listeners.items()} == {
        "database": [],
        "admin": [],
    }
    # only through the relay, and only with the job's own valid token
    assert found["api"] == {
        "valid token": 200,
        "no token": 401,
        "tampered token": 401,
        "garbage token": 401,
        "another execution": 403,
    }

    # inherited descriptors: only stdin/stdout/stderr, on /dev/null and the engine's pipes
    unexpected = {
        fd: target
        for fd, target in found["fds"].items()
        if not (
            fd in ("0", "1", "2")
            and (target == "/dev/null" or target.startswith(("pipe:", "socket:")))
        )
    }
    assert unexpected == {}, found["fds"]
    assert set(found["fds"]) >= {"0", "1", "2"}
    # its own PID namespace: PID 1 is tini, and the host's environment is nowhere
    assert Path(found["pid1_cmdline"][0]).name == "tini", found["pid1_cmdline"]
    assert host_canary not in json.dumps(found)
    assert max(found["pids"]) < 100, found["pids"]  # (the host's PIDs run into the thousands)
    # the only places the job can write
    writable = {path for path in found["writable"] if not path.startswith(("/tmp/", "/work/"))}
    assert writable <= {"/tmp", "/work", "/dev/shm", "/dev/mqueue"}, sorted(writable)


# -- X3: exhaustion ------------------------------------------------------------------------------


async def contained(
    cr: Cronium, engine: str, hog_code: str, *, options: Mapping[str, Any], timeout: float
) -> tuple[Job, list[Any]]:
    """Run a hog while a canary job runs beside it; check that the canary kept its pace (its
    median piece of work at most twice as slow as before the hog started) and that a job after
    the hog still runs. Returns the hog's result."""
    canary = await run_event(
        cr, script_event(engine, CANARY_SCRIPT, env={"CANARY_SECONDS": "5"}, timeout=60)
    )
    await wait_line(cr, canary.id, "CANARY ready")
    hog = await run_event(
        cr, script_event(engine, hog_code, options=options, timeout=timeout, name="hog")
    )
    hog_done, hog_lines = await finished(cr, hog.id, timeout=timeout + 30)
    canary_done, canary_lines = await finished(cr, canary.id)
    assert canary_done.status is JobStatus.SUCCEEDED, (canary_done.error, logs_text(canary_lines))

    # while the hog is at work: from its first line to its last (the engine's teardown of
    # its container afterwards is not the hog's doing)
    hog_start = float(report(hog_lines, "HOG start"))
    hog_end = max(line.time for line in hog_lines).timestamp()
    samples = report(canary_lines, "CANARY-REPORT")
    before = [ms for t, ms in samples if t < hog_start]
    during = [ms for t, ms in samples if hog_start <= t <= hog_end]
    assert len(before) >= 3 and len(during) >= 3, (hog_start, hog_end, samples)
    assert statistics.median(during) <= 2 * statistics.median(before), (
        f"the canary slowed down from {statistics.median(before):.1f} ms "
        f"to {statistics.median(during):.1f} ms"
    )

    after = await run_event(cr, script_event(engine, "print('still here')"))
    after_done, after_lines = await finished(cr, after.id)
    assert after_done.status is JobStatus.SUCCEEDED, (after_done.error, logs_text(after_lines))
    assert "still here" in logs_text(after_lines)
    return hog_done, hog_lines


@pytest.mark.slow
async def test_x3_fork_bomb_is_held_by_the_pid_limit(sqlite_url: str, engine: str) -> None:
    async with container_cronium(sqlite_url, engine) as cr:
        hog, lines = await contained(cr, engine, FORK_BOMB, options={"pids": 64}, timeout=12)
    # the bomb never ends by itself: the event's timeout stops the container
    assert hog.status is JobStatus.TIMED_OUT, (hog.status, hog.error, logs_text(lines))
    found = report(lines, "HOG-REPORT")
    assert found["pids.max"] == "64"
    # it did reach the limit, and not beyond (tini and the supervisor count too)
    assert 32 <= found["peak"] <= 64, found


@pytest.mark.slow
async def test_x3_memory_hog_is_killed_at_the_limit(sqlite_url: str, engine: str) -> None:
    async with container_cronium(sqlite_url, engine) as cr:
        hog, lines = await contained(cr, engine, MEMORY_HOG, options={"memory": "64m"}, timeout=30)
    assert hog.status is JobStatus.FAILED, (hog.status, hog.error, logs_text(lines))
    assert hog.error == "out of memory"
    killed = int(report(lines, "HOG children killed"))
    assert killed >= 5, logs_text(lines)
    held = [int(line.text.split()[2]) for line in lines if line.text.startswith("HOG held ")]
    assert held and max(held) <= 64, held


@pytest.mark.slow
async def test_x3_full_tmpfs_is_enospc(sqlite_url: str, engine: str) -> None:
    config = executor_config(engine, work_size="16m")
    async with container_cronium(sqlite_url, engine, config=config) as cr:
        hog, lines = await contained(cr, engine, FILL_TMPFS, options={"tmp_size": "8m"}, timeout=30)
    assert hog.status is JobStatus.SUCCEEDED, (hog.error, logs_text(lines))
    found = report(lines, "HOG-REPORT")
    # /dev/shm is the engine's own (64 MB by default); it too is a capped, memory-backed tmpfs
    for path, cap in {"/tmp": 8 * MiB, "/work": 16 * MiB, "/dev/shm": 64 * MiB}.items():
        assert found[path]["error"] == "ENOSPC", (path, found[path])
        assert 0 < found[path]["written"] <= cap, (path, found[path])
    assert found["/"]["ok"] is False and found["/"]["error"] == "EROFS", found["/"]


@pytest.mark.slow
async def test_x3_open_files_stop_at_the_limit(sqlite_url: str, engine: str) -> None:
    async with container_cronium(sqlite_url, engine) as cr:
        hog, lines = await contained(cr, engine, OPEN_FILES, options={}, timeout=30)
    assert hog.status is JobStatus.SUCCEEDED, (hog.error, logs_text(lines))
    found = report(lines, "HOG-REPORT")
    assert (found["soft"], found["hard"]) == (NOFILE, NOFILE)
    assert found["raise"]["ok"] is False, found["raise"]
    assert found["error"] == "EMFILE" and found["opened"] < NOFILE, found


@pytest.mark.slow
async def test_x3_cpu_spin_gets_its_quota(sqlite_url: str, engine: str) -> None:
    async with container_cronium(sqlite_url, engine) as cr:
        hog, lines = await contained(cr, engine, CPU_SPIN, options={"cpus": 0.5}, timeout=30)
    assert hog.status is JobStatus.SUCCEEDED, (hog.error, logs_text(lines))
    found = report(lines, "HOG-REPORT")
    # four busy processes on two cores would use ~2 CPU-seconds per second; the quota is 0.5
    assert found["ratio"] <= 0.7, found
    assert found["wall"] >= 2.9, found


# -- X4: networks and other jobs -----------------------------------------------------------------


async def test_x4_network_none_has_no_network(
    sqlite_url: str, engine: str, listeners: dict[str, HostListener]
) -> None:
    dns = UdpListener()
    try:
        dns.check_reachable_from_host()
        async with container_cronium(sqlite_url, engine) as cr:
            addresses = host_addresses()
            ports = {name: listener.port for name, listener in listeners.items()}
            ports["runtime API"] = runtime_port(cr)
            probe = {
                "targets": targets(addresses, ports),
                # (from the job, 127.0.0.1 is its own loopback: a datagram there goes nowhere)
                "udp": targets([a for a in addresses if a != "127.0.0.1"], {"dns": dns.port}),
            }
            job = await run_event(
                cr,
                script_event(
                    engine,
                    X4_NONE_SCRIPT,
                    env={"PROBE": json.dumps(probe)},
                    options={"network": "none"},
                ),
            )
            done, lines = await finished(cr, job.id)
            # not needed by this job, but leaving before the relay is up leaks it (executor
            # bug: a relay created while the executor shuts down is never removed)
            await our_relay(engine)
    finally:
        dns.close()
    assert done.status is JobStatus.SUCCEEDED, (done.error, logs_text(lines))
    found = report(lines, "X4")
    assert found["interfaces"] == ["lo"]
    assert found["routes"] == []
    assert found["resolve runtime"]["ok"] is False, found["resolve runtime"]
    assert {k: r for k, r in found["udp"].items() if r["ok"] is not False} == {}
    assert {k: r for k, r in found["tcp"].items() if r["ok"] is not False} == {}
    assert dns.peers == [] and [listener.peers for listener in listeners.values()] == [[], []]
    # no network, so no runtime API to call
    assert "CRONIUM_RUNTIME_API" not in found["env"]


async def test_x4_isolated_network_reaches_only_the_relay(
    sqlite_url: str, engine: str, listeners: dict[str, HostListener]
) -> None:
    code = X4_ISOLATED_SCRIPT + WAIT_FOR_RELEASE
    async with container_cronium(sqlite_url, engine) as cr:
        addresses = host_addresses()
        ports = {name: listener.port for name, listener in listeners.items()}
        probe = {"targets": targets(addresses, ports), "runtime_port": runtime_port(cr)}
        job = await run_event(cr, script_event(engine, code, env={"PROBE": json.dumps(probe)}))
        cid = await running_container(engine, job.id)
        await wait_line(cr, job.id, "X4 ")
        data = await inspect(engine, "container", cid)
        relay = await inspect(engine, "container", await our_relay(engine))
        (network,) = data["NetworkSettings"]["Networks"]
        net = await inspect(engine, "network", network)
        members = (
            await cli(engine, "ps", "--filter", f"network={network}", "--format", "{{.ID}}")
        ).split()
        await release(engine, cid)
        done, lines = await finished(cr, job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error, logs_text(lines))
    found = report(lines, "X4")

    # the host's view: an internal network, holding the job and the relay, no host address
    assert net.get("Internal", net.get("internal")) is True, net
    assert (
        sorted(members)
        == sorted({m for m in members if data["Id"].startswith(m) or relay["Id"].startswith(m)})
        and len(members) == 2
    ), (members, data["Id"], relay["Id"])
    subnet = next(
        s.get("Subnet") or s.get("subnet")
        for s in (net.get("IPAM", {}).get("Config") or net.get("subnets") or [])
    )
    on_it = [a for a in addresses if ipaddress.ip_address(a) in ipaddress.ip_network(subnet)]
    assert on_it == [], f"the host has {on_it} on the job network {subnet}"

    # the job's view: a default route, if any, leads nowhere; the host is unreachable
    default = [r for r in found["routes"] if r["dest"] == "0.0.0.0"]
    if default:
        gateway = found["gateway"]
        to_gateway = {k: r for k, r in found["tcp"].items() if k.startswith("gateway ")}
        assert to_gateway and all(
            r["error"] in {"EHOSTUNREACH", "TimeoutError"} for r in to_gateway.values()
        ), to_gateway
        assert gateway not in addresses
    assert {k: r for k, r in found["tcp"].items() if r["ok"] is not False} == {}
    assert {k: r["error"] for k, r in found["tcp"].items() if r["error"] not in NO_CONNECTION} == {}
    assert [listener.peers for listener in listeners.values()] == [[], []]
    # a host address the job's /etc/hosts names (podman: host.containers.internal) is among
    # those tried above, all unreachable
    named = {entry[0] for entry in found["hosts"]} & set(addresses)
    tried = {key.split()[1].rsplit(":", 1)[0] for key in found["tcp"]}
    assert named <= tried, (found["hosts"], sorted(tried))
    # and the one thing that answers: the runtime API, through the relay
    assert found["runtime"] == 200
    assert found["runtime via relay address"]["ok"] is True


async def test_x4_jobs_of_two_users_cannot_reach_each_other(sqlite_url: str, engine: str) -> None:
    canary = f"b-workspace-{secrets.token_hex(8)}"
    async with container_cronium(sqlite_url, engine) as cr:
        b = await run_event(
            cr,
            script_event(
                engine, X4_B_SCRIPT, owner="user-b", env={"PROBE": json.dumps({"canary": canary})}
            ),
            input={"who": "b"},
        )
        b_address = (await wait_line(cr, b.id, "B ready")).split()[-1]
        b_cid = await running_container(engine, b.id)
        b_data = await inspect(engine, "container", b_cid)
        assert b_address in [n["IPAddress"] for n in b_data["NetworkSettings"]["Networks"].values()]
        probe = {"canary": canary, "b_address": b_address, "b_execution": b.id}
        a = await run_event(
            cr, script_event(engine, X4_A_SCRIPT, owner="user-a", env={"PROBE": json.dumps(probe)})
        )
        a_done, a_lines = await finished(cr, a.id)
        await release(engine, b_cid)
        b_done, b_lines = await finished(cr, b.id)
    assert a_done.status is JobStatus.SUCCEEDED, (a_done.error, logs_text(a_lines))
    assert b_done.status is JobStatus.SUCCEEDED, (b_done.error, logs_text(b_lines))
    found_a, found_b = report(a_lines, "A"), report(b_lines, "B-REPORT")
    # B's listener works (from B itself), yet nothing of A's got to it
    assert found_b["selfcheck"]["ok"] is True, found_b
    assert found_b["peers"] == []
    ((_, to_b),) = found_a["connect B"].items()
    assert to_b["ok"] is False and to_b["error"] in NO_CONNECTION, to_b
    # A's token is A's alone
    assert {k: v for k, v in found_a.items() if k.startswith("B's")} == {
        "B's input": 403,
        "B's context": 403,
        "B's variable": 403,
        "B's output": 403,
        "B's input without a token": 401,
        "B's file in /work": False,
    }
    assert found_a["own input"] == 200
    # /work is A's own empty tmpfs; B's file is nowhere A can read
    assert found_a["work"] == [] and found_a["canary found in"] == []


# -- X5: credentials -------------------------------------------------------------------------------


async def test_x5_worker_credentials_never_reach_the_job(
    tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries = {
        "encryption master key": generate_key(),
        "JWT signing key": f"jwt-signing-canary-{secrets.token_hex(12)}",
        "database password": f"db-password-canary-{secrets.token_hex(12)}",
        "database path": f"dbpath-canary-{secrets.token_hex(6)}",
        "SSH private key": f"b3BlbnNzaC1rZXktdjEcanary{secrets.token_hex(16)}",
        "own secret variable": f"own-variable-canary-{secrets.token_hex(8)}",
        "another user's secret variable": f"other-variable-canary-{secrets.token_hex(8)}",
    }
    database_url = f"postgresql://cronium:{canaries['database password']}@127.0.0.1:5432/cronium"
    monkeypatch.setenv("CRONIUM_SECRET_KEYS", f"canary:{canaries['encryption master key']}")
    monkeypatch.setenv("CRONIUM_RUNTIME_KEYS", f"canarykid:{canaries['JWT signing key']}")
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("CRONIUM_DATABASE_URL", database_url)
    monkeypatch.setenv(
        "SSH_PRIVATE_KEY",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        f"{canaries['SSH private key']}\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    state = tmp_path / canaries["database path"]
    state.mkdir()
    url = f"sqlite+aiosqlite:///{state / 'cronium.db'}"
    async with container_cronium(url, engine) as cr:
        await cr.variables.set(
            "x5-user", "db_password", canaries["own secret variable"], secret=True
        )
        await cr.variables.set(
            "someone-else", "db_password", canaries["another user's secret variable"], secret=True
        )
        event = script_event(engine, X5_SCRIPT, owner="x5-user", env={"REPORT_LABEL": "x5"})
        job = await run_event(cr, event)
        cid = await running_container(engine, job.id)
        await wait_line(cr, job.id, "X5 ready")
        job_data = await inspect(engine, "container", cid)
        relay_data = await inspect(engine, "container", await our_relay(engine))
        await release(engine, cid)
        done, lines = await finished(cr, job.id)
    assert done.status is JobStatus.SUCCEEDED, (done.error, logs_text(lines))
    blob = "".join(
        line.text.split(" ", 1)[1]
        for line in lines
        if line.text.startswith("X5 ") and line.text != "X5 ready"
    )
    dump = json.loads(bytes.fromhex(blob))

    seen = {
        "what the job read": json.dumps(dump),
        "the job's log": logs_text(lines),
        "the job container's config": json.dumps(
            [job_data["Config"], job_data["HostConfig"], job_data.get("Mounts")]
        ),
        "the relay's config": json.dumps(
            [relay_data["Config"], relay_data["HostConfig"], relay_data.get("Mounts")]
        ),
    }
    leaks = {
        (what, where)
        for what, value in canaries.items()
        for where, text in seen.items()
        if value in text
    }
    assert leaks == set()

    # the environment: the declared variable, Cronium's own, the base, and what the engine adds
    env = dump["env"]
    expected = {"REPORT_LABEL"} | CRONIUM_ENV | set(BASE_ENV) | {"HOSTNAME"} | ENGINE_ENV[engine]
    assert sorted(set(env) - expected) == [], "variables the job should not have"
    assert sorted(expected - set(env)) == [], "variables the job lacks"
    assert {k: env[k] for k in BASE_ENV} == BASE_ENV
    assert env["REPORT_LABEL"] == "x5"
    assert env["CRONIUM_RUNTIME_API"] == "http://runtime:8080"
    assert env["CRONIUM_EXECUTION_ID"] == job.id
    assert env["CRONIUM_EVENT_NAME"] == event.name
    # its own execution token: for this execution, with nothing else in it
    payload = env["CRONIUM_EXECUTION_TOKEN"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == job.id
    assert set(claims) <= {"iss", "aud", "sub", "jti", "att", "iat", "nbf", "exp"}, claims
    # the script's directory is mode 0711: the job reads its script but lists nothing
    assert dump["dirs"]["/cronium/job"] == "error EACCES"
    assert dump["dirs"]["/work"] == []
