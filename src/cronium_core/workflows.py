"""Workflows: a DAG of events, its validation, and the pure planning step behind a workflow run.

Nothing here touches storage. The engine keeps one `NodeState` per node of a run and, whenever a
node's job ends (or the run starts), calls `plan` to learn which nodes to start and which to skip.
`plan` is a pure function of the workflow and the states, so calling it again after a crash with
the same states gives the same answer: the engine may retry a step without double-starting nodes,
as long as it records the nodes it started (as RUNNING) before calling `plan` again.

How a node is decided (see the architecture brief, section 7):

* a root (no incoming edge) starts with the run's input;
* any other node waits until every parent is terminal (succeeded, failed or skipped); then each
  incoming edge from a parent that ran is tested with `edge_fires`, and the node starts if at
  least one fired, else it is skipped (and its own children may then be skipped in turn);
* its input is the fired parent's output as is when one edge fired, or ``{parent id: output}``
  when several fired;
* the run fails when a node failed and no ON_FAILURE or ALWAYS edge leaves it.
"""

from __future__ import annotations

import enum
import functools
import heapq
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import InvalidWorkflow
from .events import EventStatus
from .jobs import JobStatus
from .schedules import Manual, Schedule

__all__ = [
    "Edge",
    "EdgeKind",
    "Node",
    "NodeState",
    "NodeStatus",
    "Plan",
    "Workflow",
    "edge_fires",
    "initial_states",
    "plan",
    "unhandled_failures",
]

_NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class EdgeKind(enum.StrEnum):
    """When an edge (or a conditional action) fires, given how its source ended."""

    ALWAYS = "always"
    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"
    #: the source's script called ``set_condition(true)``; unset counts as false
    ON_CONDITION = "on_condition"


def edge_fires(kind: EdgeKind, succeeded: bool, condition: bool | None) -> bool:
    """Whether an edge of ``kind`` fires after its source ended this way.

    ON_CONDITION looks only at the condition, not at success: a script may set it and then fail.
    """
    if kind == EdgeKind.ALWAYS:
        return True
    if kind == EdgeKind.ON_SUCCESS:
        return succeeded
    if kind == EdgeKind.ON_FAILURE:
        return not succeeded
    return condition is True


def _edge_kind(value: str) -> EdgeKind:
    try:
        return EdgeKind(value)
    except ValueError:
        known = ", ".join(kind.value for kind in EdgeKind)
        raise InvalidWorkflow("edge.kind", f"{value!r} is not one of {known}") from None


def _check_node_id(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _NODE_ID.match(value):
        raise InvalidWorkflow(
            f"node.{attribute.name}",
            f"{value!r} must be 1-64 characters of letters, digits, '_', '.' or '-'",
        )


def _check_event_id(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidWorkflow("node.event_id", "must name an event")


@attrs.frozen(kw_only=True)
class Node:
    """One step of a workflow: a run of the event ``event_id``. ``id`` is unique in the workflow."""

    id: str = attrs.field(validator=_check_node_id)
    event_id: str = attrs.field(validator=_check_event_id)


@attrs.frozen(kw_only=True)
class Edge:
    """``target`` depends on ``source``; the edge fires per ``kind`` when ``source`` ends."""

    source: str
    target: str
    kind: EdgeKind = attrs.field(default=EdgeKind.ON_SUCCESS, converter=_edge_kind)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind})"


def _nodes(value: Iterable[Node]) -> tuple[Node, ...]:
    return tuple(value)


def _edges(value: Iterable[Edge]) -> tuple[Edge, ...]:
    return tuple(value)


def _check_name(_: object, __: attrs.Attribute[str], name: str) -> None:
    if not name.strip() or len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InvalidWorkflow("name", "must be 1-200 printable characters")


