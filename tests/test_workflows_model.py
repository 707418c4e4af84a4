"""The workflow model, its validation, and the pure planning step (no storage involved)."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cronium_core.errors import InvalidWorkflow, ValidationError
from cronium_core.events import EventStatus
from cronium_core.jobs import JobStatus
from cronium_core.schedules import Manual
from cronium_core.workflows import (
    Edge,
    EdgeKind,
    Node,
    NodeState,
    NodeStatus,
    Plan,
    Workflow,
    edge_fires,
    initial_states,
    plan,
    unhandled_failures,
)

ALWAYS = EdgeKind.ALWAYS
ON_SUCCESS = EdgeKind.ON_SUCCESS
ON_FAILURE = EdgeKind.ON_FAILURE
ON_CONDITION = EdgeKind.ON_CONDITION

PENDING = NodeState(status=NodeStatus.PENDING)
RUNNING = NodeState(status=NodeStatus.RUNNING)
SKIPPED = NodeState(status=NodeStatus.SKIPPED)


def ok(output: Any = None, condition: bool | None = None) -> NodeState:
    return NodeState(status=NodeStatus.SUCCEEDED, output=output, condition=condition)


def bad(output: Any = None, condition: bool | None = None) -> NodeState:
    return NodeState(status=NodeStatus.FAILED, output=output, condition=condition)


def make(nodes: str, *edges: str | tuple[str, EdgeKind]) -> Workflow:
    """``make("a b c", "a>b", ("b>c", ON_FAILURE))``; a bare edge is ON_SUCCESS."""
    built = []
    for spec in edges:
        pair, kind = (spec, ON_SUCCESS) if isinstance(spec, str) else spec
        source, target = pair.split(">")
        built.append(Edge(source=source, target=target, kind=kind))
    return Workflow(
        name="wf", nodes=[Node(id=n, event_id=f"ev-{n}") for n in nodes.split()], edges=built
    )


def states(workflow: Workflow, **given_states: NodeState) -> dict[str, NodeState]:
    result = initial_states(workflow)
    result.update(given_states)
    return result


# --- validation -------------------------------------------------------------------------------


def refused(nodes: str, *edges: str | tuple[str, EdgeKind]) -> InvalidWorkflow:
    with pytest.raises(InvalidWorkflow) as info:
        make(nodes, *edges)
    return info.value


def test_a_workflow_needs_a_node() -> None:
    with pytest.raises(InvalidWorkflow) as info:
        Workflow(name="empty", nodes=[])
    assert info.value.field == "nodes"
    assert "at least one node" in info.value.problem


def test_node_ids_are_unique() -> None:
    error = refused("a b a")
    assert error.field == "nodes"
    assert "'a'" in error.problem


def test_an_edge_to_an_unknown_node_names_it() -> None:
    error = refused("a b", "a>b", "b>zz")
    assert error.field == "edges"
    assert "unknown node 'zz'" in error.problem
    assert "unknown node 'ghost'" in refused("a", "ghost>a").problem


def test_self_loop_is_refused() -> None:
    error = refused("a b", "a>b", "b>b")
    assert "self loop" in error.problem
    assert "b -> b" in error.problem


def test_a_second_edge_between_the_same_nodes_is_refused() -> None:
    error = refused("a b", "a>b", ("a>b", ON_FAILURE))
    assert "more than one edge from 'a' to 'b'" in error.problem


def test_a_cycle_is_refused_and_named() -> None:
    error = refused("start a b c end", "start>a", "a>b", "b>c", "c>a", "c>end")
    assert error.field == "edges"
    assert error.problem == "cycle: a -> b -> c -> a"
    assert str(error) == "edges: cycle: a -> b -> c -> a"


def test_a_two_node_cycle_is_named() -> None:
    assert refused("a b", "a>b", ("b>a", ALWAYS)).problem == "cycle: a -> b -> a"


def test_invalid_workflow_is_a_validation_error() -> None:
    error = refused("a", "a>a")
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("node_id", ["", "has space", "x" * 65, "ünïcode", "a/b", "a>b"])
def test_bad_node_ids_are_refused(node_id: str) -> None:
    with pytest.raises(InvalidWorkflow) as info:
        Node(id=node_id, event_id="ev")
    assert info.value.field == "node.id"


@pytest.mark.parametrize("node_id", ["fetch", "a.b-c_1", "X" * 64, "0"])
def test_good_node_ids_are_kept(node_id: str) -> None:
    assert Node(id=node_id, event_id="ev").id == node_id


def test_a_node_must_name_an_event() -> None:
    with pytest.raises(InvalidWorkflow) as info:
        Node(id="a", event_id="")
    assert info.value.field == "node.event_id"


def test_edge_kind_is_converted_and_checked() -> None:
    assert Edge(source="a", target="b").kind is ON_SUCCESS
    assert Edge(source="a", target="b", kind="on_failure").kind is ON_FAILURE
    with pytest.raises(InvalidWorkflow) as info:
        Edge(source="a", target="b", kind="sometimes")
    assert info.value.field == "edge.kind"
    assert "'sometimes'" in info.value.problem


def test_workflow_defaults_and_conversions() -> None:
    workflow = Workflow(
        name="wf",
        nodes=[Node(id="a", event_id="ev")],
        status="paused",
    )
    assert workflow.schedule == Manual()
    assert workflow.status is EventStatus.PAUSED
    assert workflow.owner == "admin"
    assert workflow.edges == ()
    assert isinstance(workflow.nodes, tuple)
    with pytest.raises(InvalidWorkflow) as info:
        Workflow(name="  ", nodes=[Node(id="a", event_id="ev")])
    assert info.value.field == "name"


def test_equal_workflows_compare_and_hash_equal() -> None:
    assert make("a b", "a>b") == make("a b", "a>b")
    assert hash(make("a b", "a>b")) == hash(make("a b", "a>b"))
    assert make("a b", "a>b") != make("a b", ("a>b", ALWAYS))


# --- structure --------------------------------------------------------------------------------


def test_roots_are_in_declaration_order() -> None:
    workflow = make("z b a c", "b>c", "a>c")
    assert workflow.roots() == ("z", "b", "a")


def test_parents_and_children() -> None:
    workflow = make("a b c", "a>c", ("b>c", ON_FAILURE), "a>b")
    assert workflow.parents("c") == (
        Edge(source="a", target="c"),
        Edge(source="b", target="c", kind=ON_FAILURE),
    )
    assert workflow.children("a") == (Edge(source="a", target="c"), Edge(source="a", target="b"))
    assert workflow.parents("a") == ()
    assert workflow.children("c") == ()
    with pytest.raises(InvalidWorkflow, match="no node 'nope'"):
        workflow.parents("nope")


def test_topological_order_puts_parents_first() -> None:
    # declared backwards: the order must still follow the edges
    assert make("d c b a", "a>b", "b>c", "c>d").topological_order() == ("a", "b", "c", "d")
    # when several are ready, declaration order decides
    workflow = make("a b c d e", "a>d", "b>d", "d>e", "c>e")
    assert workflow.topological_order() == ("a", "b", "c", "d", "e")


# --- edge_fires -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "succeeded", "condition", "fires"),
    [
        (ALWAYS, True, None, True),
        (ALWAYS, False, None, True),
        (ALWAYS, False, False, True),
        (ON_SUCCESS, True, None, True),
        (ON_SUCCESS, False, True, False),
        (ON_FAILURE, True, None, False),
        (ON_FAILURE, False, None, True),
        (ON_CONDITION, True, True, True),
        (ON_CONDITION, True, False, False),
        (ON_CONDITION, True, None, False),
        (ON_CONDITION, False, True, True),
        (ON_CONDITION, False, None, False),
    ],
)
def test_edge_fires(kind: EdgeKind, succeeded: bool, condition: bool | None, fires: bool) -> None:
    assert edge_fires(kind, succeeded, condition) is fires


def test_node_status_from_job_status() -> None:
    assert NodeStatus.from_job(JobStatus.QUEUED) is NodeStatus.RUNNING
    assert NodeStatus.from_job(JobStatus.RUNNING) is NodeStatus.RUNNING
    assert NodeStatus.from_job(JobStatus.SUCCEEDED) is NodeStatus.SUCCEEDED
    for status in (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED):
        assert NodeStatus.from_job(status) is NodeStatus.FAILED


# --- plan -------------------------------------------------------------------------------------


def test_roots_start_with_the_run_input() -> None:
    workflow = make("a b c", "a>c", "b>c")
    step = plan(workflow, initial_states(workflow), {"x": 1})
    assert step == Plan(
        start={"a": {"x": 1}, "b": {"x": 1}}, skip=frozenset(), finished=False, failed=False
    )


def test_a_linear_chain_passes_output_along() -> None:
    workflow = make("a b c", "a>b", "b>c")
    step = plan(workflow, states(workflow, a=ok({"n": 1})), "in")
    assert dict(step.start) == {"b": {"n": 1}}
    step = plan(workflow, states(workflow, a=ok({"n": 1}), b=ok([2])), "in")
    assert dict(step.start) == {"c": [2]}
    assert not step.finished
    done = plan(workflow, states(workflow, a=ok(), b=ok(), c=ok()), "in")
    assert done == Plan(start={}, skip=frozenset(), finished=True, failed=False)


def test_running_nodes_are_never_started_again() -> None:
    workflow = make("a b", "a>b")
    step = plan(workflow, states(workflow, a=RUNNING), "in")
    assert step == Plan(start={}, skip=frozenset(), finished=False, failed=False)


def test_a_diamond_join_waits_for_both_parents_and_gets_both_outputs() -> None:
    workflow = make("a b c d", "a>b", "a>c", "b>d", "c>d")
    assert dict(plan(workflow, states(workflow, a=ok("A")), None).start) == {"b": "A", "c": "A"}
    waiting = plan(workflow, states(workflow, a=ok("A"), b=ok("B"), c=RUNNING), None)
    assert dict(waiting.start) == {}
    assert not waiting.finished
    joined = plan(workflow, states(workflow, a=ok("A"), b=ok("B"), c=ok("C")), None)
    assert dict(joined.start) == {"d": {"b": "B", "c": "C"}}
    assert not joined.finished


def test_a_join_with_one_failed_parent_still_runs_on_the_fired_one() -> None:
    # b failed and its ON_SUCCESS edge did not fire; c's did: d gets c's output as is
    workflow = make("a b c d", "a>b", "a>c", "b>d", "c>d")
    step = plan(workflow, states(workflow, a=ok(), b=bad("B"), c=ok("C")), None)
    assert dict(step.start) == {"d": "C"}
    assert step.failed  # b's failure is not handled by any edge


def test_success_branch() -> None:
    workflow = make(
        "a good handler cleanup", "a>good", ("a>handler", ON_FAILURE), ("a>cleanup", ALWAYS)
    )
    step = plan(workflow, states(workflow, a=ok("out")), None)
    assert dict(step.start) == {"good": "out", "cleanup": "out"}
    assert step.skip == {"handler"}
    assert not step.finished


def test_failure_branch_is_handled() -> None:
    workflow = make(
        "a good handler cleanup", "a>good", ("a>handler", ON_FAILURE), ("a>cleanup", ALWAYS)
    )
    step = plan(workflow, states(workflow, a=bad("boom")), None)
    assert dict(step.start) == {"handler": "boom", "cleanup": "boom"}
    assert step.skip == {"good"}
    assert not step.failed
    end = plan(workflow, states(workflow, a=bad(), good=SKIPPED, handler=ok(), cleanup=ok()), None)
    assert end == Plan(start={}, skip=frozenset(), finished=True, failed=False)


@pytest.mark.parametrize(("condition", "runs"), [(True, True), (False, False), (None, False)])
def test_on_condition(condition: bool | None, runs: bool) -> None:
    workflow = make("a b", ("a>b", ON_CONDITION))
    step = plan(workflow, states(workflow, a=ok("out", condition=condition)), None)
    assert dict(step.start) == ({"b": "out"} if runs else {})
    assert step.skip == (set() if runs else {"b"})
    assert step.finished is not runs


def test_skips_propagate_down_a_chain_in_one_call() -> None:
    workflow = make("a b c d", ("a>b", ON_FAILURE), ("b>c", ALWAYS), "c>d")
    step = plan(workflow, states(workflow, a=ok()), None)
    assert step == Plan(start={}, skip=frozenset("bcd"), finished=True, failed=False)


def test_a_skip_reaching_a_join_waits_for_the_other_parent() -> None:
    # a -> x (on failure, skipped) -> y -> join ; a -> z -> join
    workflow = make("a x y z join", ("a>x", ON_FAILURE), "x>y", "y>join", "a>z", "z>join")
    step = plan(workflow, states(workflow, a=ok("A")), None)
    assert dict(step.start) == {"z": "A"}
    assert step.skip == {"x", "y"}  # join still waits for z
    applied = states(workflow, a=ok("A"), x=SKIPPED, y=SKIPPED, z=ok("Z"))
    step = plan(workflow, applied, None)
    assert step == Plan(start={"join": "Z"}, skip=frozenset(), finished=False, failed=False)


def test_a_join_whose_parents_are_all_skipped_is_skipped() -> None:
    workflow = make("a b c d e", ("a>b", ON_FAILURE), ("a>c", ON_FAILURE), "b>d", "c>d", "d>e")
    step = plan(workflow, states(workflow, a=ok()), None)
    assert step == Plan(start={}, skip=frozenset("bcde"), finished=True, failed=False)


def test_an_unhandled_failure_fails_the_run() -> None:
    workflow = make("a b", "a>b")
    step = plan(workflow, states(workflow, a=bad()), None)
    assert step == Plan(start={}, skip=frozenset({"b"}), finished=True, failed=True)
    assert unhandled_failures(workflow, states(workflow, a=bad())) == ("a",)


def test_a_failing_leaf_fails_the_run_and_is_known_before_the_end() -> None:
    workflow = make("a b c", "a>b", "a>c")
    step = plan(workflow, states(workflow, a=ok(), b=bad(), c=RUNNING), None)
    assert not step.finished
    assert step.failed
    step = plan(workflow, states(workflow, a=ok(), b=ok(), c=ok()), None)
    assert step.finished
    assert not step.failed


def test_only_on_failure_and_always_edges_handle_a_failure() -> None:
    for kind, handled in [
        (ON_FAILURE, True),
        (ALWAYS, True),
        (ON_SUCCESS, False),
        (ON_CONDITION, False),
    ]:
        workflow = make("a b", ("a>b", kind))
        assert plan(workflow, states(workflow, a=bad(), b=ok()), None).failed is not handled


def test_a_failing_failure_handler_fails_the_run() -> None:
    workflow = make("a handler", ("a>handler", ON_FAILURE))
    step = plan(workflow, states(workflow, a=bad(), handler=bad()), None)
    assert step.finished
    assert step.failed
    assert unhandled_failures(workflow, states(workflow, a=bad(), handler=bad())) == ("handler",)


def test_plan_is_idempotent_and_does_not_touch_the_states() -> None:
    workflow = make("a b c d", "a>b", ("a>c", ON_FAILURE), "b>d", "c>d")
    current = states(workflow, a=ok("A"))
    snapshot = dict(current)
    first = plan(workflow, current, "in")
    assert plan(workflow, current, "in") == first
    assert current == snapshot
    # once the plan is applied, planning again decides nothing new
    current.update({node_id: RUNNING for node_id in first.start})
    current.update({node_id: SKIPPED for node_id in first.skip})
    assert plan(workflow, current, "in") == Plan(
        start={}, skip=frozenset(), finished=False, failed=False
    )


def test_states_must_cover_exactly_the_nodes() -> None:
    workflow = make("a b", "a>b")
    with pytest.raises(InvalidWorkflow, match="no state for node"):
        plan(workflow, {"a": PENDING}, None)
    with pytest.raises(InvalidWorkflow, match="unknown node"):
        plan(workflow, {"a": PENDING, "b": PENDING, "c": PENDING}, None)


def test_node_state_converts_its_status() -> None:
    assert NodeState(status="failed").status is NodeStatus.FAILED
    assert NodeStatus.SKIPPED.terminal
    assert not NodeStatus.PENDING.terminal
    assert not NodeStatus.RUNNING.terminal


# --- properties -------------------------------------------------------------------------------

KINDS = st.sampled_from(list(EdgeKind))
CONDITIONS = st.sampled_from([True, False, None])
RUN_INPUT = {"run": "input"}


def _name(i: int) -> str:
    return f"n{i}"


def _output(i: int, succeeded: bool) -> str:
    return f"out-{i}" if succeeded else f"err-{i}"


@st.composite
def random_dags(
    draw: st.DrawFn,
) -> tuple[int, dict[tuple[int, int], EdgeKind], list[tuple[bool, bool | None]], Workflow]:
    """A DAG over 0..n-1 (edges only from lower to higher index), declared in a random order,
    and a pre-drawn outcome (succeeded, condition) for each node."""
    n = draw(st.integers(1, 9))
    edges = {
        (i, j): draw(KINDS)
        for j in range(n)
        for i in range(j)
        if draw(st.integers(0, 2)) == 0  # keep the graphs fairly sparse
    }
    outcomes = [(draw(st.booleans()), draw(CONDITIONS)) for _ in range(n)]
    node_order = draw(st.permutations(range(n)))
    edge_order = draw(st.permutations(sorted(edges)))
    workflow = Workflow(
        name="random",
        nodes=[Node(id=_name(i), event_id=f"ev{i}") for i in node_order],
        edges=[Edge(source=_name(i), target=_name(j), kind=edges[i, j]) for i, j in edge_order],
    )
    return n, edges, outcomes, workflow


def _fires(kind: EdgeKind, succeeded: bool, condition: bool | None) -> bool:
    # written out independently of edge_fires, from the architecture brief
    return {
        "always": True,
        "on_success": succeeded,
        "on_failure": not succeeded,
        "on_condition": condition is True,
    }[kind.value]


@settings(max_examples=300, deadline=None)
@given(dag=random_dags(), data=st.data())
def test_random_runs_follow_the_rules(
    dag: tuple[int, dict[tuple[int, int], EdgeKind], list[tuple[bool, bool | None]], Workflow],
    data: st.DataObject,
) -> None:
    n, edges, outcomes, workflow = dag

    # the expected run, computed node by node in index order (a topological order)
    expected_input: dict[str, Any] = {}
    for j in range(n):
        parents = [i for i in range(j) if (i, j) in edges]
        if not parents:
            expected_input[_name(j)] = RUN_INPUT
            continue
        fired = [
            i for i in parents if _name(i) in expected_input and _fires(edges[i, j], *outcomes[i])
        ]
        if len(fired) == 1:
            expected_input[_name(j)] = _output(fired[0], outcomes[fired[0]][0])
        elif fired:
            expected_input[_name(j)] = {_name(i): _output(i, outcomes[i][0]) for i in fired}
    expected_failed = any(
        _name(i) in expected_input
        and not outcomes[i][0]
        and not any(k in (ON_FAILURE, ALWAYS) for (src, _), k in edges.items() if src == i)
        for i in range(n)
    )

    # simulate: plan, apply, complete some running nodes (in an order hypothesis picks), repeat
    current = initial_states(workflow)
    started: Counter[str] = Counter()
    inputs: dict[str, Any] = {}
    for _ in range(n + 2):  # every round but the last completes at least one node
        step = plan(workflow, current, RUN_INPUT)
        assert plan(workflow, current, RUN_INPUT) == step
        assert not step.start.keys() & step.skip
        for node_id in [*step.start, *step.skip]:
            assert current[node_id].status is NodeStatus.PENDING
        for node_id, node_input in step.start.items():
            # a node starts only once every parent has ended or been skipped
            for edge in workflow.parents(node_id):
                assert current[edge.source].status.terminal or edge.source in step.skip
            started[node_id] += 1
            inputs[node_id] = node_input
            current[node_id] = RUNNING
        for node_id in step.skip:
            current[node_id] = SKIPPED
        if step.finished:
            break
        running = sorted(
            nid for nid, state in current.items() if state.status is NodeStatus.RUNNING
        )
        assert running, "not finished, yet nothing is running"
        for node_id in data.draw(st.lists(st.sampled_from(running), min_size=1, unique=True)):
            succeeded, condition = outcomes[int(node_id[1:])]
            current[node_id] = NodeState(
                status=NodeStatus.SUCCEEDED if succeeded else NodeStatus.FAILED,
                output=_output(int(node_id[1:]), succeeded),
                condition=condition,
            )
    else:
        pytest.fail("the run did not finish")

    assert all(started[node_id] <= 1 for node_id in started)
    assert inputs == expected_input
    assert set(workflow.roots()) <= set(inputs)
    for i in range(n):
        status = current[_name(i)].status
        if _name(i) in expected_input:
            assert status is (NodeStatus.SUCCEEDED if outcomes[i][0] else NodeStatus.FAILED)
        else:
            assert status is NodeStatus.SKIPPED
    assert step.failed is expected_failed
    # the finished state stays finished
    assert plan(workflow, current, RUN_INPUT) == Plan(
        start={}, skip=frozenset(), finished=True, failed=expected_failed
    )


@settings(deadline=None)
@given(dag=random_dags())
def test_topological_order_follows_every_edge(
    dag: tuple[int, dict[tuple[int, int], EdgeKind], list[tuple[bool, bool | None]], Workflow],
) -> None:
    n, edges, _, workflow = dag
    order = workflow.topological_order()
    assert sorted(order) == sorted(_name(i) for i in range(n))
    position = {node_id: k for k, node_id in enumerate(order)}
    for i, j in edges:
        assert position[_name(i)] < position[_name(j)]


@st.composite
def graphs_with_a_back_edge(draw: st.DrawFn) -> tuple[list[Node], list[Edge]]:
    """A random forward graph plus a path p0 < p1 < ... < pk along forward edges and one back
    edge pk -> p0, which closes a cycle."""
    n = draw(st.integers(2, 9))
    edges = {(i, j): draw(KINDS) for j in range(n) for i in range(j) if draw(st.booleans())}
    path = sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True)))
    for pair in itertools.pairwise(path):
        edges.setdefault(pair, draw(KINDS))
    edges[path[-1], path[0]] = draw(KINDS)
    nodes = [Node(id=_name(i), event_id="ev") for i in draw(st.permutations(range(n)))]
    edge_list = [
        Edge(source=_name(i), target=_name(j), kind=kind)
        for (i, j), kind in draw(st.permutations(sorted(edges.items())))
    ]
    return nodes, edge_list


@settings(deadline=None)
@given(graph=graphs_with_a_back_edge())
def test_graphs_with_a_back_edge_are_refused_as_cycles(
    graph: tuple[list[Node], list[Edge]],
) -> None:
    nodes, edges = graph
    with pytest.raises(InvalidWorkflow) as info:
        Workflow(name="cyclic", nodes=nodes, edges=edges)
    assert info.value.field == "edges"
    assert info.value.problem.startswith("cycle: ")
    cycle = info.value.problem.removeprefix("cycle: ").split(" -> ")
    # the named cycle is a real one: closed, simple, and made of declared edges
    assert len(cycle) >= 3
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1
    pairs = {(edge.source, edge.target) for edge in edges}
    assert all(pair in pairs for pair in itertools.pairwise(cycle))
