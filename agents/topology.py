"""Team topologies: networkx digraphs whose nodes are agents and whose edges are message channels.

A node carries ``role`` (one of ``ROLES``: planner, solver, critic, verifier, summarizer) or its
own ``prompt`` (a system message), and optionally ``policy`` (an index into the team's policies).
An edge ``a -> b`` means b reads a's latest message. Built-in shapes: ``chain``, ``star``,
``mesh`` (every pair both ways), ``layered`` and ``random`` (seeded); any user graph works.

``schedule`` derives the execution order: the strongly connected components in topological
order; a component of one node runs once, a cycle runs ``max_rounds`` times (all its agents
together, each reading the others' previous messages), so no cycle is unbounded.

Example:
    >>> g = make_topology("star", 3)
    >>> sorted(g.edges), [g.nodes[n]["role"] for n in g]
    ([('solver1', 'summarizer'), ('solver2', 'summarizer'), ('solver3', 'summarizer')], ['summarizer', 'solver', 'solver', 'solver'])
    >>> schedule(g, max_rounds=1)
    [['solver1', 'solver2', 'solver3'], ['summarizer']]
    >>> schedule(make_topology("mesh", 2), max_rounds=2)
    [['solver1', 'solver2'], ['solver1', 'solver2']]
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import networkx as nx

from ponder.errors import ConfigError, UnknownName

__all__ = ["ROLES", "TOPOLOGIES", "check_topology", "draw_topology", "make_topology", "outputs", "schedule"]

#: role -> system prompt
ROLES: dict[str, str] = {
    "solver": "You are a careful problem solver on a team. Think briefly, then give the final answer.",
    "planner": "You plan for a team: write a short plan of how to solve the task. Do not solve it yourself.",
    "critic": "You check a team's work: point out mistakes in the messages you receive, briefly. "
    "Then give the final answer you believe is right.",
    "verifier": "You verify a team's answers: recompute the result step by step, then give the final answer.",
    "summarizer": "You decide for a team: read your teammates' answers and give the one final answer.",
}

TOPOLOGIES = ("chain", "star", "mesh", "layered", "random")


def make_topology(
    name: str, n: int = 3, *, roles: Sequence[str] | None = None, seed: int = 0, p: float = 0.5
) -> nx.DiGraph:
    """A built-in topology of ``n`` working agents.

    ``chain``: planner -> solver... -> verifier style pipeline (roles default: planner, solvers, verifier);
    ``star``: n solvers -> one summarizer; ``mesh``: n solvers, every pair both ways (a debate);
    ``layered``: n solvers -> n critics (fully connected) -> one summarizer;
    ``random``: n solvers, each edge i -> j (i < j) with probability ``p`` (seeded), then a summarizer
    fed by every agent without successors. ``roles`` overrides the roles of the n agents.
    """
    if n < 1:
        raise ConfigError(f"a topology needs at least one agent, got n={n}")
    g = nx.DiGraph(name=name)
    if name == "chain":
        names = [f"agent{i + 1}" for i in range(n)]
        default = ["solver"] * n if n < 3 else ["planner", *["solver"] * (n - 2), "verifier"]
        for x, r in zip(names, roles or default, strict=True):
            g.add_node(x, role=r)
        nx.add_path(g, names)
    elif name in ("star", "mesh", "random", "layered"):
        solvers = [f"solver{i + 1}" for i in range(n)]
        if name in ("star", "random", "layered"):
            g.add_node("summarizer", role="summarizer")
        for x, r in zip(solvers, roles or ["solver"] * n, strict=True):
            g.add_node(x, role=r)
        if name == "star":
            g.add_edges_from((x, "summarizer") for x in solvers)
        elif name == "mesh":
            g.add_edges_from((a, b) for a in solvers for b in solvers if a != b)
        elif name == "layered":
            critics = [f"critic{i + 1}" for i in range(n)]
            g.add_nodes_from(critics, role="critic")
            g.add_edges_from((a, b) for a in solvers for b in critics)
            g.add_edges_from((c, "summarizer") for c in critics)
        else:
            rng = random.Random(seed)
            g.add_edges_from(
                (a, b) for i, a in enumerate(solvers) for b in solvers[i + 1 :] if rng.random() < p
            )
            g.add_edges_from((x, "summarizer") for x in solvers if g.out_degree(x) == 0)
    else:
        raise UnknownName.for_registry("topology", name, TOPOLOGIES)
    return g


def check_topology(g: nx.DiGraph, *, max_rounds: int | None, n_policies: int = 1) -> None:
    """Raise ``ConfigError`` (one line) naming what is wrong with ``g`` as a team; None if sound."""
    if not isinstance(g, nx.DiGraph):
        raise ConfigError(f"a topology is a networkx.DiGraph, got {type(g).__name__}")
    if g.number_of_nodes() == 0:
        raise ConfigError(
            "the topology has no agents; add nodes with a role, e.g. g.add_node('a', role='solver')"
        )
    for node, data in g.nodes(data=True):
        if "agent" in data:
            if g.in_degree(node):
                raise ConfigError(
                    f"agent {node!r} is a whole agent graph: it cannot read messages; make it a source node"
                )
            continue
        if "prompt" not in data and data.get("role") not in ROLES:
            raise ConfigError(
                f"agent {node!r} has role {data.get('role')!r}; use one of {', '.join(ROLES)} or give it a 'prompt'"
            )
        pi = data.get("policy", 0)
        if not isinstance(pi, int) or not 0 <= pi < n_policies:
            raise ConfigError(
                f"agent {node!r} uses policy {pi!r}, but the team has {n_policies} policies (0..{n_policies - 1})"
            )
    cycle = next(iter(nx.simple_cycles(g)), None)
    if cycle is not None and (max_rounds is None or max_rounds < 1):
        loop = " -> ".join(map(str, [*cycle, cycle[0]]))
        raise ConfigError(f"the topology has a cycle ({loop}); pass max_rounds=N (>= 1) to bound it")


def schedule(g: nx.DiGraph, *, max_rounds: int = 1) -> list[list[Any]]:
    """Steps of agents to run together: components in topological order, cycles ``max_rounds`` times."""
    cond = nx.condensation(g)
    order = list(g.nodes)
    steps: list[list[Any]] = []
    for generation in nx.topological_generations(cond):
        singles, cycles = [], []
        for c in generation:
            members = sorted(cond.nodes[c]["members"], key=order.index)
            looped = len(members) > 1 or g.has_edge(members[0], members[0])
            (cycles if looped else singles).append(members)
        if singles:
            steps.append(sorted((m for ms in singles for m in ms), key=order.index))
        for members in cycles:
            steps += [list(members) for _ in range(max_rounds)]
    return steps


def outputs(g: nx.DiGraph) -> list[Any]:
    """The agents whose answers the team gives: those without successors (else every agent)."""
    sinks = [n for n in g if g.out_degree(n) == 0]
    return sinks or list(g.nodes)


def draw_topology(g: nx.DiGraph, path: Any) -> Any:
    """A PNG of the team: agents labelled with their roles, arrows for message channels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    try:
        pos = (
            nx.multipartite_layout(_layered(g), subset_key="layer")
            if nx.is_directed_acyclic_graph(g)
            else nx.circular_layout(g)
        )
    except nx.NetworkXException:
        pos = nx.circular_layout(g)
    labels = {n: f"{n}\n({g.nodes[n].get('role', 'agent')})" for n in g}
    nx.draw_networkx(
        g, pos, ax=ax, labels=labels, node_color="#cfe2f3", node_size=1800, font_size=7, arrowsize=14
    )
    ax.set_axis_off()
    ax.set_title(str(g.graph.get("name") or "team"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _layered(g: nx.DiGraph) -> nx.DiGraph:
    h = g.copy()
    for i, gen in enumerate(nx.topological_generations(g)):
        for n in gen:
            h.nodes[n]["layer"] = i
    return h
