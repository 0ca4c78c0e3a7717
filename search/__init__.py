"""Search over candidate solutions (``ponder.search``).

One file per algorithm, one signature, one registry: every algorithm is
``fn(problem, *, n=8, **options) -> SearchResult`` and ``ALGORITHMS`` maps its name to it.

==================  ===========================================================================
majority            self-consistency: N whole solutions, the most frequent answer (no PRM)
best_of_n           N whole solutions, the highest aggregated PRM score
weighted_best_of_n  N whole solutions, PRM scores summed per answer
beam                step-level beam search, N samples per depth, N/M beams kept
dvts                N/M independent greedy subtrees of width M
mcts                MCTS-style: UCT (default) or OpenR-style PUCT with a log-prob prior, PRM value
lats                LATS-style: UCT, LM value + self-consistency, rollouts, env reward (an
                    oracle in ponder) and self-reflection on failures; needs no PRM
tot_bfs             Tree of Thoughts-style, breadth-first: n proposals per state, b states kept,
                    the PRM as the state value (ToT uses the LM)
tot_dfs             Tree of Thoughts-style, depth-first with a PRM-value threshold and backtracking
==================  ===========================================================================

Equal compute: every algorithm respects ``problem.budget`` per sample, so a search with
``Budget(max_generated_tokens=B)`` generates at most B plus one sample's ``max_tokens``
(``ponder.search.budget``). ``sample_and_score`` reads majority, best-of-N and weighted
best-of-N off ONE sample set, so they compare at exactly equal tokens.

Oracles: a result says ``oracle=True`` when the search used the gold answer for a decision:
an oracle PRM (``VerifierPRM``, ``--prm verifier``), ``lats`` with its default env reward,
``mcts`` with ``use_env_reward=True``. Such numbers are upper bounds, not honest results.

Example:
    >>> from ponder.search import ALGORITHMS, majority_vote
    >>> sorted(ALGORITHMS)[:3]
    ['beam', 'best_of_n', 'dvts']
    >>> majority_vote(["4", "5", "4"])
    '4'
"""

from ponder.errors import UnknownName
from ponder.search.base import SearchAlgorithm, SearchProblem, SearchResult
from ponder.search.beam import beam_search
from ponder.search.best_of_n import best_of_n, sample_and_score, weighted_best_of_n
from ponder.search.budget import Budget
from ponder.search.dvts import dvts
from ponder.search.lats import lats
from ponder.search.mcts import mcts
from ponder.search.self_consistency import majority, majority_vote, self_consistency
from ponder.search.tot import tot_bfs, tot_dfs
from ponder.search.tree import SearchTree

__all__ = [
    "ALGORITHMS",
    "NO_PRM",
    "Budget",
    "SearchAlgorithm",
    "SearchProblem",
    "SearchResult",
    "SearchTree",
    "algorithm",
    "beam_search",
    "best_of_n",
    "dvts",
    "lats",
    "majority",
    "majority_vote",
    "mcts",
    "sample_and_score",
    "self_consistency",
    "tot_bfs",
    "tot_dfs",
    "weighted_best_of_n",
]

#: name -> search function, all with the signature ``fn(problem, *, n=..., **options)`` (n=8;
#: lats: n=5, the paper's expansion width)
ALGORITHMS: dict[str, SearchAlgorithm] = {
    "majority": majority,
    "best_of_n": best_of_n,
    "weighted_best_of_n": weighted_best_of_n,
    "beam": beam_search,
    "dvts": dvts,
    "mcts": mcts,
    "lats": lats,
    "tot_bfs": tot_bfs,
    "tot_dfs": tot_dfs,
}


def algorithm(name: str) -> SearchAlgorithm:
    """The search function registered as ``name``."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UnknownName.for_registry("search", name, ALGORITHMS) from None


#: algorithms that work without a PRM (every other one needs ``prm=``; lats values steps with
#: the policy itself unless given ``value="prm"``)
NO_PRM: frozenset[str] = frozenset({"majority", "self_consistency", "lats"})
