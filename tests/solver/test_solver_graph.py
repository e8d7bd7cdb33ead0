"""solver.graph.BuildGraph: the order a solve runs in, and the networkx view."""

from __future__ import annotations

import random

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from solver.graph import BuildGraph, Vertex
from tests.solver.solver_fakes import step


def random_dag(seed: int, size: int) -> list[Vertex]:
    """``size`` steps, each reading up to three earlier ones (some twice)."""
    rng = random.Random(seed)
    made: list[Vertex] = []
    for n in range(size):
        inputs = [rng.choice(made) for _ in range(rng.randint(0, 3))] if made else []
        made.append(step(f"s{n}", *inputs))
    return made


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40), st.integers(1, 3))
def test_the_order_is_networkx_lexicographic_topological_order(
    seed: int, size: int, finals: int
) -> None:
    made = random_dag(seed, size)
    graph = BuildGraph(*made[-finals:])
    expected = list(nx.lexicographical_topological_sort(graph.to_networkx()))
    assert [v.digest for v in graph.topological()] == expected
    # Inputs first, every reachable vertex once.
    order = [v.digest for v in graph.topological()]
    assert len(order) == len(set(order)) == len(graph)
    for vertex in graph.topological():
        for inp in vertex.inputs:
            assert order.index(inp.digest) < order.index(vertex.digest)


def test_readers_and_the_networkx_view_agree() -> None:
    made = random_dag(7, 30)
    graph = BuildGraph(made[-1], made[-2])
    view = graph.to_networkx()
    assert set(view.nodes) == {v.digest for v in graph.topological()}
    for vertex in graph.topological():
        readers = {r.digest for r in graph.readers(vertex)}
        assert readers == set(view.successors(vertex.digest))
        assert view.nodes[vertex.digest]["vertex"] is graph.vertex(vertex.digest)
