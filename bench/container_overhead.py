"""Benchmark: container-executor overhead, and 100 concurrent container jobs.

1. End-to-end time of a trivial container job (a Bash script ``true`` in ``cronium-bash``):
   ``cr.run()`` until ``cr.jobs.wait()`` returns it finished — queue, worker, the hardened
   container on its own network, log streaming, exit status — against a bare
   ``docker run --rm IMAGE bash -c true`` (``podman run --rm`` for Podman) of the same image, in
   the same run, alternating so that both see the same machine. Goal (issue 4): p50 within 1.3x.
2. 100 container jobs enqueued at once (``max_jobs=100``): all must succeed; the wall time is
   reported; afterwards no container or network of ours may be left.
3. The relay's cost: a Python job times 200 paced ``GET /executions/{id}/input`` calls
   to the runtime API from inside the job, run by the container executor (through the relay)
   and by the local executor (straight to the API on loopback) of the same Cronium.

Images come from ``scripts/images --tag TAG`` (default ``test``).

Run from the project root: ``python -m bench.container_overhead [--engine docker|podman|all]
[--runs N] [--concurrent N] [--quick]``.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench._common import describe_machine, format_table, machine_info, percentiles, write_results
from cronium_core import Cronium, Event, JobStatus, Script
from cronium_executors.container import KIND

PODMAN_URL = "unix:///run/podman/podman.sock"


def cli(engine: str) -> list[str]:
    return ["podman", "--url", PODMAN_URL] if engine == "podman" else ["docker"]


def config(engine: str, tag: str, concurrent: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "images": {lang: f"cronium-{lang}:{tag}" for lang in ("bash", "python", "node")},
        "relay_image": f"cronium-base:{tag}",
        "network_pool": 4,
    }
    if engine == "podman":
        cfg["url"] = PODMAN_URL
    return cfg


def ours_left(engine: str) -> list[str]:
    out = []
    for what in (["ps", "-a"], ["network", "ls"]):
        result = subprocess.run(
            [*cli(engine), *what, "--filter", f"label={KIND}=job", "--format", "{{.ID}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        out += result.stdout.split()
    return out


async def bare_once(engine: str, image: str) -> float:
    t0 = time.perf_counter()
    await anyio.run_process([*cli(engine), "run", "--rm", image, "bash", "-c", "true"])
    return time.perf_counter() - t0


PROBE = """
import os, time, urllib.request
env = os.environ
url = f"{env['CRONIUM_RUNTIME_API']}/executions/{env['CRONIUM_EXECUTION_ID']}/input"
auth = {"Authorization": "Bearer " + env["CRONIUM_EXECUTION_TOKEN"]}
req = urllib.request.Request(url, headers=auth)
times = []
for _ in range(230):  # paced under the per-execution rate limit (50/s)
    t = time.perf_counter()
    urllib.request.urlopen(req).read()
    times.append(time.perf_counter() - t)
    time.sleep(0.025)
