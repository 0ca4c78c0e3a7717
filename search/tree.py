"""The tree a search explored, as a ``networkx.DiGraph`` a user can read, save and draw.

Node 0 is the question (no step). Every other node is one step appended to its parent's
partial solution; its attributes:

==========  =============================================================
step        the step's text
depth       steps from the root (the root is 0)
score       the PRM's score of this step given the prefix (None: not scored)
value       mean backed-up value (MCTS); the score elsewhere
visits      times selected (MCTS) or 1
tokens      tokens generated for this step
terminal    the solution ends here (an answer, end of text, or the step limit)
answer      the final answer parsed from the whole solution, for terminal nodes
chosen      on the path to the answer the search returned
note        free text an algorithm attaches (e.g. a LATS reflection)
==========  =============================================================

Example:
    >>> t = SearchTree("What is 2 + 3?")
    >>> a = t.add(0, "2 + 3 = 5.", tokens=6, score=0.9)
    >>> b = t.add(a, "Answer: 5", tokens=3, score=0.95, terminal=True, answer="5")
    >>> t.steps(b)
    ['2 + 3 = 5.', 'Answer: 5']
    >>> t.mark_chosen(b); [n for n in t.graph if t.graph.nodes[n]["chosen"]]
    [0, 1, 2]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx

__all__ = ["SearchTree"]


class SearchTree:
    """A search's tree; ``graph`` is the ``networkx.DiGraph`` itself."""

    def __init__(self, question: str = "", graph: nx.DiGraph | None = None):
        self.graph: nx.DiGraph = graph if graph is not None else nx.DiGraph(question=question)
        if graph is None:
            self.graph.add_node(0, **_attrs("", depth=0, visits=0))

    @property
    def question(self) -> str:
        return str(self.graph.graph.get("question", ""))

    def __len__(self) -> int:
        return self.graph.number_of_nodes()

    def add(
        self,
        parent: int,
        step: str,
        *,
        tokens: int = 0,
        score: float | None = None,
        terminal: bool = False,
        answer: str | None = None,
        note: str = "",
    ) -> int:
        """Append a step under ``parent``; returns the new node's id."""
        node = self.graph.number_of_nodes()
        depth = self.graph.nodes[parent]["depth"] + 1
        self.graph.add_node(
            node,
            **_attrs(
                step, depth=depth, tokens=tokens, score=score, terminal=terminal, answer=answer, note=note
            ),
        )
        self.graph.add_edge(parent, node)
        return node

    def __getitem__(self, node: int) -> dict[str, Any]:
        return self.graph.nodes[node]

    def parent(self, node: int) -> int | None:
        preds = list(self.graph.predecessors(node))
        return preds[0] if preds else None

    def children(self, node: int) -> list[int]:
        return list(self.graph.successors(node))

    def path(self, node: int) -> list[int]:
        """Node ids from the root to ``node``, both included."""
        out = [node]
        while (p := self.parent(out[-1])) is not None:
            out.append(p)
        return out[::-1]

    def steps(self, node: int) -> list[str]:
        """The partial solution ending at ``node``, as its steps."""
        return [self.graph.nodes[n]["step"] for n in self.path(node)[1:]]

    def scores(self, node: int) -> list[float]:
        """The PRM scores along the path to ``node`` (unscored steps skipped)."""
        return [s for n in self.path(node)[1:] if (s := self.graph.nodes[n]["score"]) is not None]

    def leaves(self) -> Iterator[int]:
        return (n for n in self.graph if self.graph.out_degree(n) == 0 and n != 0)

    def terminals(self) -> list[int]:
        return [n for n in self.graph if self.graph.nodes[n]["terminal"]]

    def copy(self) -> SearchTree:
        """An independent copy (node attributes copied too), e.g. to mark another chosen path."""
        return SearchTree(graph=self.graph.copy())

    def mark_chosen(self, node: int) -> None:
        """Mark the path to ``node`` as the one the search returned (clears any earlier mark)."""
        for n in self.graph:
            self.graph.nodes[n]["chosen"] = False
        for n in self.path(node):
            self.graph.nodes[n]["chosen"] = True

    # --- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready node-link data (``SearchTree.from_dict`` reads it back)."""
        return nx.node_link_data(self.graph, edges="edges")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchTree:
        return cls(graph=nx.node_link_graph(data, directed=True, edges="edges"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tree as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SearchTree:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def draw(self, path: str | os.PathLike[str], *, max_chars: int = 28) -> Path:
        """A PNG of the tree: PRM score in colour, the chosen path in bold, answers on the leaves."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        g = self.graph
        pos = _layered_positions(g)
        width = max(6.0, 1.6 * max(1, max(sum(1 for n in g if g.nodes[n]["depth"] == d) for d in _depths(g))))
        height = max(3.0, 1.4 * (max(_depths(g)) + 1))
        fig, ax = plt.subplots(figsize=(min(width, 40), min(height, 30)))
        scores = [g.nodes[n]["score"] for n in g]
        colors = [0.5 if s is None else float(s) for s in scores]
        chosen = [g.nodes[n]["chosen"] for n in g]
        nx.draw_networkx_edges(
            g,
            pos,
            ax=ax,
            width=[2.5 if g.nodes[v]["chosen"] and g.nodes[u]["chosen"] else 0.8 for u, v in g.edges],
            arrows=False,
        )
        nodes = nx.draw_networkx_nodes(
            g,
            pos,
            ax=ax,
            node_color=colors,
            cmap="RdYlGn",
            vmin=0.0,
            vmax=1.0,
            node_size=[420 if c else 220 for c in chosen],
            edgecolors=["black" if c else "grey" for c in chosen],
            linewidths=[2.0 if c else 0.5 for c in chosen],
        )
        labels = {}
        for n in g:
            a = g.nodes[n]
            text = "Q" if n == 0 else _short(a["step"], max_chars)
            if a["score"] is not None:
                text += f"\n{a['score']:.2f}"
            if a["terminal"] and a.get("answer") is not None:
                text += f"\n= {a['answer']}"
            labels[n] = text
        nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=6, verticalalignment="top")
        fig.colorbar(nodes, ax=ax, label="PRM score", shrink=0.6)
        ax.set_title(_short(self.question, 100), fontsize=9)
        ax.axis("off")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return path


def _attrs(step: str, **kw: Any) -> dict[str, Any]:
    base = {
        "step": step,
        "depth": 0,
        "score": None,
        "value": None,
        "visits": 1,
        "tokens": 0,
        "terminal": False,
        "answer": None,
        "chosen": False,
        "note": "",
    }
    base.update(kw)
    if base["value"] is None:
        base["value"] = base["score"]
    return base


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _depths(g: nx.DiGraph) -> list[int]:
    return [g.nodes[n]["depth"] for n in g]


def _layered_positions(g: nx.DiGraph) -> dict[int, tuple[float, float]]:
    """Root on top, each depth a row, children under their parent (a leaf-count layout)."""
    width: dict[int, int] = {}

    def leaves(n: int) -> int:
        kids = list(g.successors(n))
        width[n] = sum(leaves(k) for k in kids) if kids else 1
        return width[n]

    roots = [n for n in g if g.in_degree(n) == 0]
    for r in roots:
        leaves(r)
    pos: dict[int, tuple[float, float]] = {}

    def place(n: int, left: float) -> None:
        pos[n] = (left + width[n] / 2, -float(g.nodes[n]["depth"]))
        x = left
        for k in g.successors(n):
            place(k, x)
            x += width[k]

    x = 0.0
    for r in roots:
        place(r, x)
        x += width[r]
    return pos