@attrs.frozen(kw_only=True)
class Workflow:
    """A named DAG of event runs. ``id`` is assigned by the store when empty.

    Construction validates the graph: at least one node, unique node ids, edges between known
    nodes, no self loop, at most one edge per (source, target) pair, and no cycle.
    """

    name: str = attrs.field(validator=_check_name)
    nodes: tuple[Node, ...] = attrs.field(converter=_nodes)
    edges: tuple[Edge, ...] = attrs.field(default=(), converter=_edges)
    id: str = ""
    owner: str = "admin"
    schedule: Schedule = attrs.field(factory=Manual)
    status: EventStatus = attrs.field(default=EventStatus.ACTIVE, converter=EventStatus)

    def __attrs_post_init__(self) -> None:
        if not self.nodes:
            raise InvalidWorkflow("nodes", "a workflow needs at least one node")
        seen: set[str] = set()
        for node in self.nodes:
            if node.id in seen:
                raise InvalidWorkflow("nodes", f"node id {node.id!r} is used more than once")
            seen.add(node.id)
        pairs: set[tuple[str, str]] = set()
        for edge in self.edges:
            for end in (edge.source, edge.target):
                if end not in seen:
                    raise InvalidWorkflow("edges", f"edge {edge} names unknown node {end!r}")
            if edge.source == edge.target:
                raise InvalidWorkflow("edges", f"edge {edge} is a self loop")
            if (edge.source, edge.target) in pairs:
                raise InvalidWorkflow(
                    "edges", f"more than one edge from {edge.source!r} to {edge.target!r}"
                )
            pairs.add((edge.source, edge.target))
        cycle = self._find_cycle()
        if cycle is not None:
            raise InvalidWorkflow("edges", "cycle: " + " -> ".join(cycle))

    @functools.cached_property
    def _incoming(self) -> Mapping[str, tuple[Edge, ...]]:
        incoming: dict[str, list[Edge]] = {node.id: [] for node in self.nodes}
        for edge in self.edges:
            incoming[edge.target].append(edge)
        return {node_id: tuple(edges) for node_id, edges in incoming.items()}

    @functools.cached_property
    def _outgoing(self) -> Mapping[str, tuple[Edge, ...]]:
        outgoing: dict[str, list[Edge]] = {node.id: [] for node in self.nodes}
        for edge in self.edges:
            outgoing[edge.source].append(edge)
        return {node_id: tuple(edges) for node_id, edges in outgoing.items()}

    def _find_cycle(self) -> list[str] | None:
        """A cycle as a closed path (first node repeated at the end), or None. Iterative DFS in
        declaration order, so the reported cycle is deterministic and deep graphs do not hit the
        recursion limit."""
        done: set[str] = set()
        for root in self.nodes:
            if root.id in done:
                continue
            path = [root.id]
            on_path = {root.id: 0}
            stack = [iter(self._outgoing[root.id])]
            while stack:
                edge = next(stack[-1], None)
                if edge is None:
                    stack.pop()
                    done.add(path[-1])
                    del on_path[path.pop()]
                    continue
                child = edge.target
                if child in on_path:
                    return [*path[on_path[child] :], child]
                if child not in done:
                    on_path[child] = len(path)
                    path.append(child)
                    stack.append(iter(self._outgoing[child]))
        return None

    def _check_known(self, node_id: str) -> None:
        if node_id not in self._incoming:
            raise InvalidWorkflow("node", f"workflow {self.name!r} has no node {node_id!r}")

    def node(self, node_id: str) -> Node:
        self._check_known(node_id)
        return next(node for node in self.nodes if node.id == node_id)

    def roots(self) -> tuple[str, ...]:
        """The nodes without an incoming edge, in declaration order; they start a run."""
        return tuple(node.id for node in self.nodes if not self._incoming[node.id])

    def parents(self, node_id: str) -> tuple[Edge, ...]:
        """The edges into ``node_id``, in declaration order."""
        self._check_known(node_id)
        return self._incoming[node_id]

    def children(self, node_id: str) -> tuple[Edge, ...]:
        """The edges out of ``node_id``, in declaration order."""
        self._check_known(node_id)
        return self._outgoing[node_id]

    def topological_order(self) -> tuple[str, ...]:
        """Every node after all its parents; among the nodes ready at a step, the one declared
        first comes first (so a graph declared in order keeps its declaration order)."""
        return self._topological_order

    @functools.cached_property
    def _topological_order(self) -> tuple[str, ...]:
        index = {node.id: i for i, node in enumerate(self.nodes)}
        waiting = {node_id: len(edges) for node_id, edges in self._incoming.items()}
        ready = [index[node_id] for node_id in self.roots()]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            node_id = self.nodes[heapq.heappop(ready)].id
            order.append(node_id)
            for edge in self._outgoing[node_id]:
                waiting[edge.target] -= 1
                if not waiting[edge.target]:
                    heapq.heappush(ready, index[edge.target])
        return tuple(order)


