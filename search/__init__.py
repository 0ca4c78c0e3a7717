"""Search over candidate solutions (``ponder.search``).

One file per algorithm, one signature, one registry: ``ALGORITHMS`` maps a name to its
function. This release ships self-consistency (majority vote); PRM-guided best-of-N,
beam, DVTS and MCTS plug into the same registry.

Example:
    >>> from ponder.search import majority_vote
    >>> majority_vote(["4", "5", "4"])
    '4'
"""

from ponder.search.self_consistency import ALGORITHMS, majority_vote, self_consistency

__all__ = ["ALGORITHMS", "majority_vote", "self_consistency"]
