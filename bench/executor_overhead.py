"""Benchmark (b): local-executor overhead.

End-to-end latency of one job — ``cr.run()`` until ``cr.jobs.wait()`` returns it finished,
through the queue, the worker, the executor, the log store and the completion notice — for a
Bash script ``true`` and a Python script ``pass``, against spawning the same command bare
(``bash -c true``, ``python -c pass``) from the same process in the same run. Python jobs are
measured with the warm interpreter pool (the default) and without it (a fresh interpreter per
job, like the bare spawn).

Goal (issue 2): Cronium's p50 and p99 within 1.5 x bare + 5 ms.

Run from the project root: ``python -m bench.executor_overhead [--runs N] [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench._common import describe_machine, format_table, machine_info, percentiles, write_results
from cronium_core import Cronium, Event, Script


async def bare(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await anyio.run_process(cmd)
        times.append(time.perf_counter() - t0)
    return times


async def cronium_jobs(db: Path, language: str, code: str, runs: int, warm: bool) -> list[float]:
    async with Cronium(
        f"sqlite:///{db}",
        executors=["local"],
        executor_config={"local": {"warm_python": warm}},
        scheduler=False,
        max_jobs=1,
    ) as cr:
        ev = await cr.events.add(
            Event(name=f"{language}-{warm}", action=Script(language=language, code=code))  # type: ignore[arg-type]
        )
        for _ in range(3):  # warm-up: caches, the first fork of the pool
            await cr.jobs.wait((await cr.run(ev)).id)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            job = await cr.run(ev)
            done = await cr.jobs.wait(job.id, timeout=30)
            times.append(time.perf_counter() - t0)
            assert done.status == "succeeded", done
    return times


async def main_async(runs: int) -> dict[str, Any]:
    rows: list[list[Any]] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("bash true", ["bash", "-c", "true"], "bash", "true", True),
            ("python pass (warm pool)", [sys.executable, "-c", "pass"], "python", "pass", True),
            ("python pass (cold spawn)", [sys.executable, "-c", "pass"], "python", "pass", False),
        ]
        for label, cmd, language, code, warm in cases:
            await bare(cmd, 3)
            base = percentiles(await bare(cmd, runs), (50, 99))
            ours = percentiles(
                await cronium_jobs(Path(tmp) / f"{len(rows)}.db", language, code, runs, warm),
                (50, 99),
            )
            ok = all(ours[p] <= 1.5 * base[p] + 0.005 for p in ("p50", "p99"))
            rows.append(
                [
                    label,
                    f"{base['p50'] * 1000:.1f}",
                    f"{base['p99'] * 1000:.1f}",
                    f"{ours['p50'] * 1000:.1f}",
                    f"{ours['p99'] * 1000:.1f}",
                    f"{ours['p50'] / base['p50']:.2f}x",
                    "yes" if ok else "no",
                ]
            )
            results[label] = {"bare": base, "cronium": ours, "goal_met": ok}
    table = format_table(
        [
            "case",
            "bare p50 ms",
            "bare p99 ms",
            "cronium p50 ms",
            "cronium p99 ms",
            "p50 ratio",
            "within 1.5x+5ms",
        ],
        rows,
    )
    print(table)
    return {"runs": runs, "results": results, "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 runs per case")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    info = machine_info()
    print(describe_machine(info))
    payload = anyio.run(main_async, runs, backend_options={"use_uvloop": True})
    path = write_results("executor_overhead", {"machine": info, **payload})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