times = sorted(times[30:])
import cronium
cronium.output({"p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)]})
"""


async def relay_cost(cr: Cronium, engine: str) -> dict[str, Any]:
    out = {}
    for executor in (engine, "local"):
        ev = await cr.events.add(
            Event(name=f"probe-{executor}", action=Script(language="python", code=PROBE),
                  executor=executor)
        )  # fmt: skip
        job = await cr.jobs.wait((await cr.run(ev)).id, timeout=120)
        assert job.status is JobStatus.SUCCEEDED, job
        out[executor] = job.output
    return out


async def measure(engine: str, tag: str, runs: int, concurrent: int) -> dict[str, Any]:
    image = f"cronium-bash:{tag}"
    bare: list[float] = []
    ours: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with Cronium(
            f"sqlite:///{Path(tmp) / 'bench.db'}",
            executors=[engine, "local"],
            executor_config={engine: config(engine, tag, concurrent)},
            scheduler=False,
            max_jobs=max(concurrent, 1),
            poll_interval=0.2,
        ) as cr:
            ev = await cr.events.add(
                Event(name="true", action=Script(language="bash", code="true"), executor=engine)
            )
            for _ in range(3):  # warm-up: images in the page cache, the relay, the pool
                await cr.jobs.wait((await cr.run(ev)).id, timeout=60)
                await bare_once(engine, image)
            for _ in range(runs):
                bare.append(await bare_once(engine, image))
                t0 = time.perf_counter()
                job = await cr.jobs.wait((await cr.run(ev)).id, timeout=60)
                ours.append(time.perf_counter() - t0)
                assert job.status is JobStatus.SUCCEEDED, job
            relay = await relay_cost(cr, engine)
            wall = float("nan")
            succeeded = 0
            if concurrent:
                sleeper = await cr.events.add(
                    Event(
                        name="sleep1",
                        action=Script(language="bash", code="sleep 1; echo done"),
                        executor=engine,
                    )
                )
                t0 = time.perf_counter()
                jobs = [await cr.run(sleeper) for _ in range(concurrent)]
                done = [await cr.jobs.wait(j.id, timeout=600) for j in jobs]
                wall = time.perf_counter() - t0
                succeeded = sum(j.status is JobStatus.SUCCEEDED for j in done)
        # the executor has stopped: its background removals are done
        left = ours_left(engine)
    b, o = percentiles(bare, (50, 99)), percentiles(ours, (50, 99))
    return {
        "bare": b,
        "cronium": o,
        "ratio_p50": o["p50"] / b["p50"],
        "goal_met": o["p50"] <= 1.3 * b["p50"],
        "concurrent": concurrent,
        "concurrent_succeeded": succeeded,
        "concurrent_wall_s": wall,
        "left_behind": left,
        "relay": relay,
    }


async def main_async(engines: list[str], tag: str, runs: int, concurrent: int) -> dict[str, Any]:
    rows = []
    results = {}
    for engine in engines:
        r = await measure(engine, tag, runs, concurrent)
        results[engine] = r
        rows.append(
            [
                engine,
                f"{r['bare']['p50'] * 1000:.0f}",
                f"{r['bare']['p99'] * 1000:.0f}",
                f"{r['cronium']['p50'] * 1000:.0f}",
                f"{r['cronium']['p99'] * 1000:.0f}",
                f"{r['ratio_p50']:.2f}x",
                "yes" if r["goal_met"] else "no",
                f"{r['concurrent_succeeded']}/{r['concurrent']} in {r['concurrent_wall_s']:.1f} s",
                len(r["left_behind"]),
            ]
        )
    relay_rows = [
        [
            engine,
            f"{r['relay']['local']['p50'] * 1000:.2f}",
            f"{r['relay']['local']['p99'] * 1000:.2f}",
            f"{r['relay'][engine]['p50'] * 1000:.2f}",
            f"{r['relay'][engine]['p99'] * 1000:.2f}",
        ]
        for engine, r in results.items()
    ]
    relay_table = format_table(
        ["engine", "local job p50 ms", "p99", "container job (relay) p50 ms", "p99"], relay_rows
    )
    table = format_table(
        [
            "engine",
            "bare run --rm p50 ms",
            "p99",
            "cronium job p50 ms",
            "p99",
            "p50 ratio",
            "within 1.3x",
            "concurrent jobs (sleep 1)",
            "left behind",
        ],
        rows,
    )
    print(table)
    print()
    print(relay_table)
    return {"runs": runs, "results": results, "table": table, "relay_table": relay_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["docker", "podman", "all"], default="all")
    parser.add_argument("--tag", default="test")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="10 runs, 20 concurrent jobs")
    args = parser.parse_args()
    engines = ["docker", "podman"] if args.engine == "all" else [args.engine]
    runs, concurrent = (10, 20) if args.quick else (args.runs, args.concurrent)
    info = machine_info()
    print(describe_machine(info))
    payload = anyio.run(main_async, engines, args.tag, runs, concurrent)
    path = write_results("container_overhead", {"machine": info, **payload})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
