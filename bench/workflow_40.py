"""Benchmark (c): the "40 light tasks" workflow.

40 sequential Python nodes; each computes a naive recursive fibonacci(10) and passes its
output to the next (through the runtime API: ``cronium.input()`` / ``cronium.output()``).
Measured: wall time from triggering the run until the run has ended, on the embedded setup
(SQLite file, local executor with the warm Python pool), repeated.

Baselines in the same run: the same 40 steps as bare ``python -c`` processes spawned one after
another, each reading its predecessor's output on stdin (process cost only, no scheduler).
Published anchors for the same workflow on other hardware are printed beside them.

Run from the project root: ``python -m bench.workflow_40 [--repeat N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench._common import describe_machine, format_table, machine_info, write_results
from cronium_core import Cronium, Edge, Event, Node, Script, Workflow

NODES = 40
TASK = """\
import cronium

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

previous = cronium.input()
cronium.output({"step": previous.get("step", 0) + 1, "fib": fib(10)})
"""
BARE_TASK = """\
import json, sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
previous = json.loads(sys.stdin.read() or "{}")
print(json.dumps({"step": previous.get("step", 0) + 1, "fib": fib(10)}))
"""
ANCHORS = [
    ("Hatchet (published)", 1.22),
    ("Windmill, dedicated workers (published)", 2.09),
    ("Temporal (published)", 2.97),
    ("Windmill (published)", 4.38),
    ("Prefect (published)", 4.87),
]


async def bare_chain() -> float:
    t0 = time.perf_counter()
    data = b"{}"
    for _ in range(NODES):
        data = (await anyio.run_process([sys.executable, "-c", BARE_TASK], input=data)).stdout
    assert json.loads(data)["step"] == NODES
    return time.perf_counter() - t0


async def cronium_chain(db: Path, repeat: int, warm: bool) -> list[float]:
    async with Cronium(
        f"sqlite:///{db}",
        executors=["local"],
        scheduler=False,
        executor_config={"local": {"warm_python": warm}},
    ) as cr:
        ev = await cr.events.add(Event(name="fib", action=Script(language="python", code=TASK)))
        wf = await cr.workflows.add(
            Workflow(
                name="forty",
                nodes=[Node(id=f"n{i:02}", event_id=ev.id) for i in range(NODES)],
                edges=[Edge(source=f"n{i:02}", target=f"n{i + 1:02}") for i in range(NODES - 1)],
            )
        )
        await cr.workflows.wait((await cr.workflows.run(wf)).id, timeout=120)  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run = await cr.workflows.run(wf)
            done = await cr.workflows.wait(run.id, timeout=120)
            times.append(time.perf_counter() - t0)
            assert done.status == "succeeded", done
            assert done.nodes[f"n{NODES - 1:02}"].output == {"step": NODES, "fib": 55}
    return times


async def main_async(repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        warm = await cronium_chain(Path(tmp) / "warm.db", repeat, warm=True)
        cold = await cronium_chain(Path(tmp) / "cold.db", max(1, repeat // 2), warm=False)
    bare = [await bare_chain() for _ in range(max(1, repeat // 2))]
    rows: list[list[Any]] = [
        [
            "Cronium, embedded, warm Python pool",
            f"{min(warm):.2f}",
            f"{statistics.median(warm):.2f}",
        ],
        [
            "Cronium, embedded, cold interpreter per task",
            f"{min(cold):.2f}",
            f"{statistics.median(cold):.2f}",
        ],
        [
            "bare python -c chain (this machine, no scheduler)",
            f"{min(bare):.2f}",
            f"{statistics.median(bare):.2f}",
        ],
        *[[name, "", f"{secs:.2f}"] for name, secs in ANCHORS],
    ]
    table = format_table(["system", "best s", "median s"], rows)
    print(table)
    return {
        "repeat": repeat,
        "warm": warm,
        "cold": cold,
        "bare": bare,
        "table": table,
        "goal_met": statistics.median(warm) < 1.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 repetitions")
    args = parser.parse_args()
    info = machine_info()
    print(describe_machine(info))
    payload = anyio.run(
        main_async, 2 if args.quick else args.repeat, backend_options={"use_uvloop": True}
    )
    print(f"results: {write_results('workflow_40', {'machine': info, **payload})}")


if __name__ == "__main__":
    main()