class NodeStatus(enum.StrEnum):
    """Where one node of a workflow run stands. FAILED covers failed, timed-out and cancelled
    jobs; SKIPPED means resolved-not-taken (no incoming edge fired)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def terminal(self) -> bool:
        return self not in (NodeStatus.PENDING, NodeStatus.RUNNING)

    @classmethod
    def from_job(cls, status: JobStatus) -> NodeStatus:
        """The node status of a node whose job has ``status`` (a queued job counts as running)."""
        if not status.finished:
            return cls.RUNNING
        return cls.SUCCEEDED if status is JobStatus.SUCCEEDED else cls.FAILED


@attrs.frozen(kw_only=True)
class NodeState:
    """What `plan` needs to know about one node: its status and, once it ended, the output and
    the condition its script set (None when unset)."""

    status: NodeStatus = attrs.field(converter=NodeStatus)
    output: Any = None
    condition: bool | None = None


@attrs.frozen(kw_only=True)
class Plan:
    """What to do next in a workflow run."""

    #: node id -> input, for the nodes to start now (in topological order)
    start: Mapping[str, Any]
    #: nodes now resolved-not-taken; record them as SKIPPED
    skip: frozenset[str]
    #: once the start/skip are applied, no node is pending or running: the run is over
    finished: bool
    #: some node failed with no ON_FAILURE or ALWAYS edge to handle it (see `unhandled_failures`)
    failed: bool


def initial_states(workflow: Workflow) -> dict[str, NodeState]:
    """The states of a run that has not started: every node PENDING."""
    return {node.id: NodeState(status=NodeStatus.PENDING) for node in workflow.nodes}


def unhandled_failures(workflow: Workflow, states: Mapping[str, NodeState]) -> tuple[str, ...]:
    """The FAILED nodes (in topological order) with no outgoing ON_FAILURE or ALWAYS edge; any
    of them makes the run fail."""
    _check_states(workflow, states)
    handling = (EdgeKind.ON_FAILURE, EdgeKind.ALWAYS)
    return tuple(
        node_id
        for node_id in workflow.topological_order()
        if states[node_id].status is NodeStatus.FAILED
        and not any(edge.kind in handling for edge in workflow.children(node_id))
    )


def _check_states(workflow: Workflow, states: Mapping[str, NodeState]) -> None:
    expected = {node.id for node in workflow.nodes}
    if missing := expected - states.keys():
        raise InvalidWorkflow("states", f"no state for node(s) {', '.join(sorted(missing))}")
    if unknown := states.keys() - expected:
        raise InvalidWorkflow("states", f"unknown node(s) {', '.join(sorted(unknown))}")


def plan(workflow: Workflow, states: Mapping[str, NodeState], run_input: Any) -> Plan:
    """Decide which pending nodes start and which are skipped, given every node's state.

    Pure and idempotent. RUNNING nodes are never started again; a node started by this plan is
    not terminal, so its children wait. Skips propagate down the graph in this one call, since
    nodes are decided in topological order and a skipped node is terminal for its children.
    """
    _check_states(workflow, states)
    status = {node_id: state.status for node_id, state in states.items()}
    start: dict[str, Any] = {}
    skip: set[str] = set()
    for node_id in workflow.topological_order():
        if status[node_id] is not NodeStatus.PENDING:
            continue
        incoming = workflow.parents(node_id)
        if not incoming:
            start[node_id] = run_input
            status[node_id] = NodeStatus.RUNNING
            continue
        if not all(status[edge.source].terminal for edge in incoming):
            continue
        fired = [
            edge.source
            for edge in incoming
            if status[edge.source] in (NodeStatus.SUCCEEDED, NodeStatus.FAILED)
            and edge_fires(
                edge.kind,
                status[edge.source] is NodeStatus.SUCCEEDED,
                states[edge.source].condition,
            )
        ]
        if not fired:
            skip.add(node_id)
            status[node_id] = NodeStatus.SKIPPED
        else:
            if len(fired) == 1:
                start[node_id] = states[fired[0]].output
            else:
                start[node_id] = {source: states[source].output for source in fired}
            status[node_id] = NodeStatus.RUNNING
    return Plan(
        start=start,
        skip=frozenset(skip),
        finished=all(s.terminal for s in status.values()),
        failed=bool(unhandled_failures(workflow, states)),
    )
