"""The small demo that ``cronium serve --demo`` installs: a cron-scheduled Python script and a
workflow with a success branch, a failure branch and a condition branch."""

from __future__ import annotations

from cronium_core import (
    Cron,
    Cronium,
    Edge,
    EdgeKind,
    Event,
    Node,
    Script,
    Workflow,
)
from cronium_core.errors import NotFound

CLOCK = Event(
    name="demo-clock",
    action=Script(
        language="python",
        code=(
            "import datetime, cronium\n"
            "now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')\n"
            "print('tick at', now)\n"
            "cronium.output({'tick': now})\n"
        ),
    ),
    schedule=Cron(expression="* * * * *", timezone="UTC"),
)

MEASURE = Event(
    name="demo-measure",
    action=Script(
        language="python",
        code=(
            "import cronium, random\n"
            "reading = cronium.input().get('reading', random.randint(0, 100))\n"
            "print('measured', reading)\n"
            "cronium.output({'reading': reading})\n"
            "cronium.set_condition(reading > 50)  # take the 'high' branch\n"
            "if reading < 0:\n"
            "    raise SystemExit('negative reading: sensor broken')\n"
        ),
    ),
)

REPORT = Event(
    name="demo-report",
    action=Script(
        language="python",
        code="import cronium\nprint('all good, reading was', cronium.input()['reading'])\n",
    ),
)
ALERT = Event(
    name="demo-alert",
    action=Script(language="bash", code='echo "measurement failed; paging nobody, this is a demo"'),
)
HIGH = Event(
    name="demo-high",
    action=Script(
        language="python",
        code=(
            "import cronium\n"
            "print('high reading:', cronium.input())\n"
            "cronium.output({'alarm': True})\n"
        ),
    ),
)

WORKFLOW_NAME = "demo-pipeline"


async def install(cr: Cronium) -> Workflow:
    """Add the demo events and workflow unless they exist; return the workflow."""
    ids: dict[str, str] = {}
    for event in (CLOCK, MEASURE, REPORT, ALERT, HIGH):
        try:
            ids[event.name] = (await cr.events.get(event.name)).id
        except NotFound:
            ids[event.name] = (await cr.events.add(event)).id
    try:
        return await cr.workflows.get(WORKFLOW_NAME)
    except NotFound:
        pass
    return await cr.workflows.add(
        Workflow(
            name=WORKFLOW_NAME,
            nodes=(
                Node(id="measure", event_id=ids["demo-measure"]),
                Node(id="report", event_id=ids["demo-report"]),
                Node(id="alert", event_id=ids["demo-alert"]),
                Node(id="high", event_id=ids["demo-high"]),
            ),
            edges=(
                Edge(source="measure", target="report", kind=EdgeKind.ON_SUCCESS),
                Edge(source="measure", target="alert", kind=EdgeKind.ON_FAILURE),
                Edge(source="measure", target="high", kind=EdgeKind.ON_CONDITION),
            ),
        )
    )
