"""Search spaces and candidates: the first stage of the pipeline.

:mod:`~automq.space.schema` reads and validates space files (YAML, nothing executed), :mod:`~automq.space.space`
assembles them into a :class:`SearchSpace` with its flat decisions, sampling and mutation, and
:mod:`~automq.space.candidate` is the frozen, hashable :class:`Candidate` every later stage passes around.
"""

from automq.space.candidate import BlockChoice, Candidate
from automq.space.space import SHIPPED_SPACES, Decision, SearchSpace
from automq.space.schema import METRICS, COST_METRICS, parse_space

__all__ = [
    "BlockChoice", "COST_METRICS", "Candidate", "Decision", "METRICS", "SHIPPED_SPACES", "SearchSpace",
    "parse_space",
]
